"""llmctl against TRL at the same budget: DPO, KTO, GRPO and reward modelling, side by side.

For each objective both sides train a LoRA adapter on the same base, data, seed, LoRA settings (r, alpha,
dropout, target modules), optimiser settings (AdamW betas, weight decay, clipping, and llmctl's own learning-rate
schedule: linear warmup, then cosine decay to the same floor), batch and number of optimizer updates: llmctl through
`llmctl finetune --profile <objective>` (the built-in profile, with the changes below), TRL through its own
`DPOTrainer`, `KTOTrainer`, `GRPOTrainer` and `RewardTrainer` in a child process (`_trl_side.py`), configured
from llmctl's resolved settings. TRL's adapter is saved as a PEFT folder and registered with `llmctl models
import`; then both sides' models are scored by the same `llmctl eval` task on held-out data:

- dpo, kto: `eval --tasks preference_accuracy --reference base` (implicit reward: log-ratio to the base);
- reward: `eval --tasks reward_accuracy` (pair accuracy of the reward model);
- grpo (`--reward math_exact` on two-number ± problems, train and held-out sets from different seeds):
  `eval --tasks exact_match` (the start model's score too).

Data: the shared HH-RLHF harmless-base pairs. The file's last 200 lines are the demo's held-out set and are used
by neither side here; the --heldout lines before them are the held-out pairs, the rest the training pairs (those
that fit in --seq-len without cutting, so that both sides train on the same tokens).
Speed: training tokens per second of training time (llmctl's own count: real prompt + reply tokens of its batches;
TRL's `num_tokens` where its trainer logs one, else the same count estimated from the data), and each child
process's peak RSS (os.wait4). Goal (issue 25): llmctl's metric >= TRL's minus one standard error, at >= 1.3x
TRL's tokens/s.

Usage:
    .venv/bin/python benchmarks/align_vs_trl.py --out align_vs_trl.json     # full settings (hours on 2 cores)
    .venv/bin/python benchmarks/align_vs_trl.py --only dpo,kto --steps 50
    make bench-quick BENCH=align_vs_trl      # smoke settings: checks that it runs, its numbers mean nothing
Prints one JSON document on stdout (logs on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _align_data import hh_split, log, math_problems, write_jsonl  # noqa: E402

from llmctl.runtime.host import cpu_name  # noqa: E402

SECTIONS = ("dpo", "kto", "grpo", "reward")
LLMCTL = str(Path(sys.executable).parent / "llmctl")


def measured(cmd: list[str], env: dict) -> tuple[str, dict]:
    """Run a child process: its stdout, wall seconds and peak RSS in MiB (its own rusage, from os.wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_parts: list[str] = []
    err_parts: list[str] = []

    readers = [
        threading.Thread(target=lambda: out_parts.append(proc.stdout.read())),
        threading.Thread(target=lambda: err_parts.append(proc.stderr.read())),
    ]
    for t in readers:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write("".join(err_parts)[-4000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode})")
    return "".join(out_parts), {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
    }


def llmctl(*args: str, env: dict) -> str:
    return measured([LLMCTL, *map(str, args)], env)[0]


# ---- one objective, both sides ------------------------------------------------------------------------------------


def data_tokens(objective: str, data: Path, base: str, cfg: dict) -> float:
    """Mean training tokens per example as llmctl tokenizes the data (for TRL's count when it logs none)."""
    from llmctl.data.preferences import tokenize_unpaired
    from llmctl.data.sft import read_records, tokenize_pref
    from llmctl.models.loading import load_tokenizer

    tok = load_tokenizer(base)
    records, kind = read_records(data)
    if objective == "kto":
        _, stats = tokenize_unpaired(records, kind, tok, "auto", cfg["train"]["seq_len"])
    else:
        _, stats = tokenize_pref(records, tok, "auto", cfg["train"]["seq_len"])
    return stats.tokens / max(1, stats.kept)


def fitting(lines: list[str], base: str, seq_len: int) -> list[str]:
    """The pairs whose prompt + longer reply fit in seq_len tokens (8 to spare for template differences).

    TRL's RewardTrainer drops longer pairs and its DPO/KTO cut them its own way, llmctl cuts replies: training
    both sides only on pairs neither has to cut keeps the data the same.
    """
    from llmctl.data.sft import tokenize_pref
    from llmctl.errors import LlmctlError
    from llmctl.models.loading import load_tokenizer

    tok = load_tokenizer(base)
    keep = []
    for line in lines:
        try:
            _, stats = tokenize_pref([json_record(line)], tok, "auto", seq_len - 8)
        except LlmctlError:
            continue  # the prompt alone is too long
        if stats.kept and not stats.truncated:
            keep.append(line)
    return keep


def json_record(line: str) -> dict:
    """One HH-RLHF line in llmctl's canonical preference layout ({prompt, chosen, rejected})."""
    from llmctl.data.layouts import detect

    raw = json.loads(line)
    return detect(raw).normalize(raw)


def eval_metric(model: str, task: str, data: Path, sets: list[str], env: dict) -> dict:
    extra = ["--reference", "base"] if task == "preference_accuracy" else []
    out = json.loads(
        llmctl(
            "eval",
            "--model",
            model,
            "--tasks",
            task,
            "--data",
            data,
            *extra,
            "--json",
            "--no-attach",
            "--device",
            "cpu",
            *sum((["--set", s] for s in sets), []),
            env=env,
        )
    )
    metric = {"preference_accuracy": "pair_accuracy", "reward_accuracy": "pair_accuracy"}.get(task, task)
    block = out["results"][task]
    return {
        "metric": f"{task}.{metric}",
        "value": round(block[f"{metric},none"], 4),
        "stderr": round(block[f"{metric}_stderr,none"], 4),
        "n": out["n-samples"][task]["effective"],
    }


def side_by_side(objective: str, data: Path, held: Path, args, env: dict, work: Path) -> dict:
    from llmctl.config.profiles import resolve_config

    sets, explicit = _settings(objective, args)
    cfg = resolve_config("finetune", objective, sets, explicit)
    base_path = json.loads(llmctl("models", "show", "base", "--json", env=env))["path"]
    log(f"{objective}: llmctl finetune ({cfg['train']['max_steps']} updates) …")
    flags = [f"--set={s}" for s in sets] + [f"--set={k}={v}" for k, v in explicit.items()]
    out, ours = measured(
        [
            LLMCTL,
            "finetune",
            "--profile",
            objective,
            "--model",
            "base",
            "--data",
            str(data),
            "--name",
            f"l-{objective}",
            "--device",
            "cpu",
            "--json",
            *flags,
        ],
        env,
    )
    result = json.loads(out)
    ours.update(tokens_per_s=result["metrics"]["tokens_per_s"], train_s=result["metrics"]["train_seconds"])
    log(f"{objective}: TRL ({cfg['train']['max_steps']} updates) …")
    spec = work / f"trl-{objective}.json"
    spec.write_text(
        json.dumps(
            {
                "objective": objective,
                "config": cfg,
                "base": base_path,
                "data": str(data),
                "out": str(work / f"trl-{objective}"),
                "threads": args.threads,
            }
        )
    )
    _, theirs = measured([sys.executable, str(Path(__file__).with_name("_trl_side.py")), str(spec)], env)
    tr = json.loads((work / f"trl-{objective}" / "result.json").read_text())
    if tr["num_tokens"]:
        tokens, how = tr["num_tokens"], "TRL's num_tokens"
    else:
        per = data_tokens(objective, data, base_path, cfg)
        tokens, how = (
            per * cfg["train"]["max_steps"] * cfg["train"]["batch_size"] * cfg["train"]["grad_accum"],
            ("examples seen x mean tokens per example (llmctl's tokenization)"),
        )
    theirs.update(
        tokens_per_s=round(tokens / tr["train_runtime"], 1),
        train_s=round(tr["train_runtime"], 2),
        tokens_counted_as=how,
    )
    llmctl("models", "import", work / f"trl-{objective}" / "adapter", "--name", f"t-{objective}", env=env)
    task, eval_sets = _eval_task(objective, args)
    ours["heldout"] = eval_metric(f"l-{objective}", task, held, eval_sets, env)
    theirs["heldout"] = eval_metric(f"t-{objective}", task, held, eval_sets, env)
    row = {"updates": cfg["train"]["max_steps"], "llmctl": ours, "trl": theirs}
    if objective == "grpo":
        row["start_model"] = {"heldout": eval_metric("base", task, held, eval_sets, env)}
    a, b = ours["heldout"], theirs["heldout"]
    row["goal"] = {
        "metric_ok": a["value"] >= b["value"] - b["stderr"],
        "speedup": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2) if theirs["tokens_per_s"] else None,
        "text": "llmctl metric >= TRL's - 1 stderr at >= 1.3x TRL's tokens/s",
    }
    return row


