"""Alignment quality on the default model: reward model accuracy, PPO/GRPO against it, GRPO on arithmetic, and the
preference objectives' held-out accuracy after the same budget.

Everything trains through `llmctl finetune` (LoRA, the built-in profiles' settings unless changed here) in a
throwaway LLMCTL_HOME. The shared HH-RLHF harmless-base file (1,800 pairs) is split once: the last --heldout pairs
are never trained on; their prompts are the held-out prompts of the PPO/GRPO sections.

- reward: `--objective reward` on the other pairs; `llmctl eval --tasks reward_accuracy` on the held-out pairs.
  Goal: pair accuracy >= 0.62 (chance 0.5).
- ppo, grpo-rm: PPO / GRPO against that reward model on training-slice prompts; on held-out prompts the greedy
  answers before (base) and after are scored by the reward model: mean reward, win rate of after over before
  (ties count half) and KL of the after-policy to the start model on its own answers (nats/answer).
  Goal: win rate >= 0.65 at KL <= 5.
- grpo-math: GRPO with `--reward math_exact` on generated two-number addition/subtraction problems (train and
  held-out sets from different seeds); greedy exact-match accuracy on the held-out set before/after. Goal: +15 points.
- prefs: dpo, kto, orpo, simpo, ipo with the same budget on the training pairs; held-out accuracy of the implicit
  reward (log-ratio to the start model: dpo, kto, ipo) or of the policy's mean log-likelihood margin (orpo, simpo).

Usage:
    .venv/bin/python benchmarks/align_quality.py                       # full settings (hours on a 2-core CPU)
    .venv/bin/python benchmarks/align_quality.py --only reward,ppo --rm-steps 40 --ppo-steps 10   # one part, shorter
    make bench-quick BENCH=align_quality      # smoke settings: checks that it runs, its numbers mean nothing
Prints one JSON document on stdout (logs on stderr), with the CPU budget each section used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _align_data import hh_split, log, math_problems, write_jsonl  # noqa: E402

from llmctl.runtime.host import cpu_name  # noqa: E402

SECTIONS = ("reward", "ppo", "grpo-rm", "grpo-math", "prefs")
PREF_OBJECTIVES = ("dpo", "kto", "orpo", "simpo", "ipo")


def split_hh(work: Path, heldout: int) -> tuple[Path, Path, list[dict]]:
    """The shared pairs as train and held-out files (held-out: the lines before the demo's) and its records."""
    train_lines, held_lines = hh_split(heldout)
    train, held = work / "hh-train.jsonl", work / "hh-heldout.jsonl"
    train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    held.write_text("\n".join(held_lines) + "\n", encoding="utf-8")
    from llmctl.data.sft import read_records

    return train, held, read_records(held)[0]


class Timer:
    """Wall and CPU seconds of each section (the CPU budget in the output); `after` runs as each section ends."""

    def __init__(self, after=lambda: None):
        self.sections: dict = {}
        self.after = after

    def __call__(self, name: str):
        timer = self

        class _Section:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()
                log(f"{name} …")

            def __exit__(self, *exc):
                timer.sections[name] = {
                    "wall_s": round(time.perf_counter() - self.t, 1),
                    "cpu_s": round(time.process_time() - self.c, 1),
                }
                timer.after()

        return _Section()


def finetune_run(base: str, data: Path, name: str, profile: str, sets: list[str], explicit: dict):
    """Train `name` unless a kept --home already has it (a reward model reused by a later, separate run)."""
    from llmctl.config.profiles import resolve_config
    from llmctl.finetune import finetune
    from llmctl.models.registry import Registry

    if Registry().find(name) is not None:
        log(f"{name}: already trained in this LLMCTL_HOME, reused")
        return None
    config = resolve_config("finetune", profile, sets, explicit)
    return finetune(base, data, name, config, on_log=lambda s: print(s, file=sys.stderr, flush=True))


def rollout_ctx(tokenizer, rm, max_new_tokens: int, model):
    from llmctl.finetune.rewards import math_exact
    from llmctl.finetune.rollout import RewardSource, RolloutContext

    source = RewardSource(rm.label, model=rm) if rm is not None else RewardSource("math_exact", fn=math_exact)
    eos = model.generation_config.eos_token_id
    eos_ids = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []), tokenizer.eos_token_id})
    gen = {"max_new_tokens": max_new_tokens, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    return RolloutContext(source, gen, tokenizer, "cpu", eos_ids=eos_ids)


def greedy_scores(model_name: str, records: list[dict], rm, max_new_tokens: int, seq_len: int, batch: int = 8):
    """Greedy answers of a model to prompts: rewards, and (for adapters) KL to the base on those answers."""
    import torch

    from llmctl.data.preferences import tokenize_prompts
    from llmctl.finetune.base import Models
    from llmctl.finetune.rollout import generate, reference_logps, response_stats
    from llmctl.models.loading import load_model

    loaded = load_model(model_name, dtype="float32", device="cpu")
    items = tokenize_prompts(records, loaded.tokenizer, "auto", seq_len)[0]
    ctx = rollout_ctx(loaded.tokenizer, rm, max_new_tokens, loaded.model)
    scores, kls, texts = [], [], []
    adapter = hasattr(loaded.model, "disable_adapter")
    with torch.no_grad():
        for start in range(0, len(items), batch):
            ro = generate(loaded.model, items[start : start + batch], ctx, greedy=True)
            scores += ctx.reward.score(ro, ctx).tolist()
            texts += ro.texts
            if adapter:
                logp = response_stats(loaded.model, ro, ctx, temperature=1.0)[0]
                ref = reference_logps(Models(loaded.model), ro, ctx, temperature=1.0)
                kls += ((logp - ref) * ro.mask).sum(1).tolist()
    return scores, kls, texts


def policy_report(base: str, policy: str, prompts: list[dict], rm, args) -> dict:
    before, _, _ = greedy_scores(base, prompts, rm, args.max_new_tokens, args.seq_len)
    after, kls, texts = greedy_scores(policy, prompts, rm, args.max_new_tokens, args.seq_len)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after, before))
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    return {
        "prompts": len(prompts),
        "reward_before": round(mean(before), 4),
        "reward_after": round(mean(after), 4),
        "win_rate": round(wins / max(1, len(prompts)), 4),
        "kl_nats_per_answer": round(mean(kls), 4),
        "goal": "win_rate >= 0.65 at kl <= 5",
        "example_answer": texts[0][:200] if texts else "",
    }


