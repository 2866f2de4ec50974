"""Pretraining speed: `llmctl pretrain` vs a plain transformers training loop, same model, data and batch.

Both sides train the shakespeare-tiny LLaMA (5.4M parameters with a 4k vocabulary) on the same token data
with the same batch (16 x 256) for the same number of steps, in separate processes started together each
round (one per side, threads split between them) so load changes on a shared machine hit all sides alike.
Tokens/s per side is the median over timed steps (the first
steps of each run are warm-up and skipped). The baseline is what one writes with transformers alone:
`LlamaForCausalLM(config)(input_ids, labels=input_ids).loss`, `torch.optim.AdamW`, a cosine schedule,
clipping, fp32. llmctl runs with its profile's defaults, once per `--dtypes` value (default: auto = bf16
autocast on CPUs with native bf16, else fp32; and float32). Prints JSON with both speeds and the ratio
(goal >= 1.3 on CPU). GPU: not measured here (no GPU on this machine).

Examples:
    python benchmarks/pretrain_speed.py                         # 3 rounds x 12 steps, auto and float32
    python benchmarks/pretrain_speed.py --rounds 1 --steps 5    # quick check
    python benchmarks/pretrain_speed.py --data DIR              # an existing `tokenize encode` data dir
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
LLMCTL = str(Path(sys.executable).parent / "llmctl")
SKIP = 2  # warm-up steps not timed


def run(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode})")
    return proc.stdout


def make_data(home: Path, env: dict) -> Path:
    data = home / "data" / "shakespeare"
    if not (data / "index.json").is_file():
        run(
            [
                LLMCTL,
                "tokenize",
                "train",
                "--input",
                str(TEXT),
                "--type",
                "bpe",
                "--vocab-size",
                "4096",
                "--name",
                "shakespeare-bpe",
                "--force",
            ],
            env,
        )
        run(
            [
                LLMCTL,
                "tokenize",
                "encode",
                "--tokenizer",
                "shakespeare-bpe",
                "--input",
                str(TEXT),
                "--output",
                str(data),
                "--val-fraction",
                "0.1",
                "--force",
            ],
            env,
        )
    return data


def llmctl_cmd(data: Path, steps: int, name: str, dtype: str, extra: list[str]) -> list[str]:
    return [
        LLMCTL,
        "pretrain",
        "--profile",
        "shakespeare-tiny",
        "--data",
        str(data),
        "--name",
        name,
        "--force",
        "--max-steps",
        str(steps),
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--dtype",
        dtype,
        "--set",
        "train.log_every=1",
        "--set",
        "data.final_eval_tokens=0",
        "--json",
        *extra,
    ]


def llmctl_result(stdout: str) -> dict:
    out = json.loads(stdout)
    rows = [json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][SKIP:]
    return {"tokens_per_s": statistics.median(tps), "params": out["params"], "final_loss": rows[-1].get("loss")}


def run_together(cmds: list[list[str]], env: dict) -> list[str]:
    """Start all commands at once (they share the machine's load equally) and return their stdouts."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = []
    for c, p in zip(cmds, procs):
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            sys.stderr.write(stderr[-4000:])
            raise SystemExit(f"{' '.join(c[:3])} failed ({p.returncode})")
        outs.append(stdout)
    return outs


def baseline_side(data: Path, steps: int, config: dict) -> dict:
    """The plain loop (runs in its own process: `--side baseline`)."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

    from llmctl.data.token_data import TokenData

    m, t = config["model"], config["train"]
    tokens = TokenData(data).tokens("train")
    vocab = int(np.ceil(TokenData(data).tokenizer["vocab_size"] / 64) * 64)
    torch.manual_seed(t["seed"])
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=m["hidden_size"],
            intermediate_size=m["intermediate_size"],
            num_hidden_layers=m["num_layers"],
            num_attention_heads=m["num_heads"],
            num_key_value_heads=m["num_kv_heads"],
            max_position_embeddings=m["max_position_embeddings"],
            rope_theta=m["rope_theta"],
            tie_word_embeddings=m["tie_embeddings"],
        )
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=t["lr"], betas=(t["beta1"], t["beta2"]), weight_decay=t["weight_decay"]
    )
    sched = get_cosine_schedule_with_warmup(opt, t["warmup_steps"], steps)
    rng = np.random.default_rng(t["seed"])
    bsz, seq = t["batch_size"], t["seq_len"]
    model.train()
    tps, loss = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        offs = rng.integers(0, len(tokens) - seq - 1, size=bsz)
        x = torch.from_numpy(np.stack([tokens[o : o + seq] for o in offs]).astype(np.int64))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad()
        loss = loss.item()
        tps.append(bsz * seq / (time.perf_counter() - t0))
    return {
        "tokens_per_s": statistics.median(tps[SKIP:]),
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating llmctl/baseline runs per side")
    ap.add_argument("--steps", type=int, default=12, help="training steps per run (first 2 not timed)")
    ap.add_argument("--data", type=Path, default=None, help="tokenized data dir (default: tokenize tiny-shakespeare)")
    ap.add_argument("--home", default=None, help="LLMCTL_HOME (default: a temp dir)")
    ap.add_argument("--llmctl-args", default="", help="extra pretrain arguments for the llmctl side")
    ap.add_argument("--dtypes", default="auto,float32", help="llmctl --dtype values, each one llmctl side")
    ap.add_argument("--side", choices=["baseline"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from llmctl.config.profiles import resolve_config

    config = resolve_config("pretrain", "shakespeare-tiny", [], {})
    if args.side == "baseline":
        print(json.dumps(baseline_side(args.data, args.steps, config)))
        return
    home = Path(args.home or tempfile.mkdtemp(prefix="llmctl-pts-"))
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    data = args.data or make_data(home, env)
    extra = args.llmctl_args.split()
    dtypes = args.dtypes.split(",")
    threads = max(1, (os.cpu_count() or 1) // (len(dtypes) + 1))
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    ours: dict[str, list] = {dt: [] for dt in dtypes}
    base = []
    for _ in range(args.rounds):
        cmds = [llmctl_cmd(data, args.steps, f"speed-{dt}", dt, extra) for dt in dtypes]
        cmds.append([sys.executable, __file__, "--side", "baseline", "--data", str(data), "--steps", str(args.steps)])
        outs = run_together(cmds, env)
        for dt, o in zip(dtypes, outs):
            ours[dt].append(llmctl_result(o))
        base.append(json.loads(outs[-1]))
    b = statistics.median(r["tokens_per_s"] for r in base)
    report = {
        "benchmark": "pretrain_speed",
        "device": "cpu",
        "threads_per_process": threads,
        "method": f"{len(dtypes) + 1} processes started together per round (same load on each)",
        "model": "shakespeare-tiny LLaMA",
        "params": base[0]["params"],
        "batch": f"{config['train']['batch_size']}x{config['train']['seq_len']}",
        "steps_per_run": args.steps,
        "timed_steps_per_run": args.steps - SKIP,
        "rounds": args.rounds,
        "llmctl_extra_args": extra,
        "baseline": "HF LlamaForCausalLM(labels=...) + torch.optim.AdamW + cosine schedule, fp32",
        "baseline_tokens_per_s": round(b, 1),
        "baseline_runs": [round(r["tokens_per_s"], 1) for r in base],
        "final_loss_baseline": base[-1]["final_loss"],
        "goal_ratio": 1.3,
        "gpu": "not measured: no GPU on this machine",
    }
    for dt in dtypes:
        o = statistics.median(r["tokens_per_s"] for r in ours[dt])
        report[f"llmctl_{dt}_tokens_per_s"] = round(o, 1)
        report[f"llmctl_{dt}_runs"] = [round(r["tokens_per_s"], 1) for r in ours[dt]]
        report[f"ratio_{dt}"] = round(o / b, 3)
        report[f"final_loss_llmctl_{dt}"] = ours[dt][-1]["final_loss"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
