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
from typer._click import exceptions as click_exc  # Typer 0.29 vendors its own click
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit

from llmctl import __version__
from llmctl.cli import _common
from llmctl.cli import generate, models, profiles
from llmctl.cli import finetune as finetune_cmd
from llmctl.cli import merge_lora as merge_lora_cmd
from llmctl.cli import eval as eval_cmd
from llmctl.cli import quantize as quantize_cmd
from llmctl.cli import prune as prune_cmd
from llmctl.cli import tokenize as tokenize_cmd
from llmctl.cli import pretrain as pretrain_cmd
from llmctl.errors import LlmctlError


class LlmctlGroup(TyperGroup):
    """Turns every error into one `Error: …` line on stderr with the right exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        _common.remember_args(args)
        debug = "--debug" in args or os.environ.get("LLMCTL_DEBUG", "") in ("1", "true")
        try:
            rv = super().main(args, prog_name or "llmctl", complete_var, standalone_mode=False, **extra)
        except Exit as exc:
            sys.exit(exc.exit_code)
        except click_exc.NoArgsIsHelpError as exc:
            sys.stdout.write(exc.format_message() + "\n")  # a bare group shows its help
            sys.exit(0)
        except click_exc.UsageError as exc:
            if debug:
                raise
            ctx = exc.ctx
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            sys.stderr.write(f"Error: {exc.format_message().rstrip('.')}{where}\n")
            sys.exit(2)
        except click_exc.ClickException as exc:
            if debug:
                raise
            sys.stderr.write(f"Error: {exc.format_message()}\n")
            sys.exit(exc.exit_code)
        except Abort:
            sys.stderr.write("Error: aborted\n")
            sys.exit(1)
        except KeyboardInterrupt:
            sys.stderr.write("Error: interrupted\n")
            sys.exit(130)
        except LlmctlError as exc:
            if debug:
                raise
            sys.stderr.write(f"Error: {exc.one_line()}\n")
            sys.exit(exc.exit_code)
        except Exception as exc:  # the one boundary: unexpected failures still get one line
            if debug:
                raise
            text = str(exc).strip().splitlines()
            sys.stderr.write(f"Error: {type(exc).__name__}: {text[0] if text else ''} "
                             f"(run with --debug for the traceback)\n")
            sys.exit(1)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


app = typer.Typer(
    cls=LlmctlGroup,
    name="llmctl",
    help="One command-line toolkit for the whole life of a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
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
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(tokenize_cmd.app, name="tokenize")
app.command("pretrain")(pretrain_cmd.pretrain)


def run() -> None:
    """Console-script entry point."""
    app()
