"""Benchmark: `llmctl tokenize encode` throughput (MB/s) vs a plain single-process `encode_batch` loop.

Both sides read the same files and split them into the same documents (blank-line paragraphs). The
baseline is the usual few lines: read, `Tokenizer.encode_batch(batch)` (HF tokenizers, Rust threads
on), keep the ids in memory; nothing is written. llmctl does the whole job: stream, tokenize, write
EOS-separated uint16 shards + index (atomically), hash the sources, with `--workers` processes.
Runs are interleaved (baseline, llmctl w=1, llmctl w=2, …) and repeated; best and median are reported.

Examples:
    .venv/bin/python benchmarks/tokenize_speed.py                        # tiny-shakespeare x8 (8.9 MB)
    .venv/bin/python benchmarks/tokenize_speed.py --repeat 1 --runs 1    # quick
    .venv/bin/python benchmarks/tokenize_speed.py --workers 1,2,4 --cli  # also time the CLI end to end
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_INPUTS = [SHARED / "tinyshakespeare" / "input.txt"]


def baseline(tokenizer_json: Path, files: list[Path], batch_docs: int) -> dict:
    """The plain loop: read each file, split paragraphs, encode_batch in batches, keep the ids."""
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    tok = Tokenizer.from_file(str(tokenizer_json))
    n_tokens = 0
    n_bytes = 0
    kept = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        n_bytes += f.stat().st_size
        docs = [d.strip("\n") for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
        for i in range(0, len(docs), batch_docs):
            for enc in tok.encode_batch(docs[i : i + batch_docs], add_special_tokens=False):
                kept.append(enc.ids)
                n_tokens += len(enc.ids) + 1  # + EOS, as llmctl writes
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "mb_per_s": n_bytes / 1e6 / seconds, "tokens": n_tokens}


def run_llmctl(tokenizer: str, files: list[Path], workers: int, out: Path) -> dict:
    from llmctl.config.profiles import resolve_config
    from llmctl.tokenize import encode_corpus

    config = resolve_config("tokenize", None, None, {"encode.workers": workers, "encode.val_fraction": 0.0})
    n_bytes = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    res = encode_corpus(tokenizer, files, config, output=out, force=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "mb_per_s": n_bytes / 1e6 / seconds,
        "tokens": res.index["stats"]["tokens"],
        "pipeline_mb_per_s": res.index["stats"]["mb_per_s"],
    }


def run_cli(tokenizer: str, files: list[Path], workers: int, out: Path) -> dict:
    exe = Path(sys.executable).with_name("llmctl")
    cmd = [
        str(exe),
        "tokenize",
        "encode",
        "--tokenizer",
        tokenizer,
        "--output",
        str(out),
        "--workers",
        str(workers),
        "--val-fraction",
        "0",
        "--force",
        "--json",
    ]
    for f in files:
        cmd += ["--input", str(f)]
    n_bytes = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "mb_per_s": n_bytes / 1e6 / seconds}


def summary(runs: list[dict]) -> dict:
    speeds = [r["mb_per_s"] for r in runs]
    return {
        "best_mb_per_s": round(max(speeds), 3),
        "median_mb_per_s": round(statistics.median(speeds), 3),
        "runs_mb_per_s": [round(s, 3) for s in speeds],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="tokenizer spec (default: train a 4096 BPE on tiny-shakespeare first)")
    ap.add_argument("--input", type=Path, action="append", help="input file (repeatable)")
    ap.add_argument("--repeat", type=int, default=8, help="concatenate the inputs this many times (bigger corpus)")
    ap.add_argument("--workers", default="1,2", help="comma-separated --workers values for llmctl")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-docs", type=int, default=1000, help="documents per encode_batch call in the baseline")
    ap.add_argument("--cli", action="store_true", help="also time the `llmctl tokenize encode` CLI (with start-up)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmctl-tokbench-"))
    os.environ.setdefault("LLMCTL_HOME", str(work / "home"))
    try:
        inputs = args.input or DEFAULT_INPUTS
        corpus = work / "corpus.txt"
        with open(corpus, "w", encoding="utf-8") as fh:
            for _ in range(args.repeat):
                for f in inputs:
                    fh.write(f.read_text(encoding="utf-8").replace("\r\n", "\n").rstrip("\n") + "\n\n")
        files = [corpus]
        tokenizer = args.tokenizer
        if tokenizer is None:
            from llmctl.config.profiles import resolve_config
            from llmctl.tokenize import train_tokenizer

            cfg = resolve_config("tokenize", None, None, {"train.vocab_size": 4096})
            train_tokenizer([SHARED / "tinyshakespeare" / "input.txt"], cfg, output=work / "tok")
            tokenizer = str(work / "tok")
        from llmctl.tokenize import load_tokenizer_spec

        tok_json = Path(load_tokenizer_spec(tokenizer).path) / "tokenizer.json"
        workers = [int(w) for w in args.workers.split(",")]
        results: dict = {"baseline": []}
        for w in workers:
            results[f"llmctl_workers_{w}"] = []
            if args.cli:
                results[f"cli_workers_{w}"] = []
        for _ in range(args.runs):
            results["baseline"].append(baseline(tok_json, files, args.batch_docs))
            for w in workers:
                results[f"llmctl_workers_{w}"].append(run_llmctl(tokenizer, files, w, work / "out"))
                if args.cli:
                    results[f"cli_workers_{w}"].append(run_cli(tokenizer, files, w, work / "out"))
        base = summary(results["baseline"])
        report = {
            "benchmark": "tokenize_speed",
            "settings": {
                "inputs": [str(f) for f in inputs],
                "repeat": args.repeat,
                "corpus_mb": round(corpus.stat().st_size / 1e6, 3),
                "runs": args.runs,
                "cpu_count": os.cpu_count(),
                "tokenizer": tokenizer,
                "baseline": "tokenizers.Tokenizer.encode_batch loop, one process (Rust threads on), ids kept in memory",
                "llmctl": "encode_corpus in-process: stream, tokenize, write shards + index, sha256 sources",
            },
            "tokens": results["baseline"][0]["tokens"],
            "baseline": base,
        }
        ratios = {}
        for key, runs in results.items():
            if key == "baseline":
                continue
            report[key] = summary(runs)
            if key.startswith("llmctl"):
                report[key]["pipeline_best_mb_per_s"] = round(max(r["pipeline_mb_per_s"] for r in runs), 3)
                report[key]["same_tokens_as_baseline"] = runs[0]["tokens"] == report["tokens"]
            ratios[key] = round(report[key]["best_mb_per_s"] / base["best_mb_per_s"], 3)
        report["ratio_vs_baseline_best"] = ratios
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
