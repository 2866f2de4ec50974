"""What every command shares: common options, the stderr console, JSON output and config resolution.

Each command declares once how its renamed options map to profile keys (`OPTIONS = {"awq": "openvino.awq"}`,
python parameter name → dotted key; `@schema_options` adds every parameter named like a top-level key) and
calls `resolve(ctx, command, OPTIONS)`: the values the user gave on the
command line, `--set` and `--profile` are validated by the command's schema (the one validation layer), and a
bad value is reported as the user typed it (`--top-p 1.5: must be greater than 0 and at most 1`).

Examples:
    def cmd(ctx: typer.Context, top_p: Annotated[float | None, typer.Option("--top-p")] = None,
            profile: ProfileOpt = None, set_: SetOpt = None, json_out: JsonOpt = False):
        config = resolve(ctx, "generate", OPTIONS)   # OPTIONS after @schema_options("generate", OPTIONS)
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

from llmctl.cli._options import completer, schema_field, schema_options
from llmctl.config.schema import DEVICES, Field
from llmctl.models.default import DEFAULT_MODEL_NAME

__all__ = ["schema_field", "schema_options"]  # re-exported: commands import their option helpers from here

# Logs, progress and tables for people go to stderr; stdout carries only results (--json).
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

_ARGS: list[str] = []


def remember_args(args: list[str]) -> None:
    _ARGS[:] = list(args)


def command_line() -> str:
    """The command line of this run, for lineage."""
    return " ".join(["llmctl", *(shlex.quote(a) for a in _ARGS)])


def choice_option(*decls: str, field: Field | None = None, help: str | None = None) -> Any:
    """A Typer option with a choice-valued schema field: `@schema_options` adds the choices to its help (from the
    schema, so the list cannot drift) and to shell completion; `help` is the CLI-side wording, if any.

    The value is checked by the schema in `resolve`, so a bad one reads the same from a flag, --set or a profile.

    Examples:
        method: Annotated[str | None, choice_option("--method")] = None
    """
    return typer.Option(*decls, help=help)


# The options every command shares, declared once (issue 28). Those mapped to a profile key take their help,
# bounds, choices and default from the command's schema field (`@schema_options`); the others say it here.
MODEL_FLAGS = ("--model", "-m")
MODEL_HELP = f"Registry name or model path (an adapter folder or .gguf too); default {DEFAULT_MODEL_NAME}."
ModelOpt = Annotated[str, typer.Option(*MODEL_FLAGS, help=MODEL_HELP)]
# `serve` takes several: the same flag and help, repeatable
ModelsOpt = Annotated[list[str] | None, typer.Option(*MODEL_FLAGS, help=MODEL_HELP + " Repeat for several.")]
# --name: required where a command makes a model (a parameter without a default: click's usage error, exit 2),
# optional where it only registers a result too (`= None`: export, tokenize train/encode, models import)
NameOpt = Annotated[
    str | None,
    typer.Option("--name", "-n", help="Registry name of the result (a new name; --force replaces an existing one)."),
]
SeedOpt = Annotated[int | None, typer.Option("--seed")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype")]
DeviceOpt = Annotated[str | None, typer.Option("--device", autocompletion=completer(DEVICES))]
# the calibration group of `quantize` and `prune` (calib.* and eval.* keys)
CalibDataOpt = Annotated[str | None, typer.Option("--calib-data")]
CalibSamplesOpt = Annotated[int | None, typer.Option("--calib-samples")]
CalibSeqlenOpt = Annotated[int | None, typer.Option("--calib-seqlen")]
EvalDataOpt = Annotated[str | None, typer.Option("--eval-data")]
EvalTokensOpt = Annotated[int | None, typer.Option("--eval-tokens")]
CALIB_OPTIONS = {
    "calib_data": "calib.data",
    "calib_samples": "calib.samples",
    "calib_seqlen": "calib.seqlen",
    "seed": "calib.seed",
    "eval_data": "eval.data",
    "eval_tokens": "eval.tokens",
}
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="Profile name or YAML path (see `llmctl profiles list`).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a profile key: --set a.b=value (repeat --set for each key)."),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the resolved config (and, for training, quantize and prune, the peak-memory estimate) and exit.",
    ),
]
EstimateStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--estimate-steps",
        min=1,
        help="Run N real steps in a scratch home (nothing saved or registered), print the memory estimate with "
        "the measured seconds per step, and exit.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output or model name.")]


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


# python parameter → dotted key, or (dotted key, converter)
Options = Mapping[str, Any]


def resolve(
    ctx: typer.Context,
    command: str,
    options: Options,
    extra: dict | None = None,
    estimate: Callable[[dict], dict] | None = None,
) -> dict:
    """Resolve a command's config from its options, --profile and --set; with --dry-run print it and stop.

    `options` maps each python parameter to its dotted profile key, or to (key, convert) when the value needs
    converting first; Paths become text. `extra` adds derived explicit values. Reads `profile`, `set_`,
    `dry_run` and `json_out` from the command's parameters. `estimate(config)` (the service's memory and time
    estimate) is printed with --dry-run (stderr; `estimate` in --json), and --estimate-steps N implies --dry-run.

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
    if params.get("dry_run") or params.get("estimate_steps"):
        est = estimate(config) if estimate is not None else None
        if params.get("json_out"):
            emit_json(config | {"estimate": est} if est is not None else config)
        else:
            sys.stdout.write(dump_config(config))
            if est is not None:
                from llmctl.training.estimate import describe

                err.print("\n".join(describe(est)))
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


# The common training knobs: same option names in `pretrain` and `finetune` (they override the profile); help,
# bounds and default from each command's `train.*` schema field (the two commands' defaults differ).
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs")]
LrOpt = Annotated[float | None, typer.Option("--lr")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size")]
GradAccumOpt = Annotated[int | None, typer.Option("--grad-accum")]
SeqLenOpt = Annotated[int | None, typer.Option("--seq-len")]
EvalEveryOpt = Annotated[int | None, typer.Option("--eval-every")]
SaveEveryOpt = Annotated[int | None, typer.Option("--save-every")]

# `--report-to tensorboard,csv,mlflow,wandb`: where the run's metrics go (`tracking.report_to`)
ReportToOpt = Annotated[str | None, typer.Option("--report-to")]

# The options above, as `pretrain` and `finetune` map them to their `train.*` (and `tracking.*`) profile keys.
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
} | {"report_to": "tracking.report_to"}


# RoPE scaling: the same three options in pretrain, finetune, generate, eval (and serve), mapped to `rope.*`.
RopeScalingOpt = Annotated[str | None, typer.Option("--rope-scaling")]
RopeFactorOpt = Annotated[float | None, typer.Option("--rope-factor")]
RopeOriginalOpt = Annotated[int | None, typer.Option("--rope-original-length")]
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
