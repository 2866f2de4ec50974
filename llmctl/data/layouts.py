"""Record layouts: the shapes users' training and calibration records come in, in one table.

A layout is one `Layout` entry in `LAYOUTS`: its fields (with type, optional or not, and other names
accepted for a field), what it can train (`use`: sft responses, preference pairs, unpaired (KTO) examples,
or prompts for on-policy objectives; `serves`: other uses it can feed), its text (for calibration and
decontamination), and for layouts that need it a conversion to the canonical fields of its use (HH-RLHF's
whole dialogues are split into a prompt and two replies). Detection picks, among the layouts whose required
fields a record has and whose types fit, the one with the most required fields (so {prompt, chosen,
rejected} is preference data, not a prompt with extra fields); ties go to the earlier entry. A reader that
knows what it needs (`read_dataset(..., uses=("prompts",))`) falls back to the layouts serving that use, so
{prompt, answer} is a prompt with an answer for GRPO, and a completion record for SFT.

Canonical records by use: sft — the layout's own fields; preference — {prompt, chosen, rejected} with the
prompt a string or a list of chat messages; unpaired — {prompt, completion, label}; prompts — {prompt, …}
with every other field of the record kept (e.g. `answer` for a reward rule).

Examples:
    detect({"instruction": "Add 2+2", "output": "4"}).name          # "alpaca"
    detect({"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": "…"}).name   # "hh-rlhf"
    record_text({"messages": [{"role": "user", "content": "hi"}]})   # "hi"
    records, layout = read_dataset(Path("train.jsonl"))               # every record checked and normalised
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmctl.data.records import DataFile, json_type
from llmctl.errors import LlmctlError, UsageError

TEXT, MESSAGES, BOOL = "text", "messages", "bool"


@dataclass(frozen=True)
class Slot:
    """One field of a layout: its canonical name, other accepted names, type, and whether it may be absent."""

    name: str
    kind: str = TEXT
    optional: bool = False
    aliases: tuple[str, ...] = ()

    def find(self, record: dict) -> str | None:
        """The name under which the record has this field, or None."""
        return next((n for n in (self.name, *self.aliases) if n in record), None)

    def label(self) -> str:
        return "|".join((self.name, *self.aliases)) + ("?" if self.optional else "")

    def problem(self, key: str, value) -> str | None:
        """What is wrong with the field's value, or None."""
        if value is None and self.optional:
            return None
        if self.kind == TEXT and not isinstance(value, str):
            return f"field {key!r} is a JSON {json_type(value)}, not a string"
        if self.kind == BOOL and not isinstance(value, bool):
            return f"field {key!r} is a JSON {json_type(value)}, not true/false"
        if self.kind == MESSAGES:
            return messages_problem(value, key)
        return None


def messages_problem(value, key: str = "messages") -> str | None:
    """What is wrong with a chat message list, or None: it must be a non-empty list of {role, content} strings."""
    if not isinstance(value, list) or not value:
        what = "an empty array" if isinstance(value, list) else f"a JSON {json_type(value)}"
        return f'field {key!r} is {what}, not a list of {{"role", "content"}} objects'
    for number, m in enumerate(value, 1):
        if not isinstance(m, dict):
            return f'{key} {number} is a JSON {json_type(m)}, not a {{"role", "content"}} object'
        for part in ("role", "content"):
            if not isinstance(m.get(part), str):
                return f"{key} {number} has no string {part!r}"
    return None


