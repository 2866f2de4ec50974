"""Typed, documented config schemas: the one definition of every command's profile keys.

A schema is a tree of `Section`s whose leaves are `Field`s. Each command's schema lives in
`llmctl/schemas/<command>.py` as `SCHEMA`; profiles are validated against it.

Examples:
    SCHEMA = Section(
        max_new_tokens=Field(int, 128, "tokens to generate at most", ge=1),
        sampling=Section(temperature=Field(float, 1.0, "softmax temperature", ge=0.0)),
    )
    config, problems = SCHEMA.validate({"max_new_tokens": "x"})   # problems[0].text == "must be int, not text"
"""

from __future__ import annotations

import copy
import difflib
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the dtype names a user may type (the one table); short forms are stored as the long ones
from llmctl.config.dtypes import DTYPE_ALIASES, DTYPES

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}

# The devices a user may name; `cuda:N` (a GPU index) too.
DEVICES = ["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one key: `text` says what would be right ("must be at most 1").

    `others` names further keys a rule relates this one to (their values are shown with the message).

    Examples:
        Problem("top_p", 1.5, "must be greater than 0 and at most 1")
    """

    key: str
    value: Any
    text: str
    others: tuple[str, ...] = ()


@dataclass
class Field:
    """One config key: its type, default, one-line meaning and allowed values.

    `choices` also applies to each item of a list; `aliases` maps other spellings to a choice before the check;
    `check` is a rule the bounds cannot say, described by `rule` ("a count or a fraction in (0, 1)").

    Examples:
        Field(float, 0.9, "nucleus sampling mass", gt=0.0, le=1.0)
        Field(str, "auto", "device to run on", choices=["auto", "cpu", "cuda"])
        Field(list, None, "stop sequences", item=str, nullable=True)
    """

    type: type
    default: Any
    help: str
    choices: list | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nullable: bool = False
    item: type | None = None  # element type for lists
    aliases: dict | None = None
    check: Callable[[Any], bool] | None = None
    rule: str | None = None

    def type_name(self) -> str:
        name = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.type is list and self.item is not None:
            name = f"list[{_TYPE_NAMES.get(self.item, self.item.__name__)}]"
        if self.choices and self.type is not list:
            name = "|".join(str(c) for c in self.choices)
        if self.rule:
            name = self.rule
        if self.nullable:
            name += " or null"
        return name

    def allowed(self) -> str:
        """What the allowed values are, in words ("one of a, b", "greater than 0 and at most 1"); "" when any."""
        if self.rule:
            return self.rule
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
            if self.aliases:
                text += f" (or {', '.join(self.aliases)})"
            return f"{text} for each item" if self.type is list else text
        words = [
            f"{word} {_num(bound)}"
            for bound, word in (
                (self.ge, "at least"),
                (self.gt, "greater than"),
                (self.le, "at most"),
                (self.lt, "less than"),
            )
            if bound is not None
        ]
        return " and ".join(words)

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """Return (value, None) when value fits this field, else (None, what would be right)."""
        if value is None:
            return (None, None) if self.nullable else (None, f"must be {self.type_name()}, not null")
        raw = value
        value, bad_type = _coerce_type(value, self.type, self.item)
        if self._non_finite(raw if bad_type else value):
            return None, self._finite_rule()
        if bad_type:
            return None, f"must be {self.type_name()}, not {bad_type}"
        if self.aliases:
            value = [self.aliases.get(v, v) for v in value] if self.type is list else self.aliases.get(value, value)
        if not self._fits(value):
            return None, f"must be {self.allowed()}"
        return value, None

    def _non_finite(self, value: Any) -> bool:
        """Whether a float key (or a float list's item) is inf, -inf or nan: no key means anything by them, and
        they pass every bound on one side (`--rope-factor inf` is "greater than 1"), to fail later as a crash."""
        if self.type is float:
            return _is_non_finite(value)
        if self.type is list and self.item is float and isinstance(value, list):
            return any(_is_non_finite(v) for v in value)
        return False

    def _finite_rule(self) -> str:
        allowed = self.allowed()
        what = "finite numbers" if self.type is list else "a finite number"
        return f"must be {what} ({allowed})" if allowed else f"must be {what}"

    def _fits(self, value: Any) -> bool:
        if self.choices is not None:
            items = value if self.type is list else [value]
            if any(v not in self.choices for v in items):
                return False
        if self.type in (int, float):
            for bound, ok in (
                (self.ge, operator.ge),
                (self.gt, operator.gt),
                (self.le, operator.le),
                (self.lt, operator.lt),
            ):
                if bound is not None and not ok(value, bound):
                    return False
        return self.check is None or bool(self.check(value))


def _is_non_finite(value: Any) -> bool:
    """inf, -inf or nan: as a number, or as the text a user typed (YAML reads `inf` as text, `.inf` as a float)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _num(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def dtype_field(default: str, help: str, auto: bool = True) -> Field:
    """A dtype key: float32|bfloat16|float16 (and auto), fp32|bf16|fp16 accepted and stored in the long form.

    Examples:
        dtype=dtype_field("auto", "weights dtype")
    """
    return Field(str, default, help, choices=(["auto"] if auto else []) + DTYPES, aliases=dict(DTYPE_ALIASES))


def device_field(default: str = "auto", help: str = "device to run on") -> Field:
    """A device key: auto, cpu, cuda, cuda:N or mps (whether it exists is checked when the model loads).

    Examples:
        device=device_field()
    """
    return Field(str, default, help, check=_is_device, rule="auto, cpu, cuda, cuda:N or mps")


def _is_device(value: str) -> bool:
    kind, _, index = value.partition(":")
    return value in DEVICES or (kind == "cuda" and index.isdigit())


def _kind(value: Any) -> str:
    """How a wrong value reads in a message ("text", "a list")."""
    if isinstance(value, bool):
        return "true/false"
    return {str: "text", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _number(text: str) -> Any:
    """`1024` → 1024, `0.5` → 0.5; anything else stays text (and is reported as such)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _coerce_type(value: Any, typ: type, item: type | None) -> tuple[Any, str | None]:
    """(value in `typ`, None), or (None, what the value is instead)."""
    if typ is bool:
        return (value, None) if isinstance(value, bool) else (None, _kind(value))
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        return None, _kind(value)
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, _kind(value)
    if typ is str:
        if isinstance(value, str):
            return value, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), None  # e.g. a model name like 125m parsed by YAML as text anyway
        return None, _kind(value)
    if typ is list:
        if isinstance(value, str) and item is str:
            value = [v for v in value.split(",") if v]  # `--set lora.targets=q_proj,v_proj`
        elif isinstance(value, str) and item in (int, float):  # `--set passkey.context_lengths=1024,2048`
            value = [_number(v.strip()) for v in value.strip("[] ").split(",") if v.strip()]
        if not isinstance(value, list):
            return None, _kind(value)
        if item is None:
            return list(value), None
        out = []
        for v in value:
            cv, err = _coerce_type(v, item, None)
            if err:
                return None, f"a list holding {err}"
            out.append(cv)
        return out, None
    if typ is dict:
        return (dict(value), None) if isinstance(value, dict) else (None, _kind(value))
    return None, f"of unsupported type {typ}"


@dataclass(frozen=True)
class Rule:
    """A rule between keys of one schema, checked on the resolved config.

    Examples:
        Rule(("perplexity.stride", "perplexity.seqlen"), lambda stride, seqlen: stride <= seqlen,
             "perplexity.stride must be at most perplexity.seqlen")
    """

    keys: tuple[str, ...]
    test: Callable[..., bool]
    text: str
    nullable: bool = False  # test it with None values too (else a rule with an unset key is skipped)


class Section:
    """A group of fields and sub-sections (one level of YAML mapping); `rules` relate keys of the whole tree.

    Examples:
        Section(lr=Field(float, 3e-4, "peak learning rate", gt=0))
    """

    def __init__(self, help: str = "", *, rules: tuple[Rule, ...] = (), **children: Field | Section):
        self.help = help
        self.rules = tuple(rules)
        self.children: dict[str, Field | Section] = children

    def defaults(self) -> dict:
        """The built-in defaults as a nested dict."""
        out = {}
        for key, child in self.children.items():
            out[key] = child.defaults() if isinstance(child, Section) else copy.deepcopy(child.default)
        return out

    def keys(self, prefix: str = "") -> dict[str, Field]:
        """Every leaf as a dotted key → Field."""
        out: dict[str, Field] = {}
        for key, child in self.children.items():
            dotted = f"{prefix}{key}"
            if isinstance(child, Section):
                out.update(child.keys(dotted + "."))
            else:
                out[dotted] = child
        return out

    def field(self, dotted: str) -> Field | None:
        return self.keys().get(dotted)

    def validate(self, data: Any, prefix: str = "") -> tuple[dict, list[Problem]]:
        """Check a (partial) nested dict; return (coerced dict, every problem found)."""
        if not isinstance(data, dict):
            return {}, [Problem(prefix.rstrip(".") or "(top level)", data, f"must be a mapping, not {_kind(data)}")]
        out: dict = {}
        problems: list[Problem] = []
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            child = self.children.get(key) if isinstance(key, str) else None
            if child is None:
                problems.append(Problem(dotted, value, self._unknown(str(key))))
            elif isinstance(child, Section):
                sub, found = child.validate(value, dotted + ".")
                out[key] = sub
                problems.extend(found)
            else:
                cv, err = child.coerce(value)
                if err:
                    problems.append(Problem(dotted, value, err))
                else:
                    out[key] = cv
        return out, problems

    def _unknown(self, key: str) -> str:
        close = difflib.get_close_matches(key, list(self.children), n=3, cutoff=0.6)
        if close:
            return f"unknown key (did you mean: {', '.join(close)}?)"
        return f"unknown key (known here: {', '.join(self.children)})"

    def check_rules(self, config: dict) -> list[Problem]:
        """The rules between keys that a resolved config breaks."""
        problems = []
        for rule in self.rules:
            values = [get_dotted(config, key) for key in rule.keys]
            if (rule.nullable or None not in values) and not rule.test(*values):
                problems.append(Problem(rule.keys[0], values[0], rule.text, rule.keys[1:]))
        return problems


def get_dotted(data: dict, dotted: str) -> Any:
    """The value at a.b.c in nested dicts, or None."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def leaves(data: dict, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested dict as dotted key → value.

    Examples:
        leaves({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """Merge `over` into a copy of `base`, recursing into nested dicts.

    Examples:
        deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set a.b.c = value inside nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
