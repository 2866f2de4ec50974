"""Registry: entries, lineage, names, atomicity and parallel writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import LlmctlError
from llmctl.registry import ModelEntry, Registry, validate_name


def test_add_get_list_remove(tmp_path):
    reg = Registry()
    with reg.new_model_dir("a") as tmp:
        (tmp / "config.json").write_text("{}")
        reg.add(ModelEntry(name="a", format="hf", path="", command="llmctl x", profile={"k": 1}), staged=tmp)
    reg.add(ModelEntry(name="b", format="peft-adapter", path=str(tmp_path), parents=["a"], managed=False))
    assert [e.name for e in reg.list()] == ["a", "b"]
    a = reg.get("a")
    assert Path(a.path).is_dir() and (Path(a.path) / "config.json").is_file()
    assert a.profile == {"k": 1} and a.command == "llmctl x"
    assert reg.children("a") == ["b"]
    reg.update_metrics("a", {"hellaswag.acc": 0.4})
    assert reg.get("a").metrics == {"hellaswag.acc": 0.4}
    reg.remove("a", delete_files=True)
    assert not Path(a.path).exists() and reg.find("a") is None
    reg.remove("b", delete_files=True)
    assert tmp_path.exists(), "a model registered in place is never deleted"


@pytest.mark.parametrize("bad", ["a/b", "..", "../x", "", "x" * 200, "-lead"])
def test_invalid_names(bad):
    with pytest.raises(LlmctlError, match="invalid model name"):
        validate_name(bad)


def test_unknown_name_lists_close_matches():
    reg = Registry()
    reg.add(ModelEntry(name="smol-lora", format="hf", path="/x", managed=False))
    with pytest.raises(LlmctlError) as info:
        reg.get("smol-lra")
    assert "did you mean: smol-lora" in info.value.message
    assert "llmctl models list" in info.value.hint


def test_duplicate_needs_force():
    reg = Registry()
    reg.add(ModelEntry(name="x", format="hf", path="/x", managed=False))
    with pytest.raises(LlmctlError, match="already exists"):
        reg.add(ModelEntry(name="x", format="hf", path="/y", managed=False))
    reg.add(ModelEntry(name="x", format="hf", path="/y", managed=False), force=True)
    assert reg.get("x").path == "/y"


def test_failed_staging_leaves_nothing(llmctl_home):
    reg = Registry()
    with pytest.raises(RuntimeError):
        with reg.new_model_dir("half") as tmp:
            (tmp / "weights").write_text("partial")
            raise RuntimeError("disk full")
    assert reg.find("half") is None
    assert [p.name for p in (llmctl_home / "models").iterdir()] == []


def test_unwritable_home(monkeypatch, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setenv("LLMCTL_HOME", str(ro / "home"))
    if os.access(ro, os.W_OK):  # root ignores permissions
        monkeypatch.setenv("LLMCTL_HOME", "/proc/llmctl-home")
    with pytest.raises(LlmctlError, match="is not writable"):
        Registry()


def test_parallel_imports_and_removes_lose_nothing(tmp_path, tiny_llama_dir, llmctl_home):
    """16 processes importing (and some removing) at once: every surviving entry is intact."""
    Registry()  # create the db
    script = (
        "import sys; from llmctl.model_import import import_model; from llmctl.registry import Registry;"
        "i=int(sys.argv[1]); reg=Registry();"
        "import_model(reg, sys.argv[2], f'm{i}', link=(i % 2 == 0));"
        "import_model(reg, sys.argv[2], f'tmp{i}', link=True); reg.remove(f'tmp{i}')"
    )
    env = {**os.environ, "LLMCTL_HOME": str(llmctl_home)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(tiny_llama_dir)], env=env)
             for i in range(16)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    names = sorted(e.name for e in Registry().list())
    assert names == sorted(f"m{i}" for i in range(16))
    for e in Registry().list():
        assert (Path(e.path) / "config.json").is_file()
    leftovers = [p.name for p in (llmctl_home / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []
