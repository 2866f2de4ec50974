"""Finetuning quality: LoRA SFT of the default model on Alpaca, held-out response-only loss before and after.

The last `--heldout` examples of alpaca_2000.json are held out (never trained on); the loss is the mean
next-token loss on response tokens only (prompt tokens masked), in nats/token, computed the same way
before (base model) and after (base + adapter). Goal: >= 10% lower after a fixed budget.

The default budget is one two CPU cores finish (300 steps x 4 packed rows x 256 tokens, about 307k training
tokens); on a GPU, `--batch-size 8 --seq-len 512` (and more steps) is the larger run.

Usage:
    .venv/bin/python benchmarks/finetune_quality.py                    # 300 steps, batch 4 x 256 packed
    .venv/bin/python benchmarks/finetune_quality.py --steps 40 --batch-size 4 --seq-len 256   # reduced
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_2000.json"


def heldout_loss(model, tokenizer, records, seq_len: int, batch_size: int, dtype: str) -> tuple[float, int]:
    """Mean response-token loss over every held-out example (packed, block-diagonal attention)."""
    from llmctl.data.sft import tokenize_sft
    from llmctl.finetune.batches import sft_plan
    from llmctl.finetune.objectives import sft_eval_loss
    from llmctl.training.precision import Precision

    examples, _ = tokenize_sft(records, "alpaca", tokenizer, "auto", seq_len)
    config = {"train": {"seq_len": seq_len, "batch_size": batch_size}}
    plan = sft_plan(examples, config, tokenizer.pad_token_id, True, 0)
    tokens = sum(sum(1 for lab in e.labels[1:] if lab != -100) for e in examples)
    return sft_eval_loss(model, plan, "cpu", Precision.for_run(dtype, "cpu"), fast=True), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --steps")
    ap.add_argument(
        "--before-loss",
        type=float,
        default=None,
        help="reuse a held-out loss of the base measured by an earlier run (same data and --seq-len)",
    )
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    from llmctl.config.profiles import resolve_config
    from llmctl.finetune import finetune
    from llmctl.models.importer import import_model
    from llmctl.models.loading import load_model
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    base_path = resolve_model(args.model).path
    records = json.loads(Path(args.data).read_text())
    held = records[-args.heldout :]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LLMCTL_HOME"] = str(Path(tmp) / "home")
        import_model(Registry(), base_path, "base", link=True)
        t0 = time.time()
        if args.before_loss is None:
            base = load_model("base", dtype="float32", device="cpu")
            before, tokens = heldout_loss(base.model, base.tokenizer, held, args.seq_len, args.batch_size, args.dtype)
            del base
        else:
            before, tokens = args.before_loss, None
        t_eval = time.time() - t0
        warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.steps // 10)
        config = resolve_config(
            "finetune",
            "lora",
            [f"data.eval_split={args.heldout}", "train.save_every=0", "train.eval_every=0"],
            {
                "train.max_steps": args.steps,
                "train.batch_size": args.batch_size,
                "train.grad_accum": args.grad_accum,
                "train.seq_len": args.seq_len,
                "train.lr": args.lr,
                "train.seed": args.seed,
                "train.dtype": args.dtype,
                "train.warmup_steps": warmup,
            },
        )
        t1 = time.time()
        res = finetune(
            "base",
            Path(args.data),
            "alpaca-lora",
            config,
            on_log=lambda s: print(s, file=__import__("sys").stderr, flush=True),
        )
        t_train = time.time() - t1
        tuned = load_model("alpaca-lora", dtype="float32", device="cpu")
        after, tokens = heldout_loss(tuned.model, tuned.tokenizer, held, args.seq_len, args.batch_size, args.dtype)
    report = {
        "benchmark": "finetune_quality",
        "model": args.model,
        "method": "lora (all linear, r16, alpha32)",
        "train_examples": len(records) - args.heldout,
        "heldout_examples": args.heldout,
        "heldout_response_tokens": tokens,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "warmup_steps": warmup,
        "before_loss_reused": args.before_loss is not None,
        "packing": True,
        "train_tokens": res.metrics["tokens"],
        "train_tokens_per_s": res.metrics["tokens_per_s"],
        "train_seconds": round(t_train, 1),
        "eval_seconds": round(t_eval, 1),
        "heldout_loss_before": round(before, 4),
        "heldout_loss_after": round(after, 4),
        "finetune_reported_eval_loss": round(res.metrics.get("eval_loss") or float("nan"), 4),
        "relative_reduction": round(1 - after / before, 4),
        "goal": ">= 0.10",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
