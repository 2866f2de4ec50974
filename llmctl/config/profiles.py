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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmctl.config.schema import Problem, Section, deep_merge, get_dotted, leaves, set_dotted
from llmctl.errors import LlmctlError, UsageError, first_line


@dataclass
class ProfileInfo:
    """A profile file found on disk."""

    command: str
    name: str
    path: Path
    source: str  # "built-in" or "user"
    description: str


def profile_commands() -> list[str]:
    """The commands that take `--profile`: one schema module each in `llmctl/schemas/`.

    Examples:
        "generate" in profile_commands()
    """
    import importlib.util
    import pkgutil

    # found by spec, not imported: the schemas sit above this module (they may use the data layer's tables)
    where = importlib.util.find_spec("llmctl.schemas").submodule_search_locations
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(where) if not m.name.startswith("_"))


def check_command(command: str) -> str:
    """`command` when it takes profiles, else a usage error listing the commands that do.

    Examples:
        check_command("generate")
    """
    if command not in profile_commands():
        raise UsageError(
            f"no command {command!r} takes profiles", hint=f"commands with profiles: {', '.join(profile_commands())}"
        )
    return command


def schema_for(command: str) -> Section:
    """The schema of a command, from `llmctl/schemas/<command>.py`.

    Examples:
        schema_for("generate").defaults()["max_new_tokens"]
    """
    check_command(command)
    module = importlib.import_module(f"llmctl.schemas.{command.replace('-', '_')}")
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
    except (OSError, UnicodeDecodeError):
        return ""  # reading the profile itself reports what is wrong with the file
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


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: `3e-4` is a float and `2:4` is text (YAML 1.1 reads text, and 124)."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(  # YAML 1.1's ints without the base-60 form
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(  # YAML 1.1's floats without base 60, the dot optional before an exponent
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse profile or `--set` YAML text (YAML 1.2 numbers, see `_Loader`).

    Examples:
        load_yaml("lr: 3e-4\npattern: 2:4") == {"lr": 0.0003, "pattern": "2:4"}
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_profile_file(path: Path, schema: Section) -> dict:
    """Read and validate one profile file; every problem in it is reported at once.

    A file that cannot be read or parsed is an error (exit 1); wrong keys or values are a usage error (exit 2)
    naming the file, each key with its value, and what would be right.

    Examples:
        load_profile_file(Path("p.yaml"), schema_for("generate"))
    """
    data = _read_yaml(Path(path))
    if data is None:
        return {}
    config, problems = schema.validate(data)
    if problems:
        raise UsageError(f"{path}: " + "; ".join(f"{_label_in_file(p.key, p.value)}: {p.text}" for p in problems))
    return config


def _read_yaml(path: Path) -> Any:
    """The YAML document of a profile file; unreadable, binary, non-UTF-8 or invalid YAML is one clear error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LlmctlError(
            f"cannot read profile {path}: {exc.strerror or first_line(exc)}", hint="check the path and its permissions"
        ) from exc
    if b"\0" in raw:
        raise LlmctlError(
            f"profile {path} looks binary (it contains NUL bytes)",
            hint="a profile is a YAML text file; see `llmctl profiles show COMMAND/NAME`",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LlmctlError(
            f"profile {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})", hint="save it as UTF-8"
        ) from exc
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise LlmctlError(f"profile {path} is not valid YAML{where}: {problem}", hint="fix the YAML syntax") from exc


def show_value(value: Any) -> str:
    """A value as a user would type it (YAML flow style: 0.5, true, [a, b], null)."""
    if isinstance(value, str):
        return value if value.strip() == value and value else repr(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def _label_in_file(key: str, value: Any) -> str:
    return f"{key} {show_value(value)}"


def parse_set_items(sets: list[str] | None) -> list[tuple[str, str, Any]]:
    """Each `--set key=value` as (what was typed, dotted key, value parsed as a YAML scalar).

    Examples:
        parse_set_items(["lora.r=32"]) == [("lora.r=32", "lora.r", 32)]
    """
    out = []
    for item in sets or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"--set expects key=value, got {item!r}", hint="e.g. --set train.lr=3e-4; repeat --set for each key"
            )
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((item, key, value))
    return out


def parse_sets(sets: list[str] | None) -> dict:
    """Turn ["a.b=1", "c=x"] into {"a": {"b": 1}, "c": "x"} (values parsed as YAML scalars).

    Examples:
        parse_sets(["lora.r=32"]) == {"lora": {"r": 32}}
    """
    out: dict = {}
    for _, key, value in parse_set_items(sets):
        set_dotted(out, key, value)
    return out


def resolve_config(
    command: str,
    profile: str | None = None,
    sets: list[str] | None = None,
    explicit: dict | None = None,
    *,
    spelled: dict[str, str] | None = None,
) -> dict:
    """Merge defaults < profile < --set < explicit options and validate the result (the one validation layer).

    `explicit` uses dotted keys for options the user gave on the command line (None = not given); `spelled`
    says how the user wrote each (`{"top_p": "--top-p 1.5"}`) so a bad value is reported as typed. Every key
    or value that does not fit the schema, from any source, is a `UsageError` (exit 2): "SOURCE: RULE".

    Examples:
        resolve_config("generate", None, ["top_k=5"], {"temperature": 0.7})
        resolve_config("generate", explicit={"top_p": 1.5}, spelled={"top_p": "--top-p 1.5"})  # UsageError
    """
    schema = schema_for(command)
    config = schema.defaults()
    origin: dict[str, str] = {}  # dotted key → where its value came from, as the user wrote it
    if profile:
        info = find_profile(command, profile)
        if info.command != command and info.source != "file":
            raise LlmctlError(f"profile {info.path} is for `{info.command}`, not `{command}`")
        from_file = load_profile_file(info.path, schema)
        config = deep_merge(config, from_file)
        origin.update({key: f"{info.path}: {_label_in_file(key, v)}" for key, v in leaves(from_file).items()})
    given = [(f"--set {item}", key, value) for item, key, value in parse_set_items(sets)]
    given += [
        ((spelled or {}).get(key) or f"{key}={show_value(value)}", key, value)
        for key, value in (explicit or {}).items()
        if value is not None
    ]
    overrides: dict = {}
    problems: list[str] = []
    for label, key, value in given:
        one: dict = {}
        set_dotted(one, key, value)
        checked, found = schema.validate(one)
        problems += [f"{label}: {p.text}" if p.key == key else f"{label}: {p.key}: {p.text}" for p in found]
        if not found:
            overrides = deep_merge(overrides, checked)
            origin.update({k: label for k in leaves(checked)})
    if problems:
        raise UsageError("; ".join(problems))
    config, found = schema.validate(deep_merge(config, overrides))
    found += schema.check_rules(config)
    if found:
        raise UsageError("; ".join(_relation_message(p, config, origin) for p in found))
    return config


def _relation_message(problem: Problem, config: dict, origin: dict[str, str]) -> str:
    """A rule between keys, with where each value came from: `RULE; got --stride 600 and seqlen 512 (default)`."""

    def source(key: str) -> str:
        return origin.get(key) or f"{key} {show_value(get_dotted(config, key))} (default)"

    if not problem.others:
        return f"{source(problem.key)}: {problem.text}"
    return f"{problem.text}; got {' and '.join(source(k) for k in (problem.key, *problem.others))}"


def dump_config(config: dict) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def side_config_path(output: Path) -> Path:
    """Where a command saves its resolved config beside a file output: OUT.config.yaml.

    Examples:
        side_config_path(Path("answers.jsonl"))   # answers.jsonl.config.yaml
    """
    return Path(output).with_name(Path(output).name + ".config.yaml")


# the resolved config a run leaves in its output folder (models, data dirs, run dirs): the one spelling
RUN_CONFIG_FILE = "llmctl-config.yaml"


def save_run_config(config: dict, folder: Path, command_line: str = "") -> Path:
    """Write the resolved config into a run's output folder as RUN_CONFIG_FILE (atomically).

    Examples:
        save_run_config(config, tmp, "llmctl prune ...")   # tmp/llmctl-config.yaml
    """
    return save_config(config, Path(folder) / RUN_CONFIG_FILE, command_line)


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


# how each command's default profile is used, when not `llmctl COMMAND --profile default`
_DEFAULT_PROFILE_USE = {"tokenize": "tokenize encode"}


def default_profile(command: str) -> str:
    """The text of `profiles/<command>/default.yaml`: every key at its built-in default, with its meaning.

    Generated from the schema (`make docs` writes the files; a test keeps them equal), so `--profile default`
    is the same as no profile and the file cannot drift from the schema.

    Examples:
        default_profile("generate").splitlines()[0]   # "# llmctl generate --profile default"
    """
    use = _DEFAULT_PROFILE_USE.get(command, command)
    module = command.replace("-", "_")
    return (
        f"# llmctl {use} --profile default\n"
        f"# Every key at its built-in default, the same as no --profile: generated from llmctl/schemas/{module}.py "
        "by `make docs` (edit the schema, not this file).\n" + documented_defaults(command)
    )
