"""`make docs` (`python -m llmctl.cli._docs`): each command's reference page and default profile, generated.

`docs/commands/<command>.md` is a hand-written part (what the command is for, common invocations) above
`MARKER`, and below it a reference written from the same click commands `--help` prints: every option with its
flags, type, default, profile key and help (the help of a mapped option is its schema field's, see
`_options.py`), then every profile / `--set` key of the command's schema. `profiles/<command>/default.yaml` is
written from the schema too (`llmctl.config.profiles.default_profile`). `--check` writes nothing and exits 1
when a file differs (tests/test_docs.py runs the same comparison).

Examples:
    python -m llmctl.cli._docs            # rewrite what is stale
    python -m llmctl.cli._docs --check    # exit 1 and list stale files
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import typer

from llmctl.cli._options import SCHEMA_ATTR, option_key, show_default, unescape

MARKER = "<!-- generated from the schemas by `make docs` (python -m llmctl.cli._docs); do not edit below -->"
# the repository root: commands/ sits at its top (in an editable install this file is commands/_docs.py)
ROOT = Path(__file__).resolve().parents[1]


def root_command() -> Any:
    """The `llmctl` click group, as `llmctl --help` builds it."""
    from llmctl.cli.main import app

    return typer.main.get_command(app)


def _is_option(param: Any) -> bool:
    """An option, not an argument (typer's click params: no isinstance against click's classes)."""
    return param.param_type_name == "option"


def _metavar(argument: Any) -> str:
    """NAME, NAME... (several) or [NAME] (optional), as the usage line of --help writes an argument."""
    text = (argument.name or "").upper() + ("..." if argument.nargs == -1 else "")
    return text if argument.required else f"[{text}]"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _schema_of(command: Any) -> tuple[str, dict] | None:
    return getattr(command.callback, SCHEMA_ATTR, None) if command.callback else None


def _flags(param: Any) -> str:
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    return ", ".join(f"`{n}`" for n in names)


def _type(param: Any, field) -> str:
    if _is_option(param) and (param.is_flag or param.is_bool_flag):
        text = "flag"
    elif field is not None:
        text = field.type_name()
    else:
        text = _annotation_name(param.type_descriptor.annotation)
    if param.multiple or getattr(param, "nargs", 1) == -1:
        text += ", repeatable"
    return text


def _annotation_name(annotation: Any) -> str:
    """`str | None` → str, `list[Path]` → path: the type of one value a user types."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args and get_origin(annotation) is not None:
        return _annotation_name(args[0])
    return {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}.get(annotation, str(annotation))


def _default(param: Any, field) -> str:
    if param.required:
        return "required"
    if field is not None:
        return show_default(field.default)
    if param.default is None or param.default == () or callable(param.default):
        return ""
    return show_default(param.default)


def options_table(command: Any) -> list[str]:
    """The options of one command as a markdown table (help is the --help text)."""
    schema, options = _schema_of(command) or (None, {})
    if schema:
        from llmctl.config.profiles import schema_for

        keys = schema_for(schema)
    rows = ["| option | type | default | profile key | meaning |", "| --- | --- | --- | --- | --- |"]
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        key = option_key(options, param.name or "")
        field = keys.field(key) if schema and key else None
        flags = _flags(param) if _is_option(param) else f"`{(param.name or '').upper()}` (argument)"
        help_text = unescape(getattr(param, "help", None) or "")
        rows.append(
            f"| {flags} | {_cell(_type(param, field))} | {_cell(_default(param, field))} | "
            f"{f'`{key}`' if key else ''} | {_cell(help_text)} |"
        )
    rows.append("| `--help`, `-h` | flag | | | Show the help and exit. |")
    return rows


def _help_parts(command: Any) -> tuple[str, str]:
    """(description, examples) from a command's docstring, the text --help prints."""
    text = inspect.cleandoc(command.help or "")
    description, _, examples = text.partition("Examples:")
    return description.strip(), inspect.cleandoc(examples)


