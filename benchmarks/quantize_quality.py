"""Wikitext-2 perplexity of the default model: fp vs INC RTN / GPTQ / AWQ (4-bit) and OpenVINO int4/int8.

Everything goes through `llmctl quantize`'s service (quantize → save → register) in a throwaway
LLMCTL_HOME; perplexity is llmctl.evaluate.perplexity on the first --eval-tokens tokens of wiki.test.raw,
windows of --seqlen, no overlap. Calibration windows come from the rest of the file (disjoint from
the scored tokens). Prints one JSON document: perplexities, seconds, sizes, and for GPTQ/AWQ the
share of RTN's gap to fp they close: (ppl_rtn - ppl_x) / (ppl_rtn - ppl_fp).

Usage:
    python benchmarks/quantize_quality.py                        # full settings (slow on CPU)
    python benchmarks/quantize_quality.py --eval-tokens 4096 --calib-samples 8 --only rtn,gptq   # quick
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(WIKI))
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true", help="asymmetric grids (default symmetric)")
    ap.add_argument(
        "--only",
        default="rtn,gptq,awq,openvino-int4,openvino-int8",
        help="comma list of: rtn, gptq, gptq-block2048, awq, teq, openvino-int4, openvino-int8",
    )
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    os.environ.setdefault("LLMCTL_HOME", tempfile.mkdtemp(prefix="llmctl-bench-"))
    from _heldout_split import heldout_sets

    from llmctl.config.profiles import resolve_config
    from llmctl.quantize import quantize

    base = [
        f"bits={args.bits}",
        f"group_size={args.group_size}",
        f"sym={'false' if args.asym else 'true'}",
    ] + heldout_sets(
        args.model, args.data, args.eval_tokens, args.seqlen, args.calib_samples, args.calib_seqlen, "qbench-"
    )
    runs = {
        "rtn": ["algo=rtn"],
        "gptq": ["algo=gptq"],
        "gptq-block2048": ["algo=gptq", "gptq.block_size=2048"],
        "awq": ["algo=awq"],
        "teq": ["algo=teq"],
        "openvino-int4": ["backend=openvino", "bits=4"],
        "openvino-int8": ["backend=openvino", "bits=8", "group_size=-1"],
    }
    results: dict = {"settings": vars(args) | {"sym": not args.asym}, "runs": {}}
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        sets = base + runs[key]
        if key == "gptq-block2048":
            # the pre-fix behaviour: blocks of 2048 columns with groups of 128 (INC's default block)
            import llmctl.quantize.inc as q

            orig = q.gptq_block
            q.gptq_block = lambda cfg: cfg["gptq"]["block_size"]
        config = resolve_config("quantize", None, sets, {})
        print(f"[{time.strftime('%H:%M:%S')}] {key} …", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            r = quantize(
                args.model,
                f"bench-{key}",
                config,
                command=f"benchmarks/quantize_quality.py {key}",
                force=True,
                known_ppl_before=results.get("fp_perplexity"),
                progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
            )
        except Exception as exc:  # report and go on with the other formats
            results["runs"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  failed: {exc}", file=sys.stderr, flush=True)
            continue
        finally:
            if key == "gptq-block2048":
                q.gptq_block = orig
        results["fp_perplexity"] = r["perplexity_before"]
        results["runs"][key] = {
            "perplexity": r["perplexity_after"],
            "seconds": round(time.perf_counter() - started, 1),
            "quantize_seconds": r["quantize_seconds"],
            "size_mb": r["size_mb"],
            "weights_mb": r["weights_mb"],
        }
        print(f"  {key}: ppl {r['perplexity_after']} (fp {r['perplexity_before']})", file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    fp = results.get("fp_perplexity")
    rtn = results["runs"].get("rtn", {}).get("perplexity")
    if fp and rtn and rtn > fp:
        for key, r in results["runs"].items():
            if key != "rtn" and r.get("perplexity"):
                r["gap_closed_vs_rtn"] = round((rtn - r["perplexity"]) / (rtn - fp), 3)
        results["goal_gptq_awq_close_40pct"] = all(
            results["runs"].get(k, {}).get("gap_closed_vs_rtn", -1) >= 0.4
            for k in ("gptq", "awq")
            if k in results["runs"]
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
