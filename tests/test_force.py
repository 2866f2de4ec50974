"""`--force` replaces only what llmctl wrote (issue 24): never LLMCTL_HOME, a folder holding it, the registry's
folders, a home or root folder, or a non-empty folder llmctl did not make; side files follow their output.

Each test runs the command as a user would (CLI, real files) and checks the user's files byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder (links as their target) with its sha256: equal snapshots = nothing changed."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            p = Path(root, name)
            key = str(p.relative_to(folder))
            out[key] = f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _export(cli, model, output, *extra):
    return cli("export", "--model", model, "--format", "hf", "--output", output, "--no-check", *extra)


def test_export_force_onto_llmctl_home_is_refused_and_the_registry_is_unchanged(cli, tiny_model, llmctl_home):
    before = snapshot(llmctl_home)
    r = _export(cli, tiny_model, llmctl_home, "--force")
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("Error: output ") and "LLMCTL_HOME" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the error and its hint
    assert snapshot(llmctl_home) == before
    r = _export(cli, tiny_model, llmctl_home.parent, "--force")  # a folder holding LLMCTL_HOME
    assert r.exit_code == 1 and "LLMCTL_HOME" in r.stderr
    r = _export(cli, tiny_model, llmctl_home / "models" / tiny_model, "--force")
    assert r.exit_code == 1 and "registry" in r.stderr
    assert snapshot(llmctl_home) == before


def test_export_force_onto_a_users_folder_is_refused(cli, tiny_model, tmp_path):
    exports = tmp_path / "exports"
    (exports / "older").mkdir(parents=True)
    (exports / "older" / "notes.txt").write_text("my notes")
    before = snapshot(exports)
    r = _export(cli, tiny_model, exports, "--force")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: output {exports} is a folder llmctl did not write")
    assert snapshot(exports) == before
    home = Path.home()
    r = _export(cli, tiny_model, home, "--force")
    assert r.exit_code == 1 and "home or root" in r.stderr


def test_export_force_replaces_llmctls_own_output_and_empty_folders(cli, tiny_model, tmp_path):
    out = tmp_path / "hf-export"
    assert _export(cli, tiny_model, out).exit_code == 0
    assert (out / ".llmctl-output").is_file() and (out / "config.json").is_file()
    r = _export(cli, tiny_model, out)
    assert r.exit_code == 1 and "already exists" in r.stderr  # no --force: refused as before
    assert _export(cli, tiny_model, out, "--force").exit_code == 0  # llmctl's own: replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export(cli, tiny_model, empty, "--force").exit_code == 0


def test_tokenize_encode_force_onto_a_users_folder_is_refused(cli, tmp_path, tiny_llama_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("one line of text\n" * 50)
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.bin").write_bytes(b"\x00\x01")
    before = snapshot(data)
    r = cli("tokenize", "encode", "--tokenizer", tiny_llama_dir, "--input", text, "--output", data, "--force")
    assert r.exit_code == 1 and "did not write" in r.stderr
    assert snapshot(data) == before


@pytest.mark.parametrize("side", [".config.yaml"])
def test_generate_side_file_needs_force(cli, tiny_model, tmp_path, side):
    out = tmp_path / "out.jsonl"
    (tmp_path / f"out.jsonl{side}").write_text("mine")
    r = cli("generate", "--model", tiny_model, "--prompt", "hi", "--max-new-tokens", "2", "--output", out)
    assert r.exit_code == 1 and "already exists" in r.stderr and not out.exists()
    assert (tmp_path / f"out.jsonl{side}").read_text() == "mine"
    r = cli("generate", "--model", tiny_model, "--prompt", "hi", "--max-new-tokens", "2", "--output", out, "--force")
    assert r.exit_code == 0 and out.exists()