@dataclass(frozen=True)
class Layout:
    """One record layout: fields, what it trains, its text, and a record to show in hints."""

    name: str
    slots: tuple[Slot, ...]
    use: str  # sft | preference (chosen vs rejected) | unpaired (KTO) | prompts (PPO, GRPO)
    text: Callable[[dict], str]  # all text of a normalised record (calibration, decontamination)
    example: str
    serves: tuple[str, ...] = ()  # other uses it can feed (a preference pair's prompt feeds PPO)
    keep_extra: bool = False  # keep fields the slots do not name (a prompt's `answer` for a reward rule)
    convert: Callable[[dict], dict] | None = None  # → the canonical fields of its use; ValueError(problem)

    @property
    def uses(self) -> tuple[str, ...]:
        return (self.use, *self.serves)

    @property
    def required(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if not s.optional)

    def describe(self) -> str:
        more = ", …" if self.keep_extra else ""
        return f"{self.name} ({', '.join(s.label() for s in self.slots)}{more})"

    def has_fields(self, record: dict) -> bool:
        return all(s.find(record) for s in self.required)

    def type_problem(self, record: dict) -> str | None:
        """A missing or mistyped field, or None."""
        for slot in self.slots:
            key = slot.find(record)
            if key is None:
                if not slot.optional:
                    return f"has no field {slot.name!r}"
                continue
            wrong = slot.problem(key, record[key])
            if wrong:
                return wrong
        return None

    def problem(self, record: dict) -> str | None:
        """Why the record does not fit this layout (a missing or mistyped field, a failed conversion), or None."""
        wrong = self.type_problem(record)
        if wrong is None and self.convert is not None:
            try:
                self.convert(self._fields(record))
            except ValueError as exc:
                return str(exc)
        return wrong

    def _fields(self, record: dict) -> dict:
        out = {k: v for k, v in record.items() if v is not None} if self.keep_extra else {}
        for slot in self.slots:
            key = slot.find(record)
            if key is not None:
                out.pop(key, None)
                if record[key] is not None:
                    out[slot.name] = record[key]
        return out

    def normalize(self, record: dict) -> dict:
        """The record under the canonical field names of its use (absent optional fields left out)."""
        out = self._fields(record)
        return self.convert(out) if self.convert is not None else out


def _join(*parts) -> str:
    return "\n".join(p for p in parts if isinstance(p, str) and p)


def _prompt_text(prompt) -> str:
    return _join(*(m["content"] for m in prompt)) if isinstance(prompt, list) else prompt


# HH-RLHF (Anthropic) dialogues: "\n\nHuman: …\n\nAssistant: …" turns, chosen and rejected sharing all but the last
# reply. Two pairs of the harmless-base test split have extra turns inside a reply, so the prompt is cut at the last
# assistant turn of the text both share, not of each text.
HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def dialogue_messages(text: str) -> list[dict]:
    """An HH-RLHF dialogue as chat messages (Human → user, Assistant → assistant; text before the first turn is
    a user message).

    Examples:
        dialogue_messages("\\n\\nHuman: hi\\n\\nAssistant: hello")   # [{"role": "user", …}, {"role": "assistant", …}]
    """
    parts = _HH_TURN.split(text)
    out = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    for who, content in zip(parts[1::2], parts[2::2]):
        out.append({"role": "user" if who == "Human" else "assistant", "content": content.strip()})
    return out


def split_hh(record: dict) -> dict:
    """{chosen, rejected} whole dialogues → {prompt: messages, chosen: reply, rejected: reply}.

    Examples:
        split_hh({"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: go"})
    """
    chosen, rejected = record["chosen"], record["rejected"]
    same = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    cut = chosen.rfind(HH_ASSISTANT, 0, same)
    if cut < 0:
        raise ValueError("has chosen and rejected dialogues that share no '\\n\\nAssistant:' turn")
    start = cut + len(HH_ASSISTANT)
    prompt = dialogue_messages(chosen[:cut])
    if not prompt:
        raise ValueError("has an HH-RLHF dialogue with nothing before its last '\\n\\nAssistant:' turn")
    return {"prompt": prompt, "chosen": chosen[start:].strip(), "rejected": rejected[start:].strip()}


