"""Memory estimate vs measured peak: `--dry-run`'s `estimate.peak_bytes` against the peak resident set of the same
run, for full / LoRA / QLoRA / DoRA finetuning (and LoRA with gradient checkpointing) of the default model, and
pretraining a model of the default model's shape (SmolLM2-135M: 30 layers, 576 hidden, 9/3 heads, 1536 MLP, 49k
vocabulary) on tiny-shakespeare encoded with its tokenizer.

Each measured run is a child `llmctl` process under a small Python parent that waits for it and reads
`getrusage(RUSAGE_CHILDREN).ru_maxrss`: the child's exact peak (kernel accounting, no polling). Everything runs in
a scratch LLMCTL_HOME (the default model is converted into it on first use). Memory is stable on a loaded machine;
time is not, so none is reported.

Usage:
    .venv/bin/python benchmarks/estimate.py                                   # all cases, batch 4 x 128 tokens
    .venv/bin/python benchmarks/estimate.py --cases lora,qlora --batch-size 8 --seq-len 256
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from llmctl.runtime.host import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LLMCTL = [sys.executable, "-m", "llmctl"]
SMOL_SHAPE = [
    "model.arch=llama",
    "model.hidden_size=576",
    "model.num_layers=30",
    "model.num_heads=9",
    "model.num_kv_heads=3",
    "model.intermediate_size=1536",
    "model.max_position_embeddings=2048",
    "model.tie_embeddings=true",
]
# the measuring parent: runs argv, prints the child's peak resident set in bytes (Linux ru_maxrss is KiB)
_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "sys.stderr.write(rc.stderr[-2000:] if rc.returncode else '')\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 if rc.returncode == 0 else -1)\n"
)


def estimate(cmd: list[str], env: dict) -> dict:
    out = subprocess.run([*LLMCTL, *cmd, "--dry-run", "--json"], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"dry run failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)["estimate"]


def measure(cmd: list[str], env: dict) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *LLMCTL, *cmd], env=env, capture_output=True, text=True, check=False
    )
    peak = int(out.stdout.strip() or -1)
    if peak < 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{out.stderr}")
    return peak


def cases(args, home: Path, env: dict) -> dict[str, list[str]]:
    """Case name → llmctl arguments (the same for the dry run and the measured run)."""
    train = ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--max-steps", str(args.steps)]
    train += ["--eval-every", "0", "--save-every", "0", "--dtype", args.dtype]
    data = str(SHARED / "alpaca" / "alpaca_2000.json")
    ft = ["finetune", "--model", args.model, "--data", data, "--force", *train]
    ft += ["--set", "data.max_examples=400", "--set", "data.eval_split=0"]
    out = {m: [*ft, "--name", f"bm-{m}", "--method", m] for m in ("full", "lora", "qlora", "dora")}
    out["lora+checkpointing"] = [*out["lora"], "--set", "train.gradient_checkpointing=true"]
    out["full+checkpointing"] = [*out["full"], "--set", "train.gradient_checkpointing=true"]
    wanted = [c for c in args.cases.split(",") if c]
    if "pretrain" in wanted:
        tok = home / "shakespeare-smol"
        if not tok.exists():
            subprocess.run(
                [*LLMCTL, "tokenize", "encode", "-t", args.model, "-i", str(SHARED / "tinyshakespeare" / "input.txt")]
                + ["-o", str(tok), "--val-fraction", "0.05"],
                env=env,
                check=True,
                capture_output=True,
            )
        sets = [x for s in [*SMOL_SHAPE, "data.final_eval_tokens=0"] for x in ("--set", s)]
        out["pretrain"] = ["pretrain", "--data", str(tok), "--name", "bm-pretrain", "--force", *train, *sets]
    return {k: v for k, v in out.items() if k in wanted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cases", default="full,lora,qlora,dora,lora+checkpointing,full+checkpointing,pretrain")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--home", help="LLMCTL_HOME to use (default: a scratch one)")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="llmctl-bench-estimate-"))
    env = os.environ | {"LLMCTL_HOME": str(home)}
    rows = []
    for name, cmd in cases(args, home, env).items():
        est = estimate(cmd, env)
        peak = measure(cmd, env)
        err = est["peak_bytes"] / peak - 1
        rows.append(
            {
                "case": name,
                "estimated_mib": round(est["peak_bytes"] / 2**20),
                "measured_peak_rss_mib": round(peak / 2**20),
                "error": round(err, 3),
                "within_25pct": abs(err) <= 0.25,
                "compute_dtype": est.get("compute_dtype"),
                "breakdown_mib": {k: round(v / 2**20) for k, v in est["breakdown"].items()},
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "cpu": cpu_name(),
        "note": "loaded shared machine (memory is reliable, time is not)",
        "model": args.model,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "rows": rows,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
