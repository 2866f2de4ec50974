"""Finetuning data: read, detect the format, render with a template, tokenize with response-only labels, pack.

Layouts (alpaca, chat, text, preference, completion) are detected from the records' fields by the
one table in llmctl/data/layouts.py; reading and its error messages are llmctl/data/records.py's.

Examples:
    records, kind = read_records(Path("alpaca_2000.json"))
    examples, stats = tokenize_sft(records, kind, tokenizer, template="auto", max_len=512)
    rows = pack(examples, max_len=512, seed=1)           # list of lists of example indices
    batch = collate([[examples[i] for i in row] for row in rows[:8]], pad_id=2, packed=True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.data.chat_templates import chatml
from llmctl.errors import LlmctlError

IGNORE = -100

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass
class Example:
    """One tokenized example: ids and labels (-100 on prompt tokens) of equal length."""

    ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PrefExample:
    """One preference pair: prompt ids, chosen and rejected response ids."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass
class DataStats:
    """What happened to the records on the way to training examples."""

    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_prompt_too_long: int = 0
    dropped_empty: int = 0
    longest_prompt: int = 0
    tokens: int = 0
    response_tokens: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


def read_records(path: Path, kind: str = "auto", uses: tuple[str, ...] | None = None) -> tuple[list[dict], str]:
    """Read a JSONL, JSON or Parquet data file; detect (or check) its layout (llmctl/data/layouts.py).

    Every record is checked against the layout of the first one and returned under the layout's
    canonical field names (a {prompt, output} record becomes {prompt, completion}). `uses` says what the
    objective trains on (a layout serving it is preferred when the record fits one).

    Examples:
        records, kind = read_records(Path("alpaca_2000.json"))     # kind == "alpaca"
    """
    from llmctl.data.layouts import read_dataset

    records, layout = read_dataset(Path(path), kind, what="data file", option="--data", uses=uses)
    return records, layout.name


def detect_kind(records: list[dict], path: Path | str = "data") -> str:
    """The layout name of the first record; an error names the fields found and the known layouts."""
    from llmctl.data.layouts import detect
    from llmctl.data.records import DataFile

    return detect(records[0], source=DataFile(path, what="data file"), where="record 1").name


