"""What every command shares: common options, the stderr console, JSON output and config resolution.

Examples:
    def cmd(profile: ProfileOpt = None, set_: SetOpt = None, json_out: JsonOpt = False): ...
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

# Logs, progress and tables for people go to stderr; stdout carries only results (--json).
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

_ARGS: list[str] = []


def remember_args(args: list[str]) -> None:
    _ARGS[:] = list(args)


def command_line() -> str:
    """The command line of this run, for lineage."""
    return " ".join(["llmctl", *(shlex.quote(a) for a in _ARGS)])


ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="Profile name or YAML path (see `llmctl profiles list`).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a profile key: --set a.b=value (repeatable).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output or model name.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")]


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def resolve(command: str, profile: str | None, sets: list[str] | None, explicit: dict, dry_run: bool,
            json_out: bool = False) -> dict:
    """Resolve a command's config; with --dry-run print it and stop (exit 0).

    Examples:
        config = resolve("generate", profile, set_, {"top_p": top_p}, dry_run)
    """
    from llmctl.profiles import dump_config, resolve_config

    config = resolve_config(command, profile, sets, explicit)
    if dry_run:
        if json_out:
            emit_json(config)
        else:
            sys.stdout.write(dump_config(config))
        raise typer.Exit(0)
    return config


# The common training knobs: same option names in `pretrain` and `finetune` (they override the profile).
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps to run.")]
EpochsOpt = Annotated[Optional[float], typer.Option("--epochs", help="Passes over the data (sets max steps).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per micro-batch.")]
GradAccumOpt = Annotated[Optional[int], typer.Option("--grad-accum", help="Micro-batches per optimizer step.")]
SeqLenOpt = Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per training sequence.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
EvalEveryOpt = Annotated[Optional[int], typer.Option("--eval-every", help="Steps between validation runs (0 = off).")]
SaveEveryOpt = Annotated[Optional[int], typer.Option("--save-every", help="Steps between checkpoints (0 = end only).")]


def train_overrides(**knobs) -> dict:
    """Map the common training options to their `train.*` profile keys (None = not given).

    Examples:
        explicit = train_overrides(max_steps=max_steps, lr=lr, device=device, dtype=dtype)
    """
    return {f"train.{k}": v for k, v in knobs.items()}
