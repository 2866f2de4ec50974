"""The progress line of a calibrated algorithm: which decoder block (or training step), time so far, and an ETA.

Examples:
    eta = BlockETA(say, "gptq", total=30)
    for i in range(30):
        eta.start(i)          # "gptq: block 3/30 · 0:41 elapsed · ETA 6:10"
        ...
    eta.done()                # "gptq: 30 blocks in 7:02"
    BlockETA(say, "teq", total=50, unit="step", every=10)   # TEQ trains the whole model: one line per 10 steps
"""

from __future__ import annotations

import time

from llmctl.runtime.progress import Progress


def clock(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss from an hour on)."""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class BlockETA:
    """Reports each block as it starts; the ETA is the mean time of the blocks done so far × blocks left.

    `unit` names what is counted ("block", "step"); with `every` > 1 only every so many (and the first) are said.
    """

    def __init__(self, say: Progress | None, label: str, total: int, unit: str = "block", every: int = 1):
        self.say, self.label, self.total, self.unit, self.every = say, label, total, unit, max(1, every)
        self.started = time.perf_counter()

    def start(self, index: int, detail: str = "") -> None:
        if not self.say or index % self.every:
            return
        elapsed = time.perf_counter() - self.started
        line = f"{self.label}: {self.unit} {index + 1}/{self.total}"
        if detail:
            line += f" ({detail})"
        line += f" · {clock(elapsed)} elapsed"
        if index:
            line += f" · ETA {clock(elapsed / index * (self.total - index))}"
        self.say(line)

    def done(self) -> None:
        if self.say:
            self.say(f"{self.label}: {self.total} {self.unit}s in {clock(time.perf_counter() - self.started)}")