def _settings(objective: str, args) -> tuple[list[str], dict]:
    """The `--set` changes to the built-in profile and the explicit values, the same for both sides."""
    sets = [
        "data.eval_split=0",
        "data.packing=false",
        "train.save_every=0",
        "train.eval_every=0",
        "train.log_every=1",
        f"train.seq_len={args.seq_len}",
        "train.dtype=float32",
    ]
    steps = args.steps or {"dpo": 200, "kto": 200, "grpo": 40, "reward": 300}[objective]
    explicit: dict = {"train.max_steps": steps, "train.warmup_steps": max(1, steps // 10)}
    if args.batch_size:
        explicit["train.batch_size"] = args.batch_size
    if objective == "grpo":
        sets += [
            "reward.function=math_exact",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            f"grpo.num_generations={args.num_generations}",
        ]
        explicit["train.batch_size"] = args.prompts_per_step
    return sets, explicit


def _eval_task(objective: str, args) -> tuple[str, list[str]]:
    if objective == "grpo":
        return "exact_match", [f"exact_match.max_new_tokens={args.max_new_tokens}"]
    if objective == "reward":
        return "reward_accuracy", [f"reward_accuracy.seq_len={args.seq_len}"]
    return "preference_accuracy", [f"preference_accuracy.seq_len={args.seq_len}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    ap.add_argument("--heldout", type=int, default=200, help="held-out pairs (before the demo's last 200 lines)")
    ap.add_argument("--train-pairs", type=int, default=0, help="training pairs used (0 = all the others)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer updates per objective (0 = its default)")
    ap.add_argument("--batch-size", type=int, default=0, help="pairs/examples per update (0 = the profile's)")
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--math-train", type=int, default=400)
    ap.add_argument("--math-heldout", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=16, help="GRPO rollouts and exact_match answers")
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0 = torch's default)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from llmctl.models.resolve import resolve_model

    base_path = resolve_model(args.model).path  # in the user's registry (the default model converts once)
    home, work = Path(tempfile.mkdtemp(prefix="llmctl-vs-trl-")), Path(tempfile.mkdtemp(prefix="vs-trl-data-"))
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    llmctl("models", "import", base_path, "--name", "base", "--link", env=env)
    train_lines, held_lines = hh_split(args.heldout)
    train_lines = fitting(train_lines, base_path, args.seq_len)  # the same pairs for both sides, none cut
    if args.train_pairs:
        train_lines = train_lines[: args.train_pairs]
    pairs = work / "hh-train.jsonl"
    pairs.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    held = work / "hh-heldout.jsonl"
    held.write_text("\n".join(held_lines) + "\n", encoding="utf-8")
    math_rows = math_problems(args.math_train, seed=1)
    math_train = write_jsonl(work / "math-train.jsonl", math_rows)
    math_held = write_jsonl(work / "math-heldout.jsonl", math_problems(args.math_heldout, seed=2, exclude=math_rows))
    import torch

    report = {"benchmark": "align_vs_trl", "model": args.model, "settings": vars(args), "results": {}}
    import trl

    report["versions"] = {"trl": trl.__version__, "torch": torch.__version__}
    for objective in [s.strip() for s in args.only.split(",") if s.strip()]:
        data, heldout = (math_train, math_held) if objective == "grpo" else (pairs, held)
        report["results"][objective] = side_by_side(objective, data, heldout, args, env, work)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=str))
    report["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "note": "timings on a shared machine are 'loaded'"}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
