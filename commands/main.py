"""The root `llmctl` app: composes the command modules and is the one error boundary.

Examples:
    llmctl --help
    llmctl --debug models show NAME     # show tracebacks instead of one-line errors
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Annotated

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

from llmctl import __version__
from llmctl.errors import LlmctlError, first_line
from llmctl.runtime.quiet import configure_library_logs
from llmctl.runtime.threads import tame_openmp_spin

# The one list of llmctl's commands, in --help's order: name → (module of llmctl.cli, its Typer app or command
# function, the first paragraph of its help). A command's module is imported only when that command runs or its
# own help is asked for: `llmctl --help` shows these summaries (tests/test_startup.py checks each against the
# command's docstring), so a short command does not build every command's options (~0.15 s each start).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("generate", "generate", "Generate text with a model from the registry (or a path)."),
    "finetune": (
        "finetune",
        "finetune",
        "Finetune a model (adapter or full weights) on instruction, chat, text, preference data or prompts.",
    ),
    "merge-lora": (
        "merge_lora",
        "merge_lora",
        "Merge a LoRA adapter into its base model and register the result as a normal model.",
    ),
    "quantize": (
        "quantize",
        "quantize",
        "Quantize a model (INC RTN/GPTQ/AWQ/TEQ/AutoRound, int8, OpenVINO, bitsandbytes) and register it.",
    ),
    "prune": ("prune", "prune", "Prune a model (magnitude, Wanda, SparseGPT; N:M; heads/channels) and register it."),
    "export": (
        "export",
        "export",
        "Export a model to GGUF/Ollama/compressed-tensors/GPTQ/OpenVINO/safetensors and check it against the source.",
    ),
    "pretrain": (
        "pretrain",
        "pretrain",
        "Pretrain a model from scratch (single process, or DDP/FSDP under torchrun) and register it.",
    ),
    "serve": (
        "serve",
        "serve",
        "Serve models over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models, /metrics), chat page at /.",
    ),
    "models": ("models", "app", "List, show, import and remove models in the registry."),
    "profiles": ("profiles", "app", "List and show profiles (YAML settings per command)."),
    "eval": ("eval", "app", "Evaluate a model on lm-eval tasks and perplexity, offline, with optional CI gates."),
    "tokenize": ("tokenize", "app", "Train tokenizers, encode corpora into token shards, inspect tokenization."),
    "worker": (
        "worker",
        "app",
        "Start, stop and inspect the opt-in warm worker that later commands reuse (skips start-up imports).",
    ),
}


def command_object(name: str):
    """The Typer app or command function behind a command name (imports its module)."""
    module, attr, _ = COMMANDS[name]
    return getattr(importlib.import_module(f"llmctl.cli.{module}"), attr)


def build_command(name: str) -> _click.Command:
    """The click command for one name, built as registering it on the root app would build it."""
    holder = typer.Typer(
        rich_markup_mode=app.rich_markup_mode,
        pretty_exceptions_short=app.pretty_exceptions_short,
        suggest_commands=app.suggest_commands,
    )
    holder.callback()(lambda: None)  # a callback makes a group, in which the command is built as a subcommand
    obj = command_object(name)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name)
    else:
        holder.command(name)(obj)
    return typer.main.get_group(holder).commands[name]


class LazyCommands(MutableMapping):
    """The root group's commands: names from COMMANDS, each click command built on first use."""

    def __init__(self) -> None:
        self._built: dict[str, _click.Command] = {}

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = build_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*COMMANDS, *(n for n in self._built if n not in COMMANDS)])

    def __len__(self) -> int:
        return len(COMMANDS) + sum(n not in COMMANDS for n in self._built)

    def summary(self, name: str) -> _click.Command | None:
        """The built command, else a stand-in carrying only its name and help summary (for the root's --help)."""
        if name in self._built or name not in COMMANDS:
            return self._built.get(name)
        return TyperCommand(name, help=COMMANDS[name][2])


class LlmctlGroup(TyperGroup):
    """Turns every error into one `Error: …` line on stderr with the right exit code; builds commands lazily."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands()
        self._summaries = False
        self._args: list[str] = []

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # names only: TyperGroup's `commands.items()` would build every command

    def get_command(self, ctx, cmd_name):
        if self._summaries:
            return self.commands.summary(cmd_name)
        command = super().get_command(ctx, cmd_name)
        if command is not None:  # about to run: its models record this command line (imported here, not for --help)
            from llmctl.cli import _common

            _common.remember_args(self._args)
        return command

    def format_help(self, ctx, formatter):
        self._summaries = True  # the command list needs each command's summary only, not its options
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._summaries = False

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        self._args = args  # for the lineage of the command that runs (get_command)
        debug = "--debug" in args or os.environ.get("LLMCTL_DEBUG", "") in ("1", "true")
        configure_library_logs(verbose=debug or os.environ.get("LOGLEVEL", "").upper() in ("INFO", "DEBUG"))
        tame_openmp_spin()  # before any command imports torch (llmctl/runtime/threads.py)
        try:
            rv = super().main(args, prog_name or "llmctl", complete_var, standalone_mode=False, **extra)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.TyperException as exc:  # every click error Typer raises: usage (2), bad file (1), …
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group shows its help (no public class)
                sys.stdout.write(exc.format_message() + "\n")
                sys.exit(0)
            if debug:
                raise
            sys.stderr.write(f"Error: {_click_line(exc)}\n")
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.stderr.write("Error: aborted\n")
            sys.exit(1)
        except KeyboardInterrupt:
            sys.stderr.write("Error: interrupted\n")
            sys.exit(130)
        except LlmctlError as exc:
            if debug:
                raise
            sys.stderr.write(f"Error: {exc.one_line() or type(exc).__name__}\n")
            sys.exit(exc.exit_code)
        except Exception as exc:  # the one boundary: unexpected failures still get one line
            if debug:
                raise
            text = first_line(exc)
            what = type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"
            sys.stderr.write(f"Error: {what} (run with --debug for the traceback)\n")
            sys.exit(1)
        finally:  # a command's name reservations end with it, finished or failed (llmctl/models/locks.py)
            locks = sys.modules.get("llmctl.models.locks")
            if locks is not None:
                locks.release_all()
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


def _click_line(exc: typer.TyperException) -> str:
    """A click error as one line; usage errors point at the command's --help."""
    message = exc.format_message().strip()
    text = first_line(Exception(message)).rstrip(".") if message else type(exc).__name__
    if "unexpected extra argument" in text and "=" in text:  # `--set a=1 b=2`: one key per --set
        text += "; give each key its own --set: --set a=1 --set b=2"
    ctx = getattr(exc, "ctx", None)
    if exc.exit_code == 2 and ctx is not None:
        text += f" (see `{ctx.command_path} --help`)"
    return text


app = typer.Typer(
    cls=LlmctlGroup,
    name="llmctl",
    help="One command-line toolkit for the whole life of a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """One command-line toolkit for the whole life of a language model.

    Models live in a registry under $LLMCTL_HOME; every command takes registry names or paths.
    """
