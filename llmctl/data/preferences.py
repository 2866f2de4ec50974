"""Data of the alignment objectives: KTO's unpaired examples and the prompts PPO and GRPO generate from.

Records come canonical from the layout table (llmctl/data/layouts.py): unpaired {prompt, completion, label},
preference {prompt, chosen, rejected} (KTO reads a pair as one desirable and one undesirable example, as its
paper does), prompts {prompt, …} with every other field kept for reward rules (`answer` for math_exact).

A pair whose chosen reply equals the rejected one teaches nothing: DPO's and IPO's chosen-minus-rejected margin
is 0 whatever the policy (a constant loss) and KTO is told one reply is both desirable and undesirable.
`check_pairs` refuses a file of nothing else and counts them otherwise.

Examples:
    same = check_pairs(records, Path("pairs.jsonl"))        # refused when every pair is identical
    examples, stats = tokenize_unpaired(records, "kto", tokenizer, "auto", 512)
    items, stats = tokenize_prompts(records, tokenizer, "auto", 256)     # PromptItem(ids, prompt, fields)
    batch = collate_unpaired(examples[:4], pad_id=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmctl.data.sft import IGNORE, DataStats, Example, collate, render_prompt, resolve_template
from llmctl.errors import LlmctlError


@dataclass
class UnpairedExample:
    """One KTO example: prompt ids, completion ids and whether the completion is desirable."""

    prompt: list[int]
    completion: list[int]
    label: bool


@dataclass
class PromptItem:
    """One prompt to generate from: its ids through the template, the prompt as given and the record's other
    fields (passed to reward functions)."""

    ids: list[int]
    prompt: object
    fields: dict = field(default_factory=dict)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def identical_pairs(records: list[dict]) -> int:
    """How many preference records have a chosen reply identical to the rejected one.

    Examples:
        identical_pairs([{"prompt": "p", "chosen": "a", "rejected": "a"}]) == 1
    """
    return sum(1 for r in records if isinstance(r.get("chosen"), str) and r.get("chosen") == r.get("rejected"))


def check_pairs(records: list[dict], path) -> int:
    """Refuse preference data in which every pair's chosen reply equals its rejected one; else how many do.

    Examples:
        check_pairs(records, Path("pairs.jsonl"))      # 0 for ordinary data
    """
    same = identical_pairs(records)
    if records and same == len(records):
        raise LlmctlError(
            f"every one of the {same} preference pairs in {path} has chosen identical to rejected: "
            "a preference objective learns nothing from them",
            hint="give pairs whose rejected reply differs from the chosen one",
        )
    return same


def unpaired_records(records: list[dict], kind: str) -> list[dict]:
    """{prompt, completion, label} records; a preference pair gives a desirable and an undesirable one."""
    if kind == "kto":
        return records
    out = []
    for r in records:
        out += [
            {"prompt": r["prompt"], "completion": r["chosen"], "label": True},
            {"prompt": r["prompt"], "completion": r["rejected"], "label": False},
        ]
    return out


def tokenize_unpaired(
    records: list[dict], kind: str, tokenizer, template: str, max_len: int
) -> tuple[list[UnpairedExample], DataStats]:
    """Tokenize KTO examples (from unpaired or preference records); the completion ends with eos / end of turn."""
    rows = unpaired_records(records, kind)
    stats = DataStats(records=len(records))
    template = resolve_template(template, tokenizer)
    out: list[UnpairedExample] = []
    for r in rows:
        prompt_text, tail = render_prompt(r["prompt"], template, tokenizer)
        prompt, completion = _encode(tokenizer, prompt_text), _encode(tokenizer, r["completion"] + tail)
        stats.longest_prompt = max(stats.longest_prompt, len(prompt))
        if len(prompt) >= max_len - 1:
            stats.dropped_prompt_too_long += 1
            continue
        if len(prompt) + len(completion) > max_len:
            stats.truncated += 1
            completion = completion[: max_len - len(prompt)]
        out.append(UnpairedExample(prompt, completion, bool(r["label"])))
        stats.tokens += len(prompt) + len(completion)
        stats.response_tokens += len(completion)
    stats.kept = len(out)
    stats.extra.update(
        template=template, desirable=sum(e.label for e in out), undesirable=sum(not e.label for e in out)
    )
    if kind != "kto":  # each such pair is one reply labelled both desirable and undesirable
        stats.extra["identical_pairs"] = identical_pairs(records)
    if not out:
        raise LlmctlError(
            f"every example's prompt is longer than the max length {max_len} tokens "
            f"(longest prompt {stats.longest_prompt} tokens)",
            hint="raise --seq-len or shorten the prompts",
        )
    return out, stats


def collate_unpaired(examples: list[UnpairedExample], pad_id: int):
    """KTO rows: each prompt with its own completion, then each prompt with the next example's completion (the
    mismatched pairs whose policy/reference log-ratio estimates the KL term z0, as in the KTO paper); `label`
    is a bool tensor over the first half."""
    import torch

    n = len(examples)
    rows = [[Example(e.prompt + e.completion, [IGNORE] * len(e.prompt) + e.completion)] for e in examples]
    for i, e in enumerate(examples):
        other = examples[(i + 1) % n].completion if n > 1 else e.completion
        rows.append([Example(e.prompt + other, [IGNORE] * len(e.prompt) + other)])
    batch = collate(rows, pad_id, packed=False)
    batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    return batch


def tokenize_prompts(records: list[dict], tokenizer, template: str, max_len: int) -> tuple[list[PromptItem], DataStats]:
    """Prompts through the template for generation; prompts of max_len tokens or more are dropped and counted."""
    stats = DataStats(records=len(records))
    template = resolve_template(template, tokenizer)
    out: list[PromptItem] = []
    for r in records:
        text, _ = render_prompt(r["prompt"], template, tokenizer)
        ids = _encode(tokenizer, text)
        stats.longest_prompt = max(stats.longest_prompt, len(ids))
        if len(ids) >= max_len:
            stats.dropped_prompt_too_long += 1
            continue
        out.append(PromptItem(ids, r["prompt"], {k: v for k, v in r.items() if k != "prompt"}))
        stats.tokens += len(ids)
    stats.kept = len(out)
    stats.extra["template"] = template
    if not out:
        raise LlmctlError(
            f"every prompt is at least the max length {max_len} tokens (longest "
            f"{stats.longest_prompt} tokens), nothing left to generate from",
            hint="raise --seq-len or shorten the prompts",
        )
    return out, stats
