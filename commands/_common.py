"""What every command shares: common options, the stderr console, JSON output and config resolution.

Each command declares once how its options map to profile keys (`OPTIONS = {"top_p": "top_p", ...}`, python
parameter name → dotted key) and calls `resolve(ctx, command, OPTIONS)`: the values the user gave on the
command line, `--set` and `--profile` are validated by the command's schema (the one validation layer), and a
bad value is reported as the user typed it (`--top-p 1.5: must be greater than 0 and at most 1`).

Examples:
    def cmd(ctx: typer.Context, top_p: Annotated[float | None, typer.Option("--top-p")] = None,
            profile: ProfileOpt = None, set_: SetOpt = None, json_out: JsonOpt = False):
        config = resolve(ctx, "generate", {"top_p": "top_p"})
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from llmctl.config.schema import DEVICES, Field, dtype_field
from llmctl.models.default import DEFAULT_MODEL_NAME

# Logs, progress and tables for people go to stderr; stdout carries only results (--json).
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

_ARGS: list[str] = []


def remember_args(args: list[str]) -> None:
    _ARGS[:] = list(args)


def command_line() -> str:
    """The command line of this run, for lineage."""
    return " ".join(["llmctl", *(shlex.quote(a) for a in _ARGS)])


def schema_field(command: str, key: str) -> Field:
    """The schema Field behind an option (`schema_field("tokenize", "train.type")`): its choices, its rule."""
    import importlib

    module = importlib.import_module(f"llmctl.schemas.{command.replace('-', '_')}")
    field = module.SCHEMA.field(key)
    if field is None:
        raise KeyError(f"{command} has no key {key}")
    return field


def _completer(values: list[str]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _or_list(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def choice_option(*decls: str, field: Field, help: str) -> Any:
    """A Typer option whose help and shell completion list the schema field's choices (one list, the schema's).

    The value is checked by the schema in `resolve`, so a bad one reads the same from a flag, --set or a profile.

    Examples:
        method: Annotated[str | None, choice_option("--method", field=schema_field("prune", "method"),
                                                       help="Pruning criterion")] = None
    """
    choices = [str(c) for c in field.choices or []]
    also = f" ({', '.join(field.aliases)} too)" if field.aliases else ""
    return typer.Option(
        *decls,
        help=f"{help}: {_or_list(choices)}{also}.",
        autocompletion=_completer(choices + list(field.aliases or {})),
    )


# --model of every command that takes one model: declared once (issue 28), the default model by name
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help=f"Registry name or model path (an adapter folder or .gguf too); default {DEFAULT_MODEL_NAME}.",
    ),
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="Profile name or YAML path (see `llmctl profiles list`).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a profile key: --set a.b=value (repeat --set for each key)."),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output or model name.")]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Device: auto, cpu, cuda, cuda:N or mps.", autocompletion=_completer(DEVICES)),
]
DtypeOpt = Annotated[str | None, choice_option("--dtype", field=dtype_field("auto", ""), help="Dtype")]


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


# python parameter → dotted key, or (dotted key, converter)
Options = Mapping[str, Any]


def resolve(ctx: typer.Context, command: str, options: Options, extra: dict | None = None) -> dict:
    """Resolve a command's config from its options, --profile and --set; with --dry-run print it and stop.

    `options` maps each python parameter to its dotted profile key, or to (key, convert) when the value needs
    converting first; Paths become text. `extra` adds derived explicit values. Reads `profile`, `set_`,
    `dry_run` and `json_out` from the command's parameters.

    Examples:
        config = resolve(ctx, "generate", {"top_p": "top_p", "dtype": "dtype"})
    """
    from llmctl.config.profiles import dump_config, resolve_config

    params = ctx.params
    explicit: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for name, spec in options.items():
        key, convert = (spec, None) if isinstance(spec, str) else spec
        source = ctx.get_parameter_source(name)
        value = params.get(name)
        if source is None or source.name == "DEFAULT" or value is None:
            continue  # not given: the profile's or the schema's value stands
        if convert is not None:
            value = convert(value)
        elif isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        elif isinstance(value, Path):
            value = str(value)
        explicit[key] = value
        spelled[key] = typed_as(ctx, name, params[name])
    explicit.update(extra or {})
    config = resolve_config(command, params.get("profile"), params.get("set_"), explicit, spelled=spelled)
    if params.get("dry_run"):
        if params.get("json_out"):
            emit_json(config)
        else:
            sys.stdout.write(dump_config(config))
        raise typer.Exit(0)
    return config


def typed_as(ctx: typer.Context, name: str, value: Any) -> str:
    """How the user wrote an option on the command line (`--top-p 1.5`, `-n 2`, `--no-packing`)."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    if param is None:
        return f"{name} {value}"
    if isinstance(value, bool):
        flags = param.opts if value or not param.secondary_opts else param.secondary_opts
        return _spelling(flags)[0]
    flag, raw = _spelling(param.opts)
    if raw is None:
        items = value if isinstance(value, (list, tuple)) else [value]
        raw = ",".join(str(v) for v in items)
    return f"{flag} {raw}"


