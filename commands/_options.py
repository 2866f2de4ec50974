"""Options whose help comes from the schema: one wording for `--help`, the docs pages and the profile keys.

A command says which schema its options map to with `@schema_options(command, OPTIONS)`; every option in the
map then gets its help from the schema Field: the field's one-line meaning (or the option's own `help=`, a
CLI-side wording), then its allowed values and built-in default (`(at least 1; default 256)`), and shell
completion of its choices. The shared options in `_common.py` carry no help of their own: `--seed` reads
"seed for picking windows" in `quantize` and "seed of the document-level train/val split" in `tokenize encode`,
each from its command's schema. `llmctl.cli._docs` writes `docs/commands/*.md` from the same click commands.

Examples:
    @schema_options("generate", OPTIONS)
    def generate(ctx: typer.Context, top_p: Annotated[float | None, typer.Option("--top-p")] = None): ...
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, get_args, get_origin

from rich.markup import escape
from typer.models import OptionInfo

from llmctl.config.schema import Field

# Where `schema_options` leaves (command, options) on a command function; typer copies it onto the click
# command's callback (functools.update_wrapper), so `_docs` finds each command's schema and keys there.
SCHEMA_ATTR = "llmctl_schema"
# names that stay lower-case at the start of a help text
_LOWER_NAMES = {"llmctl", "auto", "gguf", "hf", "inc", "openvino", "bnb", "vllm", "torchrun", "lm-eval"}


def schema_field(command: str, key: str) -> Field:
    """The schema Field behind an option (`schema_field("tokenize", "train.type")`): its choices, its rule."""
    from llmctl.config.profiles import schema_for

    field = schema_for(command).field(key)
    if field is None:
        raise KeyError(f"{command} has no key {key}")
    return field


def option_key(options: Mapping[str, Any], name: str) -> str | None:
    """The dotted profile key a python parameter maps to (`seed` → `calib.seed`), or None."""
    spec = options.get(name)
    if spec is None:
        return None
    return spec if isinstance(spec, str) else spec[0]


def show_default(value: Any) -> str:
    """A default as a profile would spell it (null, true, [a, b], 0.5)."""
    from llmctl.config.profiles import show_value

    return show_value(value)


def field_help(field: Field, lead: str | None = None) -> str:
    """An option's help from its schema field: `Lead (allowed; default X).`

    `lead` is the option's own wording (else the field's help, capitalised); a null default is left out, since
    the field's help says what null means.

    Examples:
        field_help(Field(int, 256, "tokens to generate at most", ge=1))   # "Tokens to … (at least 1; default 256)."
    """
    text = (lead or field.help).strip().rstrip(".")
    first = text.split(" ", 1)[0].removesuffix(":")
    if first.replace("-", "").isalpha() and first.islower() and first not in _LOWER_NAMES:
        text = text[:1].upper() + text[1:]
    allowed = field.allowed()
    if field.choices and not field.rule and all(str(c) in text for c in field.choices):
        allowed = ""  # the meaning already names every choice (the list still drives completion and the check)
    facts = [allowed] if allowed else []
    if field.default is not None and field.default != []:
        facts.append(f"default {show_default(field.default)}")
    text = f"{text} ({'; '.join(facts)})." if facts else f"{text}."
    return escape(text)  # `default [hellaswag]` is text, not rich markup (`_docs` reads it back with `unescape`)


def unescape(help_text: str) -> str:
    """A help text as a reader sees it in --help (without rich's markup escapes)."""
    return help_text.replace("\\[", "[")


def completer(values: list[str]) -> Callable[[str], list[str]]:
    """Shell completion of a fixed list of values."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _from_field(info: OptionInfo, field: Field) -> OptionInfo:
    info = copy.copy(info)
    info.help = field_help(field, info.help)
    if field.choices and info.autocompletion is None:
        info.autocompletion = completer([str(c) for c in field.choices] + list(field.aliases or {}))
    return info


def schema_options(command: str, options: dict[str, Any]) -> Callable:
    """Give each mapped option of a command function its help and completion from `command`'s schema.

    Rewrites the function's signature (Typer reads options from it) with a copy of each mapped option's
    `typer.Option` that carries the schema's help; unmapped options are left as declared. A parameter named
    like a top-level schema key maps to it by itself, so `options` holds only the renamed ones (`awq` →
    `openvino.awq`); the identity entries are added to `options` here, so `resolve(ctx, command, options)`
    sees every mapped parameter.

    Examples:
        @schema_options("quantize", OPTIONS)
        def quantize(ctx: typer.Context, seed: SeedOpt = None): ...
    """
    from llmctl.config.profiles import schema_for

    schema = schema_for(command)

    def wrap(func: Callable) -> Callable:
        sig = inspect.signature(func, eval_str=True)
        params = []
        for param in sig.parameters.values():
            if param.name not in options and schema.field(param.name) is not None:
                options[param.name] = param.name  # named like its key: no entry needed in the command's map
            key = option_key(options, param.name)
            field = schema.field(key) if key else None
            ann = param.annotation
            if key and field is None:
                raise KeyError(f"{command}: option {param.name} maps to {key}, which is not in its schema")
            if field is not None and get_origin(ann) is Annotated:
                base, *meta = get_args(ann)
                meta = [_from_field(m, field) if isinstance(m, OptionInfo) else m for m in meta]
                ann = Annotated[(base, *meta)]
            params.append(param.replace(annotation=ann))
        func.__signature__ = sig.replace(parameters=params)
        setattr(func, SCHEMA_ATTR, (command, dict(options)))
        return func

    return wrap
