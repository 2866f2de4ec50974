"""Each shared option is declared once (commands/_common.py) and takes its help from the schema (issue 28)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmctl.cli._docs import root_command
from llmctl.cli._options import SCHEMA_ATTR, option_key, show_default, unescape
from llmctl.config.profiles import schema_for

COMMANDS = Path(__file__).resolve().parents[1] / "commands"
DECLARED_ONCE = [
    "--model",
    "--name",
    "--seed",
    "--dtype",
    "--device",
    "--calib-data",
    "--calib-samples",
    "--calib-seqlen",
    "--eval-data",
    "--eval-tokens",
    "--json",
    "--profile",
    "--set",
    "--dry-run",
]


def _declarations(flag: str) -> dict[str, int]:
    found = {}
    for path in sorted(COMMANDS.glob("*.py")):
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
        count = len(re.findall(rf'"{re.escape(flag)}"', code))
        if count:
            found[path.name] = count
    return found


@pytest.mark.parametrize("flag", DECLARED_ONCE)
def test_shared_option_is_declared_once(flag):
    assert _declarations(flag) == {"_common.py": 1}


def test_force_is_shared_but_for_models_remove():
    # `models remove --force` overrides the children guard, a different meaning with its own help
    assert _declarations("--force") == {"_common.py": 1, "models.py": 1}


def _commands(group=None, path="llmctl"):
    group = group or root_command()
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if hasattr(command, "commands"):
            yield from _commands(command, f"{path} {name}")


def test_one_meaning_per_short_flag():
    meanings: dict[str, set[str]] = {}
    for _, command in _commands():
        for param in command.params:
            shorts = [o for o in param.opts if o.startswith("-") and not o.startswith("--")]
            longs = [o for o in param.opts if o.startswith("--")]
            for short in shorts:
                meanings.setdefault(short, set()).update(longs)
    assert {s: m for s, m in meanings.items() if len(m) != 1} == {}


def test_every_command_with_a_profile_declares_its_schema():
    for path, command in _commands():
        names = {p.name for p in command.params}
        if "profile" in names:
            assert getattr(command.callback, SCHEMA_ATTR, None), f"{path}: add @schema_options(COMMAND, OPTIONS)"


def test_mapped_options_take_help_bounds_and_default_from_the_schema():
    checked = 0
    for path, command in _commands():
        schema, options = getattr(command.callback, SCHEMA_ATTR, None) or (None, {})
        for param in command.params if schema else []:
            key = option_key(options, param.name)
            if key is None:
                continue
            field = schema_for(schema).field(key)
            text, where = unescape(param.help), f"{path} {param.opts[0]}: {param.help}"
            if field.choices:
                assert all(str(c) in text for c in field.choices), where
            elif field.allowed():
                assert f"({field.allowed()}" in text, where
            if field.default not in (None, []):
                assert f"default {show_default(field.default)})." in text, where
            checked += 1
    assert checked > 100


def test_seed_help_is_each_commands_schema_field():
    helps = {
        path: next(p.help for p in command.params if "--seed" in p.opts)
        for path, command in _commands()
        if any("--seed" in p.opts for p in command.params)
    }
    assert helps["llmctl quantize"] == "Seed for picking windows (default 0)."
    assert helps["llmctl tokenize encode"] == "Seed of the document-level train/val split (default 1234)."
    assert helps["llmctl pretrain"] == "Random seed for init, data order and dropout (default 1234)."


@pytest.mark.parametrize(
    "args",
    [
        ("quantize",),
        ("prune",),
        ("merge-lora", "--adapter", "a"),
        ("finetune", "--data", "d.jsonl"),
        ("pretrain", "--data", "d"),
    ],
)
def test_name_is_required_the_same_way_where_a_model_is_made(cli, args):
    res = cli(*args)
    assert (res.exit_code, res.stderr) == (
        2,
        f"Error: Missing option '--name' / '-n' (see `llmctl {args[0]} --help`)\n",
    )