def resolve_template(template: str, tokenizer) -> str:
    """auto → the model's own chat template when it has one, else alpaca."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "model" if has else "alpaca"
    if template == "model" and not has:
        raise LlmctlError(
            "data.template is 'model' but this model's tokenizer has no chat template",
            hint="use data.template=chatml or alpaca",
        )
    return template


def _alpaca_prompt(instruction: str, inp: str) -> str:
    if inp and inp.strip():
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=inp)
    return ALPACA_PROMPT.format(instruction=instruction)


def segments(record: dict, kind: str, template: str, tokenizer) -> list[tuple[str, bool]]:
    """The record as (text, trained) pieces in order: prompts untrained, responses trained."""
    eos = tokenizer.eos_token or ""
    if kind == "completion":  # a prompt and its answer: trained like an instruction without input
        record, kind = {"instruction": record["prompt"], "output": record.get("completion") or ""}, "alpaca"
    if kind == "text":
        return [(str(record["text"]) + eos, True)] if str(record["text"]).strip() else []
    if kind == "alpaca":
        if not str(record["output"] or "").strip():
            return []
        messages = [
            {
                "role": "user",
                "content": str(record["instruction"])
                + ("\n\n" + str(record["input"]) if record.get("input") and template != "alpaca" else ""),
            },
            {"role": "assistant", "content": str(record["output"])},
        ]
        if template == "alpaca":
            return [
                (_alpaca_prompt(str(record["instruction"]), str(record.get("input") or "")), False),
                (str(record["output"]) + eos, True),
            ]
    elif kind == "chat":
        from llmctl.data.layouts import messages_problem

        messages = record["messages"]
        problem = messages_problem(messages)
        if problem:
            raise LlmctlError(f"a chat record's {problem}", hint='each message needs string "role" and "content"')
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return []
    else:
        raise LlmctlError(
            f"{kind!r} data cannot be used for supervised finetuning",
            hint="use --objective dpo or reward for preference data",
        )
    if template == "alpaca":
        out, history = [], ""
        for m in messages:
            if m["role"] == "assistant":
                out += [(_alpaca_prompt(history.strip(), ""), False), (m["content"] + eos, True)]
                history = ""
            else:
                history += m["content"] + "\n\n"
        return out
    render = (
        chatml
        if template == "chatml"
        else (lambda msgs, gen: tokenizer.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False))
    )
    out, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], True) if i else ""
        full = render(messages[: i + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise LlmctlError(
                "the chat template does not render conversations as growing prefixes",
                hint="use data.template=chatml or alpaca",
            )
        out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return [(t, trained) for t, trained in out if t]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_sft(
    records: list[dict], kind: str, tokenizer, template: str, max_len: int
) -> tuple[list[Example], DataStats]:
    """Tokenize records into examples with labels only on response tokens; truncate to max_len."""
    stats = DataStats(records=len(records))
    template = resolve_template(template, tokenizer)
    out: list[Example] = []
    for record in records:
        ids: list[int] = []
        labels: list[int] = []
        first_prompt = None
        for text, trained in segments(record, kind, template, tokenizer):
            piece = _encode(tokenizer, text)
            if not trained and first_prompt is None:
                first_prompt = len(piece)
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        if first_prompt is not None:
            stats.longest_prompt = max(stats.longest_prompt, first_prompt)
        if not any(lab != IGNORE for lab in labels[1:]):
            stats.dropped_empty += 1
            continue
        if len(ids) > max_len:
            ids, labels = ids[:max_len], labels[:max_len]
            if not any(lab != IGNORE for lab in labels[1:]):
                stats.dropped_prompt_too_long += 1
                continue
            stats.truncated += 1
        out.append(Example(ids, labels))
        stats.tokens += len(ids)
        stats.response_tokens += sum(1 for lab in labels[1:] if lab != IGNORE)
    stats.kept = len(out)
    stats.extra["template"] = template
    if not out:
        if stats.dropped_prompt_too_long:
            raise LlmctlError(
                f"every example's prompt is at least the max length {max_len} tokens "
                f"(longest prompt {stats.longest_prompt} tokens), nothing left to train on",
                hint="raise --seq-len or shorten the prompts",
            )
        raise LlmctlError(
            "the dataset is empty after filtering (no example has response tokens)",
            hint="check the data has non-empty responses",
        )
    return out, stats


def render_prompt(prompt, template: str, tokenizer) -> tuple[str, str]:
    """(the prompt through the template, what follows a response: eos / end of turn) for a string prompt or a
    list of chat messages (the conversation before the reply); `template` is resolved (not auto).

    Examples:
        render_prompt("2+2?", "chatml", tok)
        # ("<|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n", "<|im_end|>\\n")
    """
    if isinstance(prompt, list):
        segs = segments({"messages": [*prompt, {"role": "assistant", "content": "\0"}]}, "chat", template, tokenizer)
    else:
        segs = segments({"instruction": prompt, "output": "\0"}, "alpaca", template, tokenizer)
    return "".join(text for text, _ in segs[:-1]), segs[-1][0].split("\0", 1)[1]


def tokenize_pref(records: list[dict], tokenizer, template: str, max_len: int) -> tuple[list[PrefExample], DataStats]:
    """Tokenize preference pairs; the prompt (text or chat messages) goes through the template, responses end with
    eos (or the template's end of turn)."""
    stats = DataStats(records=len(records))
    template = resolve_template(template, tokenizer)
    out: list[PrefExample] = []
    for r in records:
        if not isinstance(r.get("prompt"), (str, list)) or not all(
            isinstance(r.get(k), str) for k in ("chosen", "rejected")
        ):
            stats.dropped_empty += 1
            continue
        prompt_text, tail = render_prompt(r["prompt"], template, tokenizer)
        prompt = _encode(tokenizer, prompt_text)
        chosen = _encode(tokenizer, r["chosen"] + tail)
        rejected = _encode(tokenizer, r["rejected"] + tail)
        stats.longest_prompt = max(stats.longest_prompt, len(prompt))
        if len(prompt) >= max_len - 1:
            stats.dropped_prompt_too_long += 1
            continue
        room = max_len - len(prompt)
        if len(chosen) > room or len(rejected) > room:
            stats.truncated += 1
            chosen, rejected = chosen[:room], rejected[:room]
        if not chosen or not rejected:
            stats.dropped_empty += 1
            continue
        out.append(PrefExample(prompt, chosen, rejected))
        stats.tokens += 2 * len(prompt) + len(chosen) + len(rejected)
        stats.response_tokens += len(chosen) + len(rejected)
    stats.kept = len(out)
    stats.extra["template"] = template
    if not out:
        if stats.dropped_prompt_too_long:
            raise LlmctlError(
                f"every pair's prompt is longer than the max length {max_len} tokens "
                f"(longest prompt {stats.longest_prompt} tokens)",
                hint="raise --seq-len or shorten the prompts",
            )
        raise LlmctlError(
            "the preference dataset is empty after filtering", hint="each line needs string prompt, chosen and rejected"
        )
    return out, stats


def split_eval(items: list, eval_split: float) -> tuple[list, list]:
    """Hold out the last items: eval_split < 1 is a fraction, >= 1 a count; at least one stays for training."""
    n = len(items)
    k = int(round(n * eval_split)) if eval_split < 1 else int(eval_split)
    k = max(0, min(k, n - 1))
    if eval_split > 0 and k == 0 and n >= 2:
        k = 1
    return (items[: n - k], items[n - k :]) if k else (items, [])


def pack(examples: list[Example], max_len: int, seed: int | None) -> list[list[int]]:
    """Group example indices into rows of at most max_len tokens (best fit, longest first).

    With a seed the order of the resulting rows is shuffled; examples never cross rows.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i])
        best = -1
        for r, free in enumerate(room):
            if n <= free and (best < 0 or free < room[best]):
                best = r
                if free == n:
                    break
        if best < 0:
            rows.append([i])
            room.append(max_len - n)
        else:
            rows[best].append(i)
            room[best] -= n
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return rows


def collate(rows: list[list[Example]], pad_id: int, packed: bool):
    """Tensors for one micro-batch of rows (each row one or more examples, right-padded).

    Packed rows get per-example position_ids and a 4-D (batch, 1, q, k) boolean block-diagonal causal
    mask (True = attend), so no token attends across examples; unpacked rows get a 2-D padding mask.
    """
    import torch

    width = max(sum(len(e) for e in row) for row in rows)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k, ex in enumerate(row):
            n = len(ex)
            ids[r, at : at + n] = torch.tensor(ex.ids)
            lab = torch.tensor(ex.labels)
            lab[0] = IGNORE  # the first token of an example is never predicted from the previous one
            labels[r, at : at + n] = lab
            pos[r, at : at + n] = torch.arange(n)
            seg[r, at : at + n] = k
            at += n
    batch = {"input_ids": ids, "labels": labels, "tokens": int((seg >= 0).sum())}
    if packed:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = seg[:, :, None] == seg[:, None, :]
        real = (seg >= 0)[:, None, :]
        mask = same & real & causal
        mask |= torch.eye(width, dtype=torch.bool)  # padding queries see themselves: no all-masked rows
        batch["attention_mask"] = mask[:, None]
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = (seg >= 0).long()
    return batch


def collate_pairs(pairs: list[PrefExample], pad_id: int):
    """Chosen rows then rejected rows, right-padded, labels only on the responses."""
    rows = [[Example(p.prompt + p.chosen, [IGNORE] * len(p.prompt) + p.chosen)] for p in pairs]
    rows += [[Example(p.prompt + p.rejected, [IGNORE] * len(p.prompt) + p.rejected)] for p in pairs]
    return collate(rows, pad_id, packed=False)
