"""Pretraining quality: the `shakespeare-tiny` profile for a fixed wall-clock budget on CPU.

A 4,096-token byte-level BPE is trained by `llmctl tokenize train` on tiny-shakespeare, the text is
encoded by `llmctl tokenize encode` (10% of documents held out as `val`), and `llmctl pretrain` trains
the shakespeare-tiny LLaMA. The number of steps is fitted to the budget from a short speed probe (the
cosine schedule must know where it ends). Prints JSON: validation bits per byte on the whole held-out
split (goal <= 2.5), loss, perplexity, tokens/s, steps, seconds.

Examples:
    python benchmarks/pretrain_quality.py                      # 10 minutes of training
    python benchmarks/pretrain_quality.py --minutes 1 --probe-steps 3   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from _shakespeare import llmctl, tokenize_shakespeare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget (wall clock)")
    ap.add_argument("--probe-steps", type=int, default=8, help="steps timed to fit max_steps to the budget")
    ap.add_argument("--home", default=None, help="LLMCTL_HOME to use (default: a temp dir)")
    ap.add_argument("--set", action="append", default=[], help="extra --set for pretrain (repeatable)")
    ap.add_argument("--dtype", default=None, help="--dtype for pretrain (default: the profile's)")
    args = ap.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="llmctl-ptq-"))
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    data = home / "data" / "shakespeare"
    t0 = time.perf_counter()
    if not (data / "index.json").is_file():
        tokenize_shakespeare(data, env=env)
    tokenize_s = time.perf_counter() - t0
    index = json.loads((data / "index.json").read_text())

    extra = [x for s in args.set for x in ("--set", s)] + (["--dtype", args.dtype] if args.dtype else [])
    common = ["pretrain", "--profile", "shakespeare-tiny", "--data", str(data), "--json", "--force", *extra]
    # speed probe: a few steps, no eval, no checkpoints in between
    probe = json.loads(
        llmctl(
            *common,
            "--name",
            "ptq-probe",
            "--max-steps",
            str(args.probe_steps),
            "--eval-every",
            "0",
            "--set",
            "train.log_every=1",
            "--save-every",
            "0",
            "--set",
            "data.final_eval_tokens=0",
            env=env,
        )
    )
    rows = [json.loads(x) for x in (Path(probe["run_dir"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    step_tps = sorted(r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r)  # the first step is warm-up
    tps = step_tps[len(step_tps) // 2] if step_tps else probe["tokens_per_s"]
    budget_tokens = tps * args.minutes * 60 * 0.95  # evals and checkpoints take some of the budget
    steps = max(10, int(budget_tokens / probe["tokens_per_step"]))
    # on a slow (or busy) machine few steps fit: keep warmup to at most a tenth of them
    from llmctl.config.profiles import resolve_config

    warmup = min(resolve_config("pretrain", "shakespeare-tiny", [], {})["train"]["warmup_steps"], max(1, steps // 10))
    t1 = time.perf_counter()
    result = json.loads(
        llmctl(
            *common,
            "--name",
            "shakespeare-tiny-bench",
            "--max-steps",
            str(steps),
            "--set",
            f"train.warmup_steps={warmup}",
            env=env,
        )
    )
    wall = time.perf_counter() - t1
    final = result["final"]
    print(
        json.dumps(
            {
                "benchmark": "pretrain_quality",
                "profile": "shakespeare-tiny",
                "params": result["params"],
                "tokenizer": "llmctl tokenize train --type bpe --vocab-size 4096",
                "train_tokens_in_data": index["splits"]["train"]["tokens"],
                "val_tokens": index["splits"]["val"]["tokens"],
                "budget_minutes": args.minutes,
                "probe_tokens_per_s": tps,
                "steps": result["steps"],
                "tokens_trained": result["tokens_trained"],
                "train_seconds": result["seconds"],
                "wall_seconds": round(wall, 1),
                "tokens_per_s": result["tokens_per_s"],
                "val_loss": final.get("val_loss"),
                "val_ppl": final.get("val_ppl"),
                "val_bpb": final.get("val_bpb"),
                "val_tokens_scored": final.get("val_tokens_scored"),
                "bytes_per_token": result["bytes_per_token"],
                "bytes_per_token_source": result["bytes_per_token_source"],
                "goal_val_bpb": 2.5,
                "meets_goal": final.get("val_bpb") is not None and final["val_bpb"] <= 2.5,
                "warmup_steps": warmup,
                "tokenize_seconds": round(tokenize_s, 1),
                "extra_args": extra,
                "home": str(home),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
