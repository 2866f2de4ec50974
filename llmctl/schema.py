"""Typed, documented config schemas: the one definition of every command's profile keys.

A schema is a tree of `Section`s whose leaves are `Field`s. Each command's schema lives in
`llmctl/schemas/<command>.py` as `SCHEMA`; profiles are validated against it.

Examples:
    SCHEMA = Section(
        max_new_tokens=Field(int, 128, "tokens to generate at most", ge=1),
        sampling=Section(temperature=Field(float, 1.0, "softmax temperature", ge=0.0)),
    )
    config, errors = SCHEMA.validate({"max_new_tokens": "x"}, source="p.yaml")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}


@dataclass
class Field:
    """One config key: its type, default, one-line meaning and allowed values.

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

    def type_name(self) -> str:
        name = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.type is list and self.item is not None:
            name = f"list[{_TYPE_NAMES.get(self.item, self.item.__name__)}]"
        if self.choices:
            name = "|".join(str(c) for c in self.choices)
        if self.nullable:
            name += " or null"
        return name

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """Return (value, None) when value fits this field, else (None, reason)."""
        if value is None:
            return (None, None) if self.nullable else (None, f"must be {self.type_name()}, got null")
        value, err = _coerce_type(value, self.type, self.item)
        if err:
            return None, f"must be {self.type_name()}, {err}"
        if self.choices is not None and value not in self.choices:
            return None, f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        if self.type in (int, float):
            for bound, ok, word in (
                (self.ge, lambda v, b: v >= b, "at least"),
                (self.gt, lambda v, b: v > b, "greater than"),
                (self.le, lambda v, b: v <= b, "at most"),
                (self.lt, lambda v, b: v < b, "less than"),
            ):
                if bound is not None and not ok(value, bound):
                    return None, f"must be {word} {bound}, got {value}"
        return value, None


def _coerce_type(value: Any, typ: type, item: type | None) -> tuple[Any, str | None]:
    if typ is bool:
        if isinstance(value, bool):
            return value, None
        return None, f"got {type(value).__name__} {value!r}"
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        return None, f"got {type(value).__name__} {value!r}"
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, f"got {type(value).__name__} {value!r}"
    if typ is str:
        if isinstance(value, str):
            return value, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), None  # e.g. a model name like 125m parsed by YAML as text anyway
        return None, f"got {type(value).__name__} {value!r}"
    if typ is list:
        if isinstance(value, str) and item is str:
            value = [v for v in value.split(",") if v]  # `--set lora.targets=q_proj,v_proj`
        if not isinstance(value, list):
            return None, f"got {type(value).__name__} {value!r}"
        if item is None:
            return list(value), None
        out = []
        for v in value:
            cv, err = _coerce_type(v, item, None)
            if err:
                return None, f"item {err}"
            out.append(cv)
        return out, None
    if typ is dict:
        if isinstance(value, dict):
            return dict(value), None
        return None, f"got {type(value).__name__} {value!r}"
    return None, f"unsupported type {typ}"


class Section:
    """A group of fields and sub-sections (one level of YAML mapping).

    Examples:
        Section(lr=Field(float, 3e-4, "peak learning rate", gt=0))
    """

    def __init__(self, help: str = "", **children: "Field | Section"):
        self.help = help
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

    def validate(self, data: Any, prefix: str = "") -> tuple[dict, list[str]]:
        """Check a (partial) nested dict; return (coerced dict, every error found)."""
        errors: list[str] = []
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "top level"
            return {}, [f"{where}: must be a mapping, got {type(data).__name__}"]
        out: dict = {}
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            child = self.children.get(key) if isinstance(key, str) else None
            if child is None:
                known = ", ".join(self.children)
                errors.append(f"unknown key '{dotted}' (known here: {known})")
            elif isinstance(child, Section):
                sub, errs = child.validate(value, dotted + ".")
                out[key] = sub
                errors.extend(errs)
            else:
                cv, err = child.coerce(value)
                if err:
                    errors.append(f"key '{dotted}' {err}")
                else:
                    out[key] = cv
        return out, errors


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