def pref_accuracy(name: str, objective: str, held: list[dict], seq_len: int) -> float:
    """Held-out accuracy: implicit reward margin (reference objectives) or mean log-likelihood margin."""
    import torch

    from llmctl.data.sft import collate_pairs, tokenize_pref
    from llmctl.finetune.base import Models, response_counts, token_logps
    from llmctl.models.loading import load_model

    loaded = load_model(name, dtype="float32", device="cpu")
    pairs = tokenize_pref(held, loaded.tokenizer, "auto", seq_len)[0]
    m = Models(loaded.model)
    right = 0
    with torch.no_grad():
        for start in range(0, len(pairs), 4):
            batch = collate_pairs(pairs[start : start + 4], loaded.tokenizer.pad_token_id)
            n = batch["input_ids"].shape[0] // 2
            logp = token_logps(m.net, batch, True, want="rows")
            if objective in ("orpo", "simpo"):
                score = logp / response_counts(batch)
            else:
                with m.reference():
                    score = logp - token_logps(m.net, batch, True, want="rows")
            right += int((score[:n] > score[n:]).sum())
    return right / len(pairs)


def main() -> None:  # noqa: C901 (one section after another)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    ap.add_argument("--heldout", type=int, default=200, help="HH-RLHF pairs held out (the file's last lines)")
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--rm-steps", type=int, default=300)
    ap.add_argument("--rm-batch", type=int, default=8)
    ap.add_argument("--rm-lr", type=float, default=1e-4)
    ap.add_argument("--ppo-steps", type=int, default=60)
    ap.add_argument("--grpo-steps", type=int, default=40)
    ap.add_argument("--math-steps", type=int, default=60)
    ap.add_argument("--math-train", type=int, default=400)
    ap.add_argument("--math-heldout", type=int, default=200)
    ap.add_argument("--pref-steps", type=int, default=100)
    ap.add_argument("--pref-heldout", type=int, default=0, help="held-out pairs scored per objective (0 = all)")
    ap.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts for the win rate")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rollout-batch", type=int, default=8, help="PPO: prompts per step")
    ap.add_argument("--num-generations", type=int, default=8, help="GRPO: answers per prompt")
    ap.add_argument("--prompts-per-step", type=int, default=4, help="GRPO: prompts per step")
    ap.add_argument("--policy-lr", type=float, default=None, help="PPO/GRPO learning rate (default: the profile's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here, after every section")
    ap.add_argument(
        "--home",
        type=Path,
        default=None,
        help="keep trained models in this LLMCTL_HOME and reuse those already there (default: a fresh temp folder)",
    )
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from llmctl.finetune.rewards import load_reward_model
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry
    from llmctl.models.resolve import resolve_model

    base_path = resolve_model(args.model).path  # in the user's registry (the default model converts once)
    os.environ["LLMCTL_HOME"] = str(args.home) if args.home else tempfile.mkdtemp(prefix="llmctl-align-")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="align-data-"))
    if Registry().find("base") is None:
        import_model(Registry(), base_path, "base", link=True)
    train, held_path, held = split_hh(work, args.heldout)
    prompts = [{"prompt": r["prompt"]} for r in held][: args.eval_prompts]
    report = {"benchmark": "align_quality", "model": args.model, "settings": vars(args), "results": {}}

    def keep() -> None:  # a run stopped part-way keeps the sections it finished
        if args.out:
            args.out.write_text(json.dumps({**report, "sections_done": timer.sections}, indent=2, default=str))

    timer = Timer(keep)
    common = [
        "data.eval_split=0",
        "train.save_every=0",
        f"train.seq_len={args.seq_len}",
        "train.log_every=1",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"ppo.rollout_batch={args.rollout_batch}",
        f"grpo.num_generations={args.num_generations}",
    ]
    lr = {"train.lr": args.policy_lr} if args.policy_lr else {}
    grpo = {"train.batch_size": args.prompts_per_step, **lr}  # GRPO's batch is prompts; PPO's, answers per update
    need_rm = any(s in only for s in ("reward", "ppo", "grpo-rm"))
    if need_rm:
        with timer("reward"):
            finetune_run(
                "base",
                train,
                "rm",
                "reward",
                common[:4] + ["train.eval_every=0"],
                {
                    "train.max_steps": args.rm_steps,
                    "train.batch_size": args.rm_batch,
                    "train.lr": args.rm_lr,
                    "train.warmup_steps": max(1, args.rm_steps // 20),
                },
            )
            from llmctl.config.profiles import resolve_config
            from llmctl.evaluate import run_eval

            res = run_eval(
                "rm",
                ["reward_accuracy"],
                resolve_config(
                    "eval", None, [], {"data": str(held_path), "reward_accuracy.seq_len": args.seq_len, "device": "cpu"}
                ),
            )
            report["results"]["reward"] = {
                "heldout_pairs": res.results["configs"]["reward_accuracy"]["pairs"],
                "pair_accuracy": round(res.metrics["reward_accuracy.pair_accuracy"], 4),
                "mean_margin": round(res.metrics["reward_accuracy.mean_margin"], 4),
                "goal": "pair_accuracy >= 0.62",
            }
        rm = load_reward_model("rm", "cpu")
    for section, objective, steps in (("ppo", "ppo", args.ppo_steps), ("grpo-rm", "grpo", args.grpo_steps)):
        if section not in only:
            continue
        with timer(section):
            finetune_run(
                "base",
                train,
                section,
                objective,
                common + ["train.eval_every=0", "reward.model=rm"],
                {"train.max_steps": steps, **(grpo if objective == "grpo" else lr)},
            )
            report["results"][section] = policy_report("base", section, prompts, rm, args)
    if "grpo-math" in only:
        with timer("grpo-math"):
            math_train_rows = math_problems(args.math_train, seed=1)
            math_train = write_jsonl(work / "math-train.jsonl", math_train_rows)
            math_held = math_problems(args.math_heldout, seed=2, exclude=math_train_rows)
            finetune_run(
                "base",
                math_train,
                "grpo-math",
                "grpo",
                common + ["train.eval_every=0", "reward.function=math_exact"],
                {"train.max_steps": args.math_steps, **grpo},
            )
            before = greedy_scores("base", math_held, None, args.max_new_tokens, args.seq_len)[0]
            after = greedy_scores("grpo-math", math_held, None, args.max_new_tokens, args.seq_len)[0]
            report["results"]["grpo-math"] = {
                "heldout_problems": len(math_held),
                "accuracy_before": round(sum(before) / len(before), 4),
                "accuracy_after": round(sum(after) / len(after), 4),
                "gain_points": round(100 * (sum(after) - sum(before)) / len(before), 1),
                "goal": "+15 points",
            }
    if "prefs" in only:
        held_pairs = held[: args.pref_heldout] if args.pref_heldout else held
        table = {"heldout_pairs": len(held_pairs)}
        for objective in PREF_OBJECTIVES:
            with timer(f"prefs-{objective}"):
                finetune_run(
                    "base",
                    train,
                    f"p-{objective}",
                    objective,
                    common[:4] + ["train.eval_every=0"],
                    {"train.max_steps": args.pref_steps, "train.warmup_steps": max(1, args.pref_steps // 20)},
                )
                table[objective] = {
                    "heldout_accuracy": round(pref_accuracy(f"p-{objective}", objective, held_pairs, args.seq_len), 4),
                    "measure": "mean log-likelihood margin"
                    if objective in ("orpo", "simpo")
                    else "implicit reward (log-ratio to the start model)",
                }
        table["start_model_mean_loglik"] = round(pref_accuracy("base", "simpo", held_pairs, args.seq_len), 4)
        report["results"]["prefs"] = table
    report["cpu_budget"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "sections": timer.sections,
        "total_wall_s": round(sum(s["wall_s"] for s in timer.sections.values()), 1),
        "total_cpu_s": round(sum(s["cpu_s"] for s in timer.sections.values()), 1),
    }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