def command_section(path: str, command: Any) -> list[str]:
    """One command's reference: description, usage, examples, options, epilog."""
    usage = " ".join([path, "[OPTIONS]", *(_metavar(p) for p in command.params if not _is_option(p))])
    description, examples = _help_parts(command)
    lines = [f"### `{path}`", "", description, "", "```text", usage, "```", ""]
    if examples:
        lines += ["```sh", examples, "```", ""]
    lines += [*options_table(command), ""]
    if command.epilog:
        lines += ["```text", inspect.cleandoc(command.epilog), "```", ""]
    return lines


def profile_keys(schema: str) -> list[str]:
    """Every profile / `--set` key of a schema: key, type, default, meaning and allowed values."""
    from llmctl.config.profiles import schema_for

    rows = [
        f"### Profile keys (`--profile`, `--set KEY=VALUE`; schema: `llmctl/schemas/{schema.replace('-', '_')}.py`)",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, field in schema_for(schema).keys().items():
        allowed = field.allowed()
        meaning = f"{field.help} ({allowed})" if allowed and allowed != field.rule else field.help
        default = show_default(field.default)
        rows.append(f"| `{key}` | {_cell(field.type_name())} | {_cell(default)} | {_cell(meaning)} |")
    return [*rows, ""]


def page_commands(name: str, command: Any) -> list[tuple[str, Any]]:
    """The (path, command) pairs one page documents: a group's own options (if any), then its subcommands."""
    path = f"llmctl {name}"
    if not hasattr(command, "commands"):
        return [(path, command)]
    found = [(path, command)] if any(_is_option(p) for p in command.params) else []
    return found + [(f"{path} {sub}", command.commands[sub]) for sub in command.commands]


def generated_part(name: str, command: Any) -> str:
    """The text below MARKER on `docs/commands/<name>.md`."""
    lines = ["", "## Reference", ""]
    schemas: list[str] = []
    for path, cmd in page_commands(name, command):
        lines += command_section(path, cmd)
        schema = (_schema_of(cmd) or (None,))[0]
        if schema and schema not in schemas:
            schemas.append(schema)
    for schema in schemas:
        lines += profile_keys(schema)
    return "\n".join(lines).rstrip() + "\n"


def page_text(name: str, command: Any, current: str | None) -> str:
    """The whole page: the hand-written part of `current` (or a stub), MARKER, the generated part."""
    if current and MARKER in current:
        hand = current.split(MARKER, 1)[0].rstrip() + "\n\n"
    else:
        description, _ = _help_parts(command)
        hand = f"# llmctl {name}\n\n{(command.help or description).strip().splitlines()[0]}\n\n"
    return hand + MARKER + "\n" + generated_part(name, command)


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file and the text it should hold."""
    from llmctl.config.profiles import default_profile, profile_commands

    group = root_command()
    files: dict[Path, str] = {}
    for name, command in group.commands.items():
        path = root / "docs" / "commands" / f"{name}.md"
        current = path.read_text(encoding="utf-8") if path.exists() else None
        files[path] = page_text(name, command, current)
    for command in profile_commands():
        files[root / "profiles" / command / "default.yaml"] = default_profile(command)
    return files


def stale_files(root: Path = ROOT) -> list[Path]:
    """The generated files whose text differs from what `make docs` would write."""
    return [
        path
        for path, text in expected_files(root).items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Rewrite stale files (or, with --check, list them and return 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if not (ROOT / "commands" / "_docs.py").is_file():
        print(f"Error: {ROOT} is not an llmctl checkout; run `make docs` in the repository", file=sys.stderr)
        return 1
    check = "--check" in argv
    stale = stale_files()
    if check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run `make docs`)")
        return 1 if stale else 0
    for path, text in expected_files().items():
        if path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")  # then renamed: never a half-written page or profile
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
