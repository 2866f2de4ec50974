"""Wikitext-2 perplexity of the default model pruned 50% unstructured and 2:4: magnitude vs Wanda vs SparseGPT.

Everything goes through `llmctl prune`'s service (prune → save → register) in a throwaway
LLMCTL_HOME; perplexity is llmctl.evaluate.perplexity on the first --eval-tokens tokens of wiki.test.raw
(windows of --seqlen, no overlap); calibration windows come from the rest of the file. Prints one
JSON document with each run's perplexity, measured sparsity and its ratio to magnitude's.

Usage:
    python benchmarks/prune_quality.py                                    # full settings
    python benchmarks/prune_quality.py --eval-tokens 4096 --calib-samples 8 --only magnitude-50,wanda-50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
RUNS = {
    "magnitude-50": ["method=magnitude", "sparsity=0.5"],
    "wanda-50": ["method=wanda", "sparsity=0.5"],
    "sparsegpt-50": ["method=sparsegpt", "sparsity=0.5"],
    "magnitude-2:4": ["method=magnitude"],
    "wanda-2:4": ["method=wanda"],
    "sparsegpt-2:4": ["method=sparsegpt"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(WIKI))
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--only", default=",".join(RUNS), help=f"comma list of: {', '.join(RUNS)}")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    os.environ.setdefault("LLMCTL_HOME", tempfile.mkdtemp(prefix="llmctl-bench-"))
    from _heldout_split import heldout_sets

    from llmctl.config.profiles import resolve_config
    from llmctl.prune.service import prune

    base = heldout_sets(
        args.model, args.data, args.eval_tokens, args.seqlen, args.calib_samples, args.calib_seqlen, "pbench-"
    )
    results: dict = {"settings": vars(args), "runs": {}}
    fp = None
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        # the pattern goes in as an explicit value: YAML would read a --set 2:4 as the base-60 number 124
        config = resolve_config("prune", None, base + RUNS[key], {"pattern": "2:4"} if key.endswith("2:4") else {})
        print(f"[{time.strftime('%H:%M:%S')}] {key} …", file=sys.stderr, flush=True)
        started = time.perf_counter()
        r = prune(
            args.model,
            f"bench-{key.replace(':', '-')}",
            config,
            command=f"benchmarks/prune_quality.py {key}",
            force=True,
            known_ppl_before=fp,
            progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
        )
        fp = r["perplexity_before"]
        results["fp_perplexity"] = fp
        results["runs"][key] = {
            "perplexity": r["perplexity_after"],
            "overall_sparsity": r["overall_sparsity"],
            "prune_seconds": r["prune_seconds"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            f"  {key}: ppl {r['perplexity_after']} (fp {fp}), sparsity {r['overall_sparsity']}",
            file=sys.stderr,
            flush=True,
        )
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    for pattern in ("50", "2:4"):
        mag = results["runs"].get(f"magnitude-{pattern}", {}).get("perplexity")
        for method in ("wanda", "sparsegpt"):
            r = results["runs"].get(f"{method}-{pattern}")
            if mag and r:
                r["ratio_to_magnitude"] = round(r["perplexity"] / mag, 3)
    checks = [results["runs"].get(f"{m}-50", {}).get("ratio_to_magnitude") for m in ("wanda", "sparsegpt")]
    if all(c is not None for c in checks):
        results["goal_wanda_sparsegpt_half_of_magnitude_at_50"] = all(c <= 0.5 for c in checks)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
