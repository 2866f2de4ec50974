"""Profiles: YAML files of settings per command, validated strictly against the command's schema.

Precedence: built-in defaults < profile file < `--set a.b=value` < explicit CLI options.
Built-in profiles live in `profiles/<command>/<name>.yaml`; users may add their own in
`$LLMCTL_HOME/profiles/<command>/<name>.yaml` or pass any path.

Examples:
    config = resolve_config("generate", profile="creative", sets=["temperature=0.9"],
                            explicit={"max_new_tokens": 64})
    save_config(config, Path("run/config.yaml"))
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmctl.errors import LlmctlError, UsageError
from llmctl.schema import Section, deep_merge, set_dotted


@dataclass
class ProfileInfo:
    """A profile file found on disk."""

    command: str
    name: str
    path: Path
    source: str  # "built-in" or "user"
    description: str


def schema_for(command: str) -> Section:
    """The schema of a command, from `llmctl/schemas/<command>.py`.

    Examples:
        schema_for("generate").defaults()["max_new_tokens"]
    """
    module_name = command.replace("-", "_")
    try:
        module = importlib.import_module(f"llmctl.schemas.{module_name}")
    except ModuleNotFoundError as exc:
        raise LlmctlError(f"no settings schema for command {command!r}",
                          hint="see `llmctl profiles list` for commands with profiles") from exc
    return module.SCHEMA


def builtin_root() -> Path:
    return Path(str(importlib.resources.files("llmctl.builtin_profiles")))


def user_root() -> Path:
    from llmctl.paths import llmctl_home

    return llmctl_home(create=False) / "profiles"


def _description(path: Path) -> str:
    """The first comment line after the command line: what the profile is for."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    comments = [ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")]
    for line in comments:
        if line and not line.startswith("llmctl "):
            return line
    return ""


def list_profiles(command: str | None = None) -> list[ProfileInfo]:
    """Every profile file, user ones first (they shadow built-ins of the same name).

    Examples:
        [p.name for p in list_profiles("generate")]
    """
    found: list[ProfileInfo] = []
    seen: set[tuple[str, str]] = set()
    for source, root in (("user", user_root()), ("built-in", builtin_root())):
        if not root.is_dir():
            continue
        for path in sorted(root.glob("*/*.yaml")):
            cmd = path.parent.name
            if command and cmd != command:
                continue
            key = (cmd, path.stem)
            if key in seen:
                continue
            seen.add(key)
            found.append(ProfileInfo(cmd, path.stem, path, source, _description(path)))
    return found


def find_profile(command: str | None, name_or_path: str) -> ProfileInfo:
    """Locate a profile by path, `command/name`, or name.

    Examples:
        find_profile("generate", "creative").path
        find_profile(None, "generate/creative")
    """
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LlmctlError(f"profile file {path} not found", hint="check the path, or see `llmctl profiles list`")
        return ProfileInfo(command or path.parent.name, path.stem, path, "file", _description(path))
    if "/" in name_or_path and command is None:
        command, name = name_or_path.split("/", 1)
    else:
        name = name_or_path
    matches = [p for p in list_profiles(command) if p.name == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join(f"{p.command}/{p.name}" for p in matches)
        raise LlmctlError(f"profile name {name!r} is ambiguous ({options})", hint="name it as COMMAND/NAME")
    import difflib

    names = [p.name for p in list_profiles(command)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    where = f" for `{command}`" if command else ""
    msg = f"no profile {name!r}{where}"
    if close:
        msg += f" (did you mean: {', '.join(close)}?)"
    raise LlmctlError(msg, hint="see `llmctl profiles list`, or pass a path to a .yaml file")


def load_profile_file(path: Path, schema: Section) -> dict:
    """Read and validate one profile file; every problem in it is reported at once."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LlmctlError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LlmctlError(f"profile {path} is not valid YAML{where}: {problem}",
                          hint="fix the YAML syntax") from exc
    if data is None:
        return {}
    config, errors = schema.validate(data)
    if errors:
        raise LlmctlError(f"profile {path}: " + "; ".join(errors),
                          hint="see `llmctl profiles show` for the keys and their types")
    return config


def parse_sets(sets: list[str] | None) -> dict:
    """Turn ["a.b=1", "c=x"] into {"a": {"b": 1}, "c": "x"} (values parsed as YAML scalars).

    Examples:
        parse_sets(["lora.r=32"]) == {"lora": {"r": 32}}
    """
    out: dict = {}
    for item in sets or []:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}", hint="e.g. --set train.lr=3e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UsageError(f"--set expects key=value, got {item!r}", hint="e.g. --set train.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_float(raw):
            value = float(raw)  # YAML 1.1 reads "3e-4" as a string
        set_dotted(out, key, value)
    return out


def _looks_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def resolve_config(command: str, profile: str | None = None, sets: list[str] | None = None,
                   explicit: dict | None = None) -> dict:
    """Merge defaults < profile < --set < explicit options and validate the result.

    `explicit` uses dotted keys for options the user gave on the command line (None = not given).

    Examples:
        resolve_config("generate", None, ["top_k=5"], {"temperature": 0.7})
    """
    schema = schema_for(command)
    config = schema.defaults()
    if profile:
        info = find_profile(command, profile)
        if info.command != command and info.source != "file":
            raise LlmctlError(f"profile {info.path} is for `{info.command}`, not `{command}`")
        config = deep_merge(config, load_profile_file(info.path, schema))
    overrides = parse_sets(sets)
    for key, value in (explicit or {}).items():
        if value is not None:
            set_dotted(overrides, key, value)
    checked, errors = schema.validate(overrides)
    if errors:
        raise LlmctlError("; ".join(errors), hint="fix the option or --set value")
    config = deep_merge(config, checked)
    # Re-validate the merged whole so cross-source combinations are typed too.
    config, errors = schema.validate(config)
    if errors:
        raise LlmctlError("; ".join(errors))
    return config


def dump_config(config: dict) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def save_config(config: dict, path: Path, command_line: str = "") -> Path:
    """Write the resolved config beside a run's output (atomically)."""
    from llmctl.paths import atomic_file

    header = f"# resolved config of: {command_line}\n" if command_line else ""
    with atomic_file(Path(path)) as fh:
        fh.write(header + dump_config(config))
    return Path(path)


def documented_defaults(command: str) -> str:
    """A YAML rendering of a schema's defaults with `# meaning (type, default)` comments."""
    schema = schema_for(command)
    lines: list[str] = []

    def walk(section: Section, indent: int) -> None:
        pad = "  " * indent
        for key, child in section.children.items():
            if isinstance(child, Section):
                lines.append(f"{pad}{key}:{'  # ' + child.help if child.help else ''}")
                walk(child, indent + 1)
            else:
                value = yaml.safe_dump(child.default, default_flow_style=True).strip()
                value = value.removesuffix("\n...").removesuffix("...").strip()
                lines.append(f"{pad}{key}: {value}  # {child.help} ({child.type_name()}, {value})")

    walk(schema, 0)
    return "\n".join(lines) + "\n"