def chat_pair(record: dict) -> dict:
    """Chat-message preference pairs → {prompt: messages, chosen: reply, rejected: reply}.

    The reply is each list's last message (an assistant's); the prompt is the explicit `prompt` messages, else
    (and then also) the messages before the reply, which chosen and rejected must share.
    """
    chosen, rejected = record["chosen"], record["rejected"]
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1]["role"] != "assistant":
            raise ValueError(
                f"has a {key} list whose last message is a {msgs[-1]['role']!r} message, not the assistant's reply"
            )
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("has chosen and rejected conversations that differ before their last message")
    prompt = list(record.get("prompt") or []) + chosen[:-1]
    if not prompt:
        raise ValueError("has no prompt: give a 'prompt' message list or the conversation before the replies")
    return {"prompt": prompt, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "alpaca",
        (Slot("instruction"), Slot("input", optional=True), Slot("output")),
        "sft",
        lambda r: _join(r["instruction"], r.get("input"), r["output"]),
        '{"instruction": "…", "input": "", "output": "…"}',
    ),
    Layout(
        "chat",
        (Slot("messages", MESSAGES),),
        "sft",
        lambda r: _join(*(m["content"] for m in r["messages"])),
        '{"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}',
    ),
    Layout("text", (Slot("text"),), "sft", lambda r: r["text"], '{"text": "…"}'),
    Layout(
        "preference",
        (Slot("prompt"), Slot("chosen"), Slot("rejected")),
        "preference",
        lambda r: _join(r["prompt"], r["chosen"]),
        '{"prompt": "…", "chosen": "…", "rejected": "…"}',
        serves=("prompts",),
    ),
    Layout(
        "hh-rlhf",
        (Slot("chosen"), Slot("rejected")),
        "preference",
        lambda r: _join(_prompt_text(r["prompt"]), r["chosen"]),
        '{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": "\\n\\nHuman: …\\n\\nAssistant: …"}',
        serves=("prompts",),
        convert=split_hh,
    ),
    Layout(
        "chat-preference",
        (Slot("prompt", MESSAGES, optional=True), Slot("chosen", MESSAGES), Slot("rejected", MESSAGES)),
        "preference",
        lambda r: _join(_prompt_text(r["prompt"]), r["chosen"]),
        '{"chosen": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}], "rejected": […]}',
        serves=("prompts",),
        convert=chat_pair,
    ),
    Layout(
        "completion",
        (Slot("prompt"), Slot("completion", optional=True, aliases=("output", "response"))),
        "sft",
        lambda r: _join(r["prompt"], r.get("completion")),
        '{"prompt": "…", "completion": "…"}',
    ),
    Layout(
        "kto",
        (Slot("prompt"), Slot("completion"), Slot("label", BOOL)),
        "unpaired",
        lambda r: _join(r["prompt"], r["completion"]),
        '{"prompt": "…", "completion": "…", "label": true}',
        serves=("prompts",),
    ),
    Layout(
        "prompts",
        (Slot("prompt"),),
        "prompts",
        lambda r: r["prompt"],
        '{"prompt": "…", "answer": "…"}',
        keep_extra=True,
    ),
)


def names() -> list[str]:
    """The layout names, in table order (e.g. for a --format choice)."""
    return [layout.name for layout in LAYOUTS]


def get(name: str) -> Layout:
    """The layout called name; an unknown name is a usage error listing the known ones."""
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise UsageError(f"unknown data format {name!r}", hint=f"use auto or one of: {', '.join(names())}")


def known() -> str:
    """The known layouts for messages: 'alpaca (instruction, input?, output), chat (messages), …'."""
    return ", ".join(layout.describe() for layout in LAYOUTS)


def _fields(record: dict) -> str:
    return ", ".join(sorted(record)[:12]) or "none"


def _error(problem: str, hint: str, source: DataFile | None, where: str | None) -> LlmctlError:
    if source is not None:
        return source.error(problem, hint=hint, where=where)
    return LlmctlError(f"record{' ' + where if where else ''} {problem}", hint=hint)


