"""Shared by the shakespeare-tiny benchmarks: run the llmctl CLI, and tokenize tiny-shakespeare for pretraining.

Examples:
    sys.path.insert(0, str(Path(__file__).parent)); from _shakespeare import TEXT, llmctl, tokenize_shakespeare
    tokenize_shakespeare(home / "data" / "shakespeare", env={**os.environ, "LLMCTL_HOME": str(home)})
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
LLMCTL = str(Path(sys.executable).parent / "llmctl")


def llmctl(*args: str, env: dict) -> str:
    """Run `llmctl ARGS` with env; its stdout, or exit the benchmark with the command's stderr tail."""
    proc = subprocess.run([LLMCTL, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"llmctl {' '.join(args[:2])} failed ({proc.returncode})")
    return proc.stdout


def tokenize_shakespeare(data: Path, env: dict) -> None:
    """Train a 4,096-token BPE on tiny-shakespeare and encode it into shards at data (10 % validation)."""
    llmctl("tokenize", "train", "--input", str(TEXT), "--type", "bpe", "--vocab-size", "4096",
           "--name", "shakespeare-bpe", "--force", env=env)  # fmt: skip
    llmctl("tokenize", "encode", "--tokenizer", "shakespeare-bpe", "--input", str(TEXT), "--output", str(data),
           "--name", "shakespeare-data", "--val-fraction", "0.1", "--force", env=env)  # fmt: skip