def _spelling(opts: list[str]) -> tuple[str, str | None]:
    """The last of `opts` on the command line and the text typed after it (None when not found there)."""
    found: tuple[str, str | None] | None = None
    for i, arg in enumerate(_ARGS):
        if arg == "--":
            break
        for opt in opts:
            if arg == opt:
                found = (opt, _ARGS[i + 1] if i + 1 < len(_ARGS) else None)
            elif opt.startswith("--") and arg.startswith(opt + "="):
                found = (opt, arg[len(opt) + 1 :])
    return found or (max(opts, key=len), None)


# The common training knobs: same option names in `pretrain` and `finetune` (they override the profile).
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps to run.")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="Passes over the data (sets max steps).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Sequences per micro-batch.")]
GradAccumOpt = Annotated[int | None, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")]
SeqLenOpt = Annotated[int | None, typer.Option("--seq-len", help="Tokens per training sequence.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
EvalEveryOpt = Annotated[int | None, typer.Option("--eval-every", help="Steps between validation runs (0 = off).")]
SaveEveryOpt = Annotated[int | None, typer.Option("--save-every", help="Steps between checkpoints (0 = end only).")]

# The options above, as `pretrain` and `finetune` map them to their `train.*` profile keys.
TRAIN_OPTIONS = {
    name: f"train.{name}"
    for name in (
        "max_steps",
        "epochs",
        "lr",
        "batch_size",
        "grad_accum",
        "seq_len",
        "seed",
        "eval_every",
        "save_every",
        "device",
        "dtype",
    )
}


# RoPE scaling: the same three options in pretrain, finetune, generate, eval (and serve), mapped to `rope.*`.
def _rope_field(key: str) -> Field:
    from llmctl.schemas._rope import rope_section

    return rope_section().children[key]


RopeScalingOpt = Annotated[
    str | None, choice_option("--rope-scaling", field=_rope_field("scaling"), help="RoPE scaling for longer contexts")
]
RopeFactorOpt = Annotated[
    float | None, typer.Option("--rope-factor", help="RoPE context multiplier (> 1): new length = original x factor.")
]
RopeOriginalOpt = Annotated[
    int | None,
    typer.Option("--rope-original-length", help="The context the model was trained at (default: from its config)."),
]
ROPE_OPTIONS = {
    "rope_scaling": "rope.scaling",
    "rope_factor": "rope.factor",
    "rope_original_length": "rope.original_max_length",
}


def int_list(values: list[str] | str) -> list:
    """`2048,4096` or `[2048, 4096]` (repeatable) → [2048, 4096]; other text is kept for the schema to report."""
    items = [values] if isinstance(values, str) else list(values)
    out: list = []
    for value in items:
        for part in str(value).strip("[] ").split(","):
            part = part.strip()
            if part:
                out.append(int(part) if part.lstrip("-").isdigit() else part)
    return out
