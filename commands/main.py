"""The root `llmctl` app: composes the command modules and is the one error boundary.

Examples:
    llmctl --help
    llmctl --debug models show NAME     # show tracebacks instead of one-line errors
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from llmctl import __version__
from llmctl.cli import _common, generate, models, profiles
from llmctl.cli import eval as eval_cmd
from llmctl.cli import export as export_cmd
from llmctl.cli import finetune as finetune_cmd
from llmctl.cli import merge_lora as merge_lora_cmd
from llmctl.cli import pretrain as pretrain_cmd
from llmctl.cli import prune as prune_cmd
from llmctl.cli import quantize as quantize_cmd
from llmctl.cli import serve as serve_cmd
from llmctl.cli import tokenize as tokenize_cmd
from llmctl.errors import LlmctlError, first_line
from llmctl.runtime.quiet import configure_library_logs
from llmctl.runtime.threads import tame_openmp_spin


class LlmctlGroup(TyperGroup):
    """Turns every error into one `Error: …` line on stderr with the right exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        _common.remember_args(args)
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


# The one list of llmctl's commands.
app.add_typer(models.app, name="models")
app.add_typer(profiles.app, name="profiles")
app.command("generate")(generate.generate)
app.command("finetune")(finetune_cmd.finetune)
app.command("merge-lora")(merge_lora_cmd.merge_lora)
app.command("quantize")(quantize_cmd.quantize)
app.command("prune")(prune_cmd.prune)
app.command("export")(export_cmd.export)
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(tokenize_cmd.app, name="tokenize")
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("serve")(serve_cmd.serve)


def run() -> None:
    """Console-script entry point."""
    app()
