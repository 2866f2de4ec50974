"""The `reward_accuracy` eval task, scored by llmctl: a reward model on held-out preference pairs.

pair_accuracy is the share of pairs whose chosen reply scores above the rejected one (ties count as wrong),
mean_margin the mean of r(chosen) − r(rejected); pairs go through the template the reward model was trained
with (recorded on its registry entry), replies truncated to `reward_accuracy.seq_len` tokens with the prompt.

Examples:
    out = run_reward_accuracy("smol-rm", Path("heldout.jsonl"), config["reward_accuracy"], "cpu")
    out["block"]["pair_accuracy,none"], out["config"]["pairs"]
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.evaluate.tasks import REWARD_ACCURACY


def read_pairs(path: Path, tokenizer, template: str, seq_len: int, max_pairs: int | None, task: str = REWARD_ACCURACY):
    """Tokenized preference pairs of a file in any preference layout (and what was dropped); `task` names the
    task that reads them in messages."""
    from llmctl.data import layouts
    from llmctl.data.sft import read_records, tokenize_pref

    records, kind = read_records(path, "auto", uses=("preference",))
    if layouts.get(kind).use != "preference":
        raise LlmctlError(
            f"{task} needs preference pairs; {path} is {kind} data",
            hint='give a JSONL of {"prompt": "…", "chosen": "…", "rejected": "…"} (or HH-RLHF dialogues)',
        )
    if max_pairs:
        records = records[:max_pairs]
    pairs, stats = tokenize_pref(records, tokenizer, template, seq_len)
    return pairs, stats, kind


def pair_margins(rm, pairs: list, batch_size: int, device: str) -> list[float]:
    """r(chosen) − r(rejected) for every pair, `batch_size` pairs per forward pass."""
    from llmctl.data.sft import collate_pairs
    from llmctl.finetune.batches import to_device

    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = to_device(collate_pairs(chunk, rm.tokenizer.pad_token_id), device)
        scores = rm.scores(batch)
        n = len(chunk)
        out += (scores[:n] - scores[n:]).tolist()
    return out


def run_reward_accuracy(model: str, path: Path, rconfig: dict, device: str) -> dict:
    """Score a reward model on a preference file, in lm-eval's result layout (block, config, n-samples)."""
    from llmctl.finetune.rewards import load_reward_model
    from llmctl.models.loading import pick_device

    started = time.perf_counter()
    device = pick_device(device)
    rm = load_reward_model(model, device)
    template = rm.template or "auto"
    pairs, stats, kind = read_pairs(path, rm.tokenizer, template, rconfig["seq_len"], rconfig["max_pairs"])
    margins = pair_margins(rm, pairs, rconfig["batch_size"], device)
    n = len(margins)
    acc = sum(m > 0 for m in margins) / n
    mean = sum(margins) / n
    std = math.sqrt(sum((m - mean) ** 2 for m in margins) / max(1, n - 1))
    return {
        "block": {
            "alias": REWARD_ACCURACY,
            "pair_accuracy,none": acc,
            "pair_accuracy_stderr,none": math.sqrt(acc * (1 - acc) / max(1, n - 1)),
            "mean_margin,none": mean,
            "mean_margin_stderr,none": std / math.sqrt(n),
        },
        "config": {
            "task": REWARD_ACCURACY,
            "data": str(path),
            "layout": kind,
            "template": stats.extra["template"],
            "pairs": n,
            "truncated": stats.truncated,
            "dropped_prompt_too_long": stats.dropped_prompt_too_long,
            "seq_len": rconfig["seq_len"],
            "seconds": round(time.perf_counter() - started, 3),
        },
        "n": n,
        "resolved": rm,
    }
