"""The default model (SmolLM2-135M-Instruct) on the standard offline tasks through `llmctl eval`.

HellaSwag (the local validation items), ARC-Challenge (test) and WikiText-2 perplexity
(llmctl.evaluate.perplexity, seqlen 2048, stride 512), with wall times. Prints one JSON document.

Usage:
    .venv/bin/python benchmarks/eval_default.py                       # full settings (slow on CPU)
    .venv/bin/python benchmarks/eval_default.py --hellaswag-limit 200 --arc-limit 200 --ppl-max-tokens 32768
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--hellaswag-limit", type=float, default=None, help="items (default: all local items)")
    ap.add_argument("--arc-limit", type=float, default=None, help="items (default: the whole test split)")
    ap.add_argument("--ppl-max-tokens", type=int, default=None, help="perplexity over the first N tokens (default all)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--batch-size", default="16")
    ap.add_argument("--with-wikitext", action="store_true", help="also lm-eval's wikitext task (rolling, slow)")
    args = ap.parse_args()

    import torch

    from llmctl.config.profiles import resolve_config
    from llmctl.evaluate import run_eval
    from llmctl.models.loading import load_model

    t0 = time.perf_counter()
    loaded = load_model(args.model, dtype="float32", device="cpu")
    load_s = time.perf_counter() - t0
    report = {
        "model": args.model,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "batch_size": args.batch_size,
        "load_seconds": round(load_s, 2),
        "tasks": {},
    }
    runs = [("hellaswag", args.hellaswag_limit), ("arc_challenge", args.arc_limit)]
    if args.with_wikitext:
        runs.append(("wikitext", None))
    runs.append(("perplexity", None))
    for task, limit in runs:
        config = resolve_config(
            "eval",
            explicit={
                "data_dir": args.data_dir,
                "limit": limit,
                "batch_size": args.batch_size,
                "dtype": "float32",
                "device": "cpu",
                "perplexity.seqlen": args.seqlen,
                "perplexity.stride": args.stride,
                "perplexity.max_tokens": args.ppl_max_tokens,
            },
        )
        started = time.perf_counter()
        result = run_eval(args.model, [task], config, loaded=loaded, attach=False)
        seconds = time.perf_counter() - started
        entry = {
            "seconds": round(seconds, 1),
            "metrics": result.metrics,
            "n": (result.results.get("n-samples", {}).get(task) or {}).get("effective"),
        }
        if task == "perplexity":
            entry["settings"] = {k: v for k, v in result.results["configs"]["perplexity"].items() if k != "task"}
        else:
            block = result.results["results"][task]
            entry["stderr"] = {k.split(",")[0]: v for k, v in block.items() if "_stderr" in k}
        report["tasks"][task] = entry
        print(f"{task}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