def detect(
    record,
    among: tuple[str, ...] | None = None,
    source: DataFile | None = None,
    where: str | None = None,
    hint: str | None = None,
) -> Layout:
    """The layout of one record (optionally only among some layouts); errors name the fields found.

    `hint` replaces the default fix in messages (which lists the layouts or shows an example).

    Examples:
        detect({"prompt": "p", "chosen": "a", "rejected": "b"}).use    # "preference"
        detect(row, among=("completion", "chat"), source=f, where="line 3")
    """
    table = [layout for layout in LAYOUTS if among is None or layout.name in among]
    choices = ", ".join(layout.describe() for layout in table)
    if not isinstance(record, dict):
        raise _error(f"is a JSON {json_type(record)}, not an object", hint or f"use one of: {choices}", source, where)
    candidates = [layout for layout in table if layout.has_fields(record)]
    if not candidates:
        raise _error(
            f"has none of the known record layouts (fields: {_fields(record)})",
            hint or f"use one of: {choices}",
            source,
            where,
        )
    best = max(
        candidates, key=lambda layout: (layout.type_problem(record) is None, len(layout.required), -table.index(layout))
    )
    fitting = [layout for layout in candidates if layout.problem(record) is None]
    if not fitting:
        raise _error(
            f"does not fit the {best.name} layout: {best.problem(record)}",
            hint or f"{best.name} records look like {best.example}",
            source,
            where,
        )
    return max(fitting, key=lambda layout: (len(layout.required), -table.index(layout)))


def fit(
    record, layout: Layout, source: DataFile | None = None, where: str | None = None, first: str = "the first record"
) -> dict:
    """The record normalised to a layout it must have (every record of a file has the first one's layout)."""
    problem = layout.problem(record) if isinstance(record, dict) else f"is a JSON {json_type(record)}"
    if problem is None:
        return layout.normalize(record)
    fields = _fields(record) if isinstance(record, dict) else "none"
    raise _error(
        f"does not fit the {layout.name} layout of {first}: {problem} (fields: {fields})",
        f"give every record the same layout, e.g. {layout.example}",
        source,
        where,
    )


def record_text(record, source: DataFile | None = None, where: str | None = None) -> str:
    """The text of one record in any known layout (a bare JSON string is its own text).

    Examples:
        record_text({"prompt": "Q?", "output": "A."})    # "Q?\\nA."
    """
    if isinstance(record, str):
        return record
    layout = detect(record, source=source, where=where)
    return layout.text(layout.normalize(record))


def _detect_for(record, uses: tuple[str, ...] | None, source: DataFile, where: str) -> Layout:
    """The record's layout; when it serves none of `uses`, the best layout that does, fits and reads as many
    required fields (never one that would ignore some: preference pairs do not become prompts without replies)."""
    detected = detect(record, source=source, where=where)
    if uses is None or set(detected.uses) & set(uses):
        return detected
    fits = [
        layout
        for layout in LAYOUTS
        if set(layout.uses) & set(uses)
        and layout.problem(record) is None
        and len(layout.required) >= len(detected.required)
    ]
    if not fits:
        return detected  # the caller says what its use needs
    return max(fits, key=lambda layout: (len(layout.required), -LAYOUTS.index(layout)))


def read_dataset(
    path: Path,
    layout: str = "auto",
    what: str = "data file",
    option: str | None = "--data",
    uses: tuple[str, ...] | None = None,
) -> tuple[list[dict], Layout]:
    """Every record of a data file, normalised to one layout: detected from the first record, or given.

    `uses` (e.g. ("prompts",)) says what the caller trains: a record whose detected layout serves none of them
    is read with a layout that does, when one fits ({prompt, answer} is completion data for SFT, prompts for GRPO).

    Examples:
        records, layout = read_dataset(Path("alpaca_2000.json"))     # layout.name == "alpaca"
        records, layout = read_dataset(Path("problems.jsonl"), uses=("prompts",))   # layout.name == "prompts"
    """
    wanted = None if layout == "auto" else get(layout)
    source = DataFile(
        path, what=what, option=option, fmt="records", example=wanted.example if wanted else LAYOUTS[0].example
    ).check()
    out: list[dict] = []
    chosen: Layout | None = None
    first = ""
    for rec in source.records():
        if chosen is None:
            first = rec.where
            detected = _detect_for(rec.value, uses, source, rec.where)
            chosen = detected
            if wanted is not None and detected is not wanted:
                if wanted.problem(rec.value) is not None:
                    raise source.error(
                        f"looks like {detected.name} data, not {wanted.name}",
                        where=rec.where,
                        hint=f"set data.format to auto or {detected.name}",
                    )
                chosen = wanted
        out.append(fit(rec.value, chosen, source, rec.where, first=first))
    return out, chosen
