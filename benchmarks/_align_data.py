"""Shared by the alignment benchmarks: the HH-RLHF split and the generated ± problems, made one way everywhere.

The shared HH-RLHF harmless-base file's last DEMO_HELDOUT lines are the demo's held-out set: no benchmark trains
or scores on them. Arithmetic problems for GRPO's `math_exact` reward come from a seeded generator; a held-out
set drops every prompt that is in the training set, so no number is measured on a trained problem.

Examples:
    train, held = hh_split(200)                     # lists of JSONL lines, the demo's lines left out
    train = math_problems(400, seed=1)
    held = math_problems(200, seed=2, exclude=train)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-1800.jsonl"
DEMO_HELDOUT = 200  # the demo's held-out pairs: the file's last lines, never touched by a benchmark


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def hh_split(heldout: int) -> tuple[list[str], list[str]]:
    """Training and held-out HH-RLHF lines: held-out = the `heldout` lines before the demo's last 200."""
    lines = HH.read_text(encoding="utf-8").splitlines()[:-DEMO_HELDOUT]
    return lines[:-heldout], lines[-heldout:]


def math_problems(n: int, seed: int, exclude: list[dict] = ()) -> list[dict]:
    """`n` distinct two-number addition/subtraction problems (operands 0-99) with their answers, none in `exclude`."""
    rng = random.Random(seed)
    seen = {r["prompt"] for r in exclude}
    out = []
    while len(out) < n:
        a, b, op = rng.randint(0, 99), rng.randint(0, 99), rng.choice("+-")
        prompt = f"What is {a} {op} {b}? Answer with the number."
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "answer": str(a + b if op == "+" else a - b)})
    return out
