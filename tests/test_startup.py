"""Start-up cost (issue 27): the lazy command group, and the lean-import shims for transformers.

Timings are not asserted (benchmarks/startup.py measures them); these tests check that the shortcuts change
nothing a user sees: the same --help text, the same import structure, scipy still there when called.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import typer


def _root():
    from llmctl.cli.main import app

    return typer.main.get_command(app)


def test_each_summary_is_the_first_paragraph_of_its_commands_help():
    from llmctl.cli.main import COMMANDS, build_command

    for name, (_, _, summary) in COMMANDS.items():
        command = build_command(name)
        assert command.name == name
        first = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert first == summary, f"update COMMANDS[{name!r}] in commands/main.py to the docstring's: {first!r}"


def _help_text(group, capsys) -> str:
    try:
        group.main(["--help"], prog_name="llmctl")
    except SystemExit as exc:
        assert exc.code == 0
    return capsys.readouterr().out


def test_root_help_from_summaries_equals_the_help_with_every_command_built(capsys):
    lazy = _root()
    text = _help_text(lazy, capsys)
    assert not lazy.commands._built  # the command list came from the summaries alone
    built = _root()
    for name in list(built.commands):
        built.commands[name]  # builds it: the command list now comes from the real commands
    assert set(built.commands._built) == set(built.commands)
    assert _help_text(built, capsys) == text
    assert "tokenize" in text and "Generate text with a model" in text


def test_commands_keep_their_order_and_unknown_names_fail_as_before(cli):
    assert list(_root().commands)[:3] == ["generate", "finetune", "merge-lora"]
    res = cli("nosuch")
    assert res.exit_code == 2
    assert "No such command 'nosuch'" in res.stderr


def _modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        f"sys.argv = {['llmctl', *argv]!r}\n"
        "from llmctl.cli._entry import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stderr.rsplit("MODULES ", 1)[1].split())


def test_help_builds_no_command_and_a_command_builds_only_itself():
    mods = _modules_after(["--help"])
    assert not {m for m in mods if m.startswith("llmctl.cli.") and m not in ("llmctl.cli.main", "llmctl.cli._entry")}
    assert "torch" not in mods
    mods = _modules_after(["profiles", "list"])
    assert "llmctl.cli.profiles" in mods and "llmctl.cli.generate" not in mods and "rich.syntax" not in mods


def test_lineage_still_records_the_command_line(cli, tiny_llama_dir):
    res = cli("models", "import", tiny_llama_dir, "--name", "t1", "--link", "--json")
    assert res.exit_code == 0, res.stderr
    shown = json.loads(cli("models", "show", "t1", "--json").stdout)
    assert shown["command"].startswith("llmctl models import") and "--name t1" in shown["command"]


def test_a_model_load_skips_scipy_and_the_detection_losses_still_reach_it(tiny_llama_dir, tmp_path):
    code = (
        "import sys, llmctl; from transformers import AutoModelForCausalLM; "
        f"AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r}); "
        "print('scipy' in sys.modules); "
        "import transformers.loss.loss_for_object_detection as m, transformers.utils.import_utils as f; "
        "print(f.is_scipy_available()); "
        "print(m.linear_sum_assignment([[4, 1, 3], [2, 0, 5], [3, 2, 2]])[1].tolist())"
    )
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split("\n")[:3] == ["False", "True", "[1, 0, 2]"]  # scipy's optimal assignment


def test_the_import_structure_cache_equals_transformers_own_scan(tmp_path):
    code = (
        "import json, os, llmctl, transformers, transformers.utils.import_utils as iu\n"
        "models = os.path.join(os.path.dirname(transformers.__file__), 'models')\n"
        "cached = iu.create_import_structure_from_path(models)\n"
        "scan = next(c.cell_contents for c in iu.create_import_structure_from_path.__closure__\n"
        "            if hasattr(c.cell_contents, 'cache_clear'))\n"
        "scan.cache_clear()\n"
        "print(cached == scan(models), transformers.LlamaForCausalLM.__name__)\n"
    )
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path)}
    for _ in range(2):  # the first run writes the cache, the second reads it
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert out.stdout.split() == ["True", "LlamaForCausalLM"]
        assert len(list((tmp_path / "cache").glob("transformers-imports-*.json"))) == 1


def test_the_fingerprint_follows_the_files(tmp_path):
    from llmctl.runtime.lean_imports import _decode, _encode, _fingerprint

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.py").write_text("x = 1\n")
    before = _fingerprint(str(tmp_path))
    (tmp_path / "a" / "n.py").write_text("y = 2\n")
    assert _fingerprint(str(tmp_path)) != before
    structure = {"albert": {frozenset({"tokenizers"}): {"tok": {"A", "B"}}, frozenset(): {"cfg": {"C"}}}}
    assert _decode(json.loads(json.dumps(_encode(structure)))) == structure
