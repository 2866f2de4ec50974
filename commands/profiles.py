"""`llmctl profiles`: the built-in and user profiles of every command.

Examples:
    llmctl profiles list
    llmctl profiles show generate/default
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from llmctl.cli._common import JsonOpt, emit_json, out

app = typer.Typer(help="List and show profiles (YAML settings per command).", no_args_is_help=True)


def _complete_command(incomplete: str) -> list[str]:
    from llmctl.config.profiles import profile_commands

    return [c for c in profile_commands() if c.startswith(incomplete)]


@app.command("list")
def list_(
    command: Annotated[
        str | None,
        typer.Option("--command", "-c", help="Only this command's profiles.", autocompletion=_complete_command),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List profiles: command, name, source and what each is for.

    Examples:
        llmctl profiles list --command generate
    """
    from llmctl.config.profiles import check_command, list_profiles

    found = list_profiles(check_command(command) if command is not None else None)
    if json_out:
        emit_json(
            [
                {
                    "command": p.command,
                    "name": p.name,
                    "path": str(p.path),
                    "source": p.source,
                    "description": p.description,
                }
                for p in found
            ]
        )
        return
    table = Table("command", "name", "source", "description")
    for p in found:
        table.add_row(p.command, p.name, p.source, p.description)
    out.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="NAME, COMMAND/NAME or a path to a YAML file.")],
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Also print every key of the command with its meaning, type and default.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show a profile file, validated against its command's schema.

    Examples:
        llmctl profiles show generate/creative
        llmctl profiles show generate/default --defaults
    """
    from rich.syntax import Syntax  # here: pygments' YAML lexer costs ~0.1 s that `profiles list` need not pay

    from llmctl.config.profiles import documented_defaults, find_profile, load_profile_file, schema_for

    info = find_profile(None, name)
    config = load_profile_file(info.path, schema_for(info.command))
    if json_out:
        emit_json({"command": info.command, "name": info.name, "path": str(info.path), "config": config})
        return
    out.print(f"# {info.path}  ({info.source})", markup=False)
    out.print(Syntax(info.path.read_text(encoding="utf-8"), "yaml", background_color="default"))
    if defaults:
        out.print(f"# every key of `{info.command}` (meaning, type, default):", markup=False)
        out.print(Syntax(documented_defaults(info.command), "yaml", background_color="default"))
