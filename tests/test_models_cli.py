"""`llmctl models …` and the CLI conventions (error boundary, exit codes, --json)."""

from __future__ import annotations

import json
import shutil
import time
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
    assert res.stderr == "Error: model 't' already exists in the registry; pick another --name or pass --force to replace it\n"
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
    assert res.stderr == ("Error: no model named 'tinny' in the registry (did you mean: tiny?); "
                          "see `llmctl models list`, or give a path to a model folder\n")


def test_remove_unknown(cli):
    res = cli("models", "remove", "ghost")
    assert res.exit_code == 1 and res.stderr.startswith("Error: no model named 'ghost'")


def test_unwritable_home_cli(cli, monkeypatch):
    monkeypatch.setenv("LLMCTL_HOME", "/proc/llmctl-home")
    res = cli("models", "list")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: LLMCTL_HOME /proc/llmctl-home is not writable")


def test_debug_shows_traceback(cli):
    with pytest.raises(Exception):
        cli("--debug", "models", "show", "ghost")


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
    from llmctl.resolve import resolve_model

    assert resolve_model("smollm2-135m-instruct").path == str(path)
