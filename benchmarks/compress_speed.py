"""Wall time, peak memory and WikiText-2 perplexity of each compression algorithm, before and after (issue 16).

Each run is one child process (so its peak resident memory is its own) that loads the default model in
fp32, reads the calibration windows and the held-out text exactly as benchmarks/quantize_quality.py does
(the first --eval-tokens tokens of wiki.test.raw are scored, calibration windows come from the rest),
compresses, and scores perplexity on the held-out tokens (windows of --seqlen, no overlap). Saving is not
timed: the saved layout is changing (issue 13). Per run the JSON gives seconds per stage (load, data,
compress, eval), the whole (`total_seconds`), the compress stage's CPU seconds (user + system: on a shared
machine they inflate less than wall time; with --threads 1 they approximate the idle wall time), peak RSS
in MB, the perplexity, and with --profile the top entries of a cProfile of the compress stage.

Runs ("before" = neural-compressor or the pruning code at --baseline-rev, "after" = llmctl's own cores):
    rtn-inc  rtn-fast  gptq-inc  gptq-fast  awq-inc  awq-fast
    teq-inc  autoround-inc  (only on neural-compressor / auto-round: profiled, no "before")
    heads-25  channels-25   (structured pruning of 25 % of attention heads / MLP channels: profiled, no "before")
    wanda-50-seq  wanda-2:4-seq  sparsegpt-50-seq  sparsegpt-2:4-seq   (prune's true_sequential=true)
    wanda-50-before  wanda-50  wanda-2:4-before  wanda-2:4
    sparsegpt-50-before  sparsegpt-50  sparsegpt-2:4-before  sparsegpt-2:4

Usage (real numbers only on an idle machine; say which CPU: `lscpu | grep 'Model name'`):
    python benchmarks/compress_speed.py                                   # every run, 32×512, 16,384 tokens
    python benchmarks/compress_speed.py --only gptq-inc,gptq-fast --calib-samples 8 --eval-tokens 4096
    python benchmarks/compress_speed.py --only sparsegpt-2:4 --profile 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from llmctl.runtime.host import cpu_name

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
BASELINE_REV = "303b9f8"  # the last landed main before issue 16: INC GPTQ/AWQ and the per-column SparseGPT
QUANT_RUNS = ("rtn-inc", "rtn-fast", "gptq-inc", "gptq-fast", "awq-inc", "awq-fast")
PRUNE_RUNS = tuple(f"{m}-{p}{s}" for m in ("wanda", "sparsegpt") for p in ("50", "2:4") for s in ("-before", ""))
# not in the default list: profiled on demand; "-seq" = prune's true_sequential=true (about one forward per block)
OTHER_RUNS = ("teq-inc", "autoround-inc", "heads-25", "channels-25") + tuple(
    f"{m}-{p}-seq" for m in ("wanda", "sparsegpt") for p in ("50", "2:4")
)
GOALS_S = {"gptq": 120, "awq": 240, "sparsegpt": 90, "wanda": 30, "rtn": 20}  # issue 16, idle 2-core machine


def baseline_prune_module(rev: str):
    """llmctl/prune/service.py as it was at `rev`, imported under another name (the "before" of the prune rows)."""
    import importlib.util

    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:llmctl/prune/service.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="prune-baseline-")) / "prune_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("prune_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compress(key: str, model, windows: list, args, say) -> dict:
    """Run one algorithm on model in place (the timed stage); returns facts to report."""
    if key.endswith("-inc"):
        from llmctl.config.profiles import resolve_config
        from llmctl.quantize.inc import inc_weight_only

        algo = key[:-4]
        cfg = resolve_config(
            "quantize", None, [f"algo={algo}", f"bits={args.bits}", f"group_size={args.group_size}"], {}
        )
        inc_weight_only(model, algo, cfg, windows, say)
        return {}
    if key in ("rtn-fast", "gptq-fast"):
        from llmctl.compress.gptq import quantize_model

        gptq = key == "gptq-fast"  # each with the grid of the neural-compressor run it replaces
        layers = quantize_model(
            model,
            windows if gptq else None,
            bits=args.bits,
            group_size=args.group_size,
            grid="gptq" if gptq else "rtn",
            progress=say,
        )
        return {"layers": len(layers)}
    if key == "awq-fast":
        from llmctl.compress.awq import awq_model

        return {"layers": len(awq_model(model, windows, bits=args.bits, group_size=args.group_size, progress=say))}
    if key in ("heads-25", "channels-25"):
        from llmctl.config.profiles import resolve_config
        from llmctl.prune.service import prune_in_memory

        cfg = resolve_config("prune", None, [f"structure={key.split('-')[0]}", "ratio=0.25"], {})
        return prune_in_memory(SimpleNamespace(model=model), cfg, windows, say)
    method, pattern = key.split("-")[0], key.split("-")[1]
    prune_mod = baseline_prune_module(args.baseline_rev) if key.endswith("-before") else None
    if prune_mod is None:
        import llmctl.prune.service as prune_mod
    nm = (2, 4) if pattern == "2:4" else None
    kwargs = {"progress": say} if "progress" in prune_mod.prune_unstructured.__code__.co_varnames else {}
    if key.endswith("-seq"):
        kwargs["true_sequential"] = True
    prune_mod.prune_unstructured(model, method, None if nm else 0.5, nm, windows, **kwargs)
    return {}


def child(args) -> None:
    """One run in this process: prints one JSON line with its stages' seconds, peak RSS and perplexity."""
    import resource

    import torch

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    from llmctl.compress.calibration import held_out_perplexity, prepare_data
    from llmctl.models.loading import load_model

    say = (lambda m: print(f"    {m}", file=sys.stderr, flush=True)) if args.verbose else (lambda m: None)
    out: dict = {"run": args.child, "threads": torch.get_num_threads()}
    t = time.perf_counter()
    loaded = load_model(args.model, dtype="float32", device="cpu")
    out["load_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    data = prepare_data(
        loaded.tokenizer,
        args.calib_file,
        args.calib_samples,
        args.calib_seqlen,
        0,
        args.eval_file,
        args.eval_tokens,
        need_calib=args.child != "fp",
    )
    out["data_seconds"] = round(time.perf_counter() - t, 2)
    if args.child != "fp":
        torch.manual_seed(0)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t, cpu = time.perf_counter(), cpu_seconds()
        out.update(compress(args.child, loaded.model, data.windows, args, say))
        out["compress_seconds"] = round(time.perf_counter() - t, 2)
        out["compress_cpu_seconds"] = round(cpu_seconds() - cpu, 2)
        if profiler is not None:
            profiler.disable()
            out["profile"] = profile_top(profiler, args.profile)
    t = time.perf_counter()
    if args.eval_tokens:
        out["perplexity"] = held_out_perplexity(loaded.model, loaded.tokenizer, data.eval_text, args.seqlen)
    out["eval_seconds"] = round(time.perf_counter() - t, 2)
    out["total_seconds"] = round(time.perf_counter() - started, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    print(json.dumps(out))


def cpu_seconds() -> float:
    """CPU time of this process (user + system, all threads): on a shared machine it moves less than wall time."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def profile_top(profiler, n: int) -> list[str]:
    """The n functions with the most own time (tottime), as 'seconds  calls  function' lines."""
    import pstats

    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    lines = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        lines.append(f"{tottime:8.2f}s own {cumtime:8.2f}s cum {calls:9d}× {func} ({where})")
    return lines


def run_child(key: str, args, split: dict) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        key,
        "--model",
        args.model,
        "--threads",
        str(args.threads),
        "--calib-samples",
        str(args.calib_samples),
        "--calib-seqlen",
        str(args.calib_seqlen),
        "--eval-tokens",
        str(args.eval_tokens),
        "--seqlen",
        str(args.seqlen),
        "--bits",
        str(args.bits),
        "--group-size",
        str(args.group_size),
        "--profile",
        str(args.profile),
        "--baseline-rev",
        args.baseline_rev,
        "--calib-file",
        split["calib"],
        "--eval-file",
        split["eval"],
    ]
    if args.verbose:
        cmd.append("--verbose")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if args.verbose:
        sys.stderr.write(proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"run": key, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def split_files(args) -> dict:
    """The held-out file (first eval-tokens tokens) and the calibration file (the rest), as _heldout_split."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _heldout_split import heldout_sets

    sets = dict(
        s.split("=", 1)
        for s in heldout_sets(
            args.model,
            args.data,
            max(args.eval_tokens, 1),
            args.seqlen,
            args.calib_samples,
            args.calib_seqlen,
            "cbench-",
        )
    )
    return {"calib": sets["calib.data"], "eval": sets["eval.data"]}


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
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS) of every run")
    ap.add_argument("--only", default=",".join(QUANT_RUNS + PRUNE_RUNS), help="comma list of runs (see above)")
    ap.add_argument("--profile", type=int, default=0, help="print the N functions with the most own time")
    ap.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision whose llmctl/prune/service.py is 'before'"
    )
    ap.add_argument("--skip-fp", action="store_true", help="do not score the uncompressed model")
    ap.add_argument("--verbose", action="store_true", help="show each run's progress lines on stderr")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--calib-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--eval-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    split = split_files(args)
    results: dict = {
        "settings": {k: v for k, v in vars(args).items() if not k.startswith(("child", "calib_file", "eval_file"))},
        "cpu": cpu_name(),
        "load_average_at_start": os.getloadavg(),
        "runs": {},
    }
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    known = QUANT_RUNS + PRUNE_RUNS + OTHER_RUNS
    unknown = [k for k in keys if k not in known]
    if unknown:
        sys.exit(f"unknown run(s) {', '.join(unknown)}; use: {', '.join(known)}")
    for key in (["fp"] if args.eval_tokens and not args.skip_fp else []) + keys:
        print(f"[{time.strftime('%H:%M:%S')}] {key} …", file=sys.stderr, flush=True)
        r = run_child(key, args, split)
        results["runs"][key] = r
        print(
            f"  {key}: {r.get('compress_seconds')} s compress ({r.get('compress_cpu_seconds')} s CPU), "
            f"{r.get('total_seconds')} s total, "
            f"ppl {r.get('perplexity')}, peak {r.get('peak_rss_mb')} MB {r.get('error', '')}",
            file=sys.stderr,
            flush=True,
        )
        for line in r.get("profile", []):
            print(f"      {line}", file=sys.stderr)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    results["goals_seconds"] = GOALS_S
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
