"""The one progress protocol between services and commands: `progress(message, done=None, total=None)`.

A service says what it is doing in one line ("loading tiny", "gptq: block 3/30 · ETA 6:10"); work it can count
also gives `done` of `total` (bytes encoded, batches scored) so a command can draw a bar. A command passes
`lambda message, *_: status.update(message)` for a spinner; a service that may get no callback uses `quiet`.

Examples:
    say = progress or quiet
    say("loading tiny")
    say("encoding: 1,204 docs", done=2_000_000, total=8_000_000)   # bytes
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None: ...


def quiet(message: str, done: int | None = None, total: int | None = None) -> None:
    """The progress callback of a caller that wants none."""
