"""The alignment recipes run to the end on this machine: `grpo-math` and `dpo` profiles, held-out scores, minutes.

Each recipe runs as a user runs it, through the `llmctl` command in a throwaway LLMCTL_HOME, with the built-in
profile unchanged (only the data and names are given):

- grpo-math: `finetune --profile grpo-math-warmup` (LoRA SFT, 2 epochs of the training problems' answers: the
  answer format), `merge-lora`, then `finetune --profile grpo-math` on the same problems; `eval --tasks
  exact_match` on held-out problems (another seed, no training prompt among them) for the start model, after
  SFT and after GRPO.
  Goal (issue 25): +15 points exact match over the start model in <= 30 min of training.
- dpo: `finetune --profile dpo` on HH-RLHF pairs; `eval --tasks preference_accuracy --reference base` on held-out
  pairs (the lines before the demo's last 200, never trained on). Goal: >= 0.60 in <= 30 min of training.

Usage:
    .venv/bin/python benchmarks/recipes.py --out recipes.json               # both (about an hour on 2 cores)
    .venv/bin/python benchmarks/recipes.py --only dpo
    make bench-quick BENCH=recipes      # smoke settings (a few steps): checks that it runs, numbers mean nothing
Prints one JSON document on stdout (logs on stderr).
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

sys.path.insert(0, str(Path(__file__).parent))
from _align_data import hh_split, log, math_problems, write_jsonl  # noqa: E402

from llmctl.runtime.host import cpu_name  # noqa: E402

LLMCTL = str(Path(sys.executable).parent / "llmctl")
RECIPES = ("grpo-math", "dpo")


def llmctl(*args, env: dict) -> dict:
    """One `llmctl ... --json` command: its JSON output (the command's own stderr goes to ours)."""
    cmd = [LLMCTL, *map(str, args), "--json"]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[1:3])} failed ({proc.returncode})")
    return json.loads(proc.stdout)


def train(profile: str, model: str, data: Path, name: str, sets: list[str], env: dict) -> dict:
    log(f"finetune --profile {profile} --model {model} → {name}")
    flags = sum((["--set", s] for s in sets), [])
    out = llmctl("finetune", "--profile", profile, "--model", model, "--data", data, "--name", name, *flags, env=env)
    m = out["metrics"]
    return {"profile": profile, "steps": m.get("steps"), "train_s": round(m["train_seconds"], 1)}


def score(model: str, task: str, data: Path, sets: list[str], env: dict) -> dict:
    log(f"eval {model} --tasks {task}")
    extra = ["--reference", "base"] if task == "preference_accuracy" else []
    flags = sum((["--set", s] for s in sets), [])
    out = llmctl("eval", "--model", model, "--tasks", task, "--data", data, *extra, "--no-attach", *flags, env=env)
    metric = {"preference_accuracy": "pair_accuracy"}.get(task, task)
    block = out["results"][task]
    return {"value": round(block[f"{metric},none"], 4), "stderr": round(block[f"{metric}_stderr,none"], 4)}


def grpo_math(args, work: Path, env: dict) -> dict:
    rows = math_problems(args.math_train, seed=1)
    problems = write_jsonl(work / "math-train.jsonl", rows)
    answers = write_jsonl(work / "math-sft.jsonl", [{"instruction": r["prompt"], "output": r["answer"]} for r in rows])
    held = write_jsonl(work / "math-heldout.jsonl", math_problems(args.math_heldout, seed=2, exclude=rows))
    quick = [f"train.max_steps={args.steps}"] if args.steps else []
    # The warm-up profile sets epochs, which overrides max_steps: a smoke cap clears it.
    sft_quick = ["train.epochs=null", *quick] if quick else []
    sft = train("grpo-math-warmup", "base", answers, "math-sft", sft_quick, env)
    llmctl("merge-lora", "--adapter", "math-sft", "--name", "math-sft-m", env=env)
    grpo = train("grpo-math", "math-sft-m", problems, "grpo-math", quick, env)
    scores = {m: score(m, "exact_match", held, [], env) for m in ("base", "math-sft-m", "grpo-math")}
    minutes = (sft["train_s"] + grpo["train_s"]) / 60
    gain = 100 * (scores["grpo-math"]["value"] - scores["base"]["value"])
    return {
        "train_problems": len(rows),
        "heldout_problems": args.math_heldout,
        "steps": {"sft": sft, "grpo": grpo},
        "exact_match": {"start": scores["base"], "after_sft": scores["math-sft-m"], "after_grpo": scores["grpo-math"]},
        "gain_points": round(gain, 1),
        "grpo_own_gain_points": round(100 * (scores["grpo-math"]["value"] - scores["math-sft-m"]["value"]), 1),
        "train_minutes": round(minutes, 1),
        "goal": {"met": gain >= 15 and minutes <= 30, "text": "+15 points exact match in <= 30 min of training"},
    }


def dpo(args, work: Path, env: dict) -> dict:
    train_lines, held_lines = hh_split(args.heldout)
    pairs, held = work / "hh-train.jsonl", work / "hh-heldout.jsonl"
    pairs.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    held.write_text("\n".join(held_lines) + "\n", encoding="utf-8")
    quick = [f"train.max_steps={args.steps}"] if args.steps else []
    run = train("dpo", "base", pairs, "dpo", quick, env)
    acc = score("dpo", "preference_accuracy", held, [], env)
    minutes = run["train_s"] / 60
    return {
        "train_pairs": len(train_lines),
        "heldout_pairs": len(held_lines),
        "steps": run,
        "preference_accuracy": acc,
        "train_minutes": round(minutes, 1),
        "goal": {"met": acc["value"] >= 0.60 and minutes <= 30, "text": "held-out accuracy >= 0.60 in <= 30 min"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--only", default=",".join(RECIPES), help=f"comma list of: {', '.join(RECIPES)}")
    ap.add_argument("--heldout", type=int, default=200, help="held-out HH-RLHF pairs (before the demo's 200)")
    ap.add_argument("--math-train", type=int, default=400)
    ap.add_argument("--math-heldout", type=int, default=200)
    ap.add_argument("--steps", type=int, default=0, help="cap every training run at N steps (smoke runs; 0 = profile)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from llmctl.models.resolve import resolve_model

    base_path = resolve_model(args.model).path  # in the user's registry (the default model converts once)
    home, work = Path(tempfile.mkdtemp(prefix="llmctl-recipes-")), Path(tempfile.mkdtemp(prefix="recipes-data-"))
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    llmctl("models", "import", base_path, "--name", "base", "--link", env=env)
    report = {"benchmark": "recipes", "model": args.model, "settings": vars(args), "results": {}}
    for recipe in [s.strip() for s in args.only.split(",") if s.strip()]:
        started = time.perf_counter()
        report["results"][recipe] = {"grpo-math": grpo_math, "dpo": dpo}[recipe](args, work, env)
        report["results"][recipe]["wall_s"] = round(time.perf_counter() - started, 1)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=str))
    report["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count()}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
