"""`llmctl models …` and the CLI conventions (error boundary, exit codes, --json)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_help_lists_commands(cli):
    res = cli("--help")
    assert res.exit_code == 0
    for name in ("models", "profiles", "generate"):
        assert name in res.stdout


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from llmctl.cli.main import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loading_a_model_class_does_not_import_sklearn(tiny_llama_dir):
    """transformers' generation code would import scikit-learn (~2 s) for a feature llmctl never uses."""
    code = (
        "import sys, llmctl; from transformers import AutoModelForCausalLM; "
        f"AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r}); "
        "from transformers.utils import is_sklearn_available; "
        "print('sklearn' in sys.modules, is_sklearn_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_import_hf_dir_show_and_remove(cli, tiny_llama_dir, llmctl_home):
    res = cli("models", "import", tiny_llama_dir, "--name", "t1", "--json")
    assert res.exit_code == 0, res.stderr
    entry = json.loads(res.stdout)
    assert entry["name"] == "t1" and entry["format"] == "hf"
    assert Path(entry["path"]).parent == llmctl_home / "models"
    res = cli("models", "list", "--json")
    assert [e["name"] for e in json.loads(res.stdout)] == ["t1"]
    res = cli("models", "show", "t1", "--json")
    shown = json.loads(res.stdout)
    assert shown["command"].startswith("llmctl models import") and shown["children"] == []
    res = cli("models", "show", "t1")
    assert "t1" in res.stdout and "hf" in res.stdout
    res = cli("models", "remove", "t1", "--delete-files", "--json")
    assert json.loads(res.stdout)["files_deleted"] is True
    assert not Path(entry["path"]).exists()


def test_import_existing_name_needs_force(cli, tiny_llama_dir):
    assert cli("models", "import", tiny_llama_dir, "--name", "t").exit_code == 0
    res = cli("models", "import", tiny_llama_dir, "--name", "t")
    assert res.exit_code == 1
    assert (
        res.stderr
        == "Error: model 't' already exists in the registry; pick another --name or pass --force to replace it\n"
    )
    assert cli("models", "import", tiny_llama_dir, "--name", "t", "--force").exit_code == 0


def test_import_not_a_model(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    res = cli("models", "import", tmp_path, "--name", "x")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {tmp_path} is not a model (no config.json")
    res = cli("models", "import", tmp_path / "notes.txt", "--name", "x")
    assert res.exit_code == 1 and "is not a model" in res.stderr


def test_import_bad_name(cli, tiny_llama_dir):
    for bad in ("a/b", "../up"):
        res = cli("models", "import", tiny_llama_dir, "--name", bad)
        assert res.exit_code == 1
        assert res.stderr.startswith(f"Error: invalid model name {bad!r}")


def test_truncated_safetensors(cli, tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = cli("models", "import", broken, "--name", "b")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: weights file {weights} is truncated")
    res = cli("generate", "--model", broken, "--prompt", "hi")
    assert res.exit_code == 1 and "is truncated" in res.stderr


def test_garbled_safetensors(cli, tiny_llama_dir, tmp_path):
    broken = tmp_path / "garbled"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    res = cli("generate", "--model", broken, "--prompt", "hi")
    assert res.exit_code == 1
    assert "model.safetensors is damaged" in res.stderr


def test_garbled_gguf(cli, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 64)
    res = cli("models", "import", fake, "--name", "g")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: cannot read GGUF file {fake}")


def test_unknown_model_suggests(cli, tiny_model):
    res = cli("models", "show", "tinny")
    assert res.exit_code == 1
    assert res.stderr == (
        "Error: no model named 'tinny' in the registry (did you mean: tiny?); "
        "see `llmctl models list`, or give a path to a model folder\n"
    )


def test_remove_unknown(cli):
    res = cli("models", "remove", "ghost")
    assert res.exit_code == 1 and res.stderr.startswith("Error: no model named 'ghost'")


def test_unwritable_home_cli(cli, monkeypatch):
    monkeypatch.setenv("LLMCTL_HOME", "/proc/llmctl-home")
    res = cli("models", "list")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: LLMCTL_HOME /proc/llmctl-home is not writable")


def test_debug_shows_traceback(cli):
    """--debug lets the real exception through (CliRunner re-raises it) instead of the one-line summary."""
    from llmctl.errors import LlmctlError

    with pytest.raises(LlmctlError, match=r"^no model named 'ghost' in the registry$") as info:
        cli("--debug", "models", "show", "ghost")
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    "exc, line",
    [
        (RuntimeError(""), "Error: RuntimeError (run with --debug for the traceback)"),
        (RuntimeError("\n  \nboom\nmore"), "Error: RuntimeError: boom (run with --debug for the traceback)"),
        (OSError(), "Error: OSError (run with --debug for the traceback)"),
    ],
)
def test_unexpected_errors_give_one_useful_line(cli, monkeypatch, exc, line):
    """The boundary never fails on an empty or multi-line message: one line, the type at least."""
    from llmctl.models.registry import Registry

    def boom(self):
        raise exc

    monkeypatch.setattr(Registry, "list", boom)
    res = cli("models", "list")
    assert (res.exit_code, res.stderr) == (1, line + "\n")


def test_usage_error_exit_2(cli):
    res = cli("models", "show")
    assert res.exit_code == 2
    assert res.stderr == "Error: Missing argument 'name' (see `llmctl models show --help`)\n"


@pytest.mark.default_model
def test_import_builtin_default_converts_once(cli, llmctl_home):
    res = cli("models", "import", "smollm2-135m-instruct", "--json")
    assert res.exit_code == 0, res.stderr
    entry = json.loads(res.stdout)
    path = Path(entry["path"])
    assert entry["format"] == "hf" and entry["meta"]["source_format"] == "gguf"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    # later uses load the converted folder, not the GGUF
    from llmctl.models.resolve import resolve_model

    assert resolve_model("smollm2-135m-instruct").path == str(path)


# ---- a registry that survives its own corruption: models doctor -----------------------------------------------


def _import_two(cli, tiny_llama_dir):
    assert cli("models", "import", tiny_llama_dir, "--name", "a").exit_code == 0
    assert cli("models", "import", tiny_llama_dir, "--name", "b", "--link").exit_code == 0


def test_doctor_on_a_healthy_registry(cli, tiny_llama_dir):
    _import_two(cli, tiny_llama_dir)
    r = cli("models", "doctor", "--json")
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert report["ok"] and report["problems"] == [] and report["entries"] == 2


def test_damaged_index_is_named_and_rebuilt_from_the_folders(cli, tiny_llama_dir, llmctl_home):
    _import_two(cli, tiny_llama_dir)
    assert cli("eval", "--help").exit_code == 0
    db = llmctl_home / "registry.db"
    db.write_bytes(b"this is not a database at all" * 100)
    r = cli("models", "list")
    assert r.exit_code == 1
    assert r.stderr.startswith(
        f"Error: the registry index {db} is damaged (file is not a database); run `llmctl models doctor --fix`"
    )
    assert "Traceback" not in r.stderr
    fixed = cli("models", "doctor", "--fix", "--json")
    assert fixed.exit_code == 0, fixed.stderr
    report = json.loads(fixed.stdout)
    assert report["ok"] and report["backup"] and Path(report["backup"]).read_bytes().startswith(b"this is not")
    names = [e["name"] for e in json.loads(cli("models", "list", "--json").stdout)]
    assert names == ["a"], "the managed entry comes back from its marker (a linked one needs the old index)"
    assert json.loads(cli("models", "show", "a", "--json").stdout)["command"].startswith("llmctl models import")


def test_garbled_row_and_marker_are_reported(cli, tiny_llama_dir, llmctl_home):
    import sqlite3

    _import_two(cli, tiny_llama_dir)
    con = sqlite3.connect(llmctl_home / "registry.db")
    con.execute("UPDATE models SET meta = '{not json' WHERE name = 'b'")
    con.commit()
    con.close()
    r = cli("models", "show", "b")
    assert r.exit_code == 1 and "the row of 'b' is not valid JSON" in r.stderr and "models doctor --fix" in r.stderr
    marker = llmctl_home / "models" / "a" / "llmctl-entry.json"
    marker.write_text("{garbled")
    r = cli("models", "doctor", "--json")
    assert r.exit_code == 1
    problems = json.loads(r.stdout)["problems"]
    assert any(
        "is damaged" in p["problem"]
        and p["where"] == str(llmctl_home / "registry.db")
        or "cannot be read" in p["problem"]
        for p in problems
    )
    assert cli("models", "doctor", "--fix").exit_code in (0, 1)  # the garbled marker cannot be rebuilt
    assert cli("models", "list").exit_code == 0


def test_doctor_finds_missing_files_orphans_and_leftovers(cli, tiny_llama_dir, llmctl_home):
    _import_two(cli, tiny_llama_dir)
    assert cli("models", "import", tiny_llama_dir, "--name", "c").exit_code == 0
    shutil.rmtree(llmctl_home / "models" / "c")
    import sqlite3

    con = sqlite3.connect(llmctl_home / "registry.db")
    con.execute("DELETE FROM models WHERE name = 'a'")  # an index that lost a row: the folder is an orphan
    con.commit()
    con.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = llmctl_home / "models" / f".x.tmp-{int(dead.stdout)}-abc"
    leftover.mkdir()
    report = json.loads(cli("models", "doctor", "--json").stdout)
    problems = {(p["where"], p["problem"]) for p in report["problems"]}
    assert ("c", f"its files are missing ({llmctl_home / 'models' / 'c'})") in problems
    assert ("a", "a model folder that the index does not list") in problems
    assert (str(leftover), "a leftover of a killed run") in problems
    fixed = json.loads(cli("models", "doctor", "--fix", "--json").stdout)
    assert not leftover.exists()
    names = sorted(e["name"] for e in json.loads(cli("models", "list", "--json").stdout))
    assert names == ["a", "b"] and fixed["backup"]
