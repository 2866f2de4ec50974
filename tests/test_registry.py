"""Registry: entries, lineage, names, atomicity and parallel writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import LlmctlError
from llmctl.models.registry import ModelEntry, Registry, validate_name


def _publish(reg, name, fmt="hf", force=False, **fields):
    res = reg.reserve(name, force)
    with res.staging() as tmp:
        (tmp / "config.json").write_text("{}")
        return res.publish(ModelEntry(name=name, format=fmt, path="", **fields), tmp)


def _link(reg, name, path, force=False, **fields):
    return reg.reserve(name, force).publish(ModelEntry(name=name, path=str(path), managed=False, **fields))


def test_add_get_list_remove(tmp_path):
    reg = Registry()
    _publish(reg, "a", command="llmctl x", profile={"k": 1})
    _link(reg, "b", tmp_path, format="peft-adapter", parents=["a"])
    assert [e.name for e in reg.list()] == ["a", "b"]
    a = reg.get("a")
    assert Path(a.path).is_dir() and (Path(a.path) / "config.json").is_file()
    assert a.profile == {"k": 1} and a.command == "llmctl x"
    assert reg.children("a") == ["b"]
    reg.update_metrics("a", {"hellaswag.acc": 0.4})
    assert reg.get("a").metrics == {"hellaswag.acc": 0.4}
    marker = json.loads((Path(a.path) / "llmctl-entry.json").read_text())
    assert marker["format"] == "hf" and marker["entry"]["metrics"] == {"hellaswag.acc": 0.4}
    assert marker["entry"]["command"] == "llmctl x"
    assert reg.remove("a", delete_files=True)[1] is True
    assert not Path(a.path).exists() and reg.find("a") is None
    assert reg.remove("b", delete_files=True)[1] is False
    assert tmp_path.exists(), "a model registered in place is never deleted"


def test_reserve_refuses_a_kept_folder_of_a_removed_entry(llmctl_home):
    """`models remove` keeps the files; a new entry of that name must not delete them without --force."""
    reg = Registry()
    entry = _publish(reg, "kept")
    reg.remove("kept")
    (Path(entry.path) / "my-notes.txt").write_text("mine")
    with pytest.raises(LlmctlError, match="exists but is not a registry entry"):
        reg.reserve("kept")
    assert (Path(entry.path) / "my-notes.txt").read_text() == "mine"
    _publish(reg, "kept", force=True)
    assert not (Path(entry.path) / "my-notes.txt").exists()


def test_remove_symlinked_entry_removes_the_link_only(llmctl_home, tmp_path):
    reg = Registry()
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("{}")
    entry = _publish(reg, "linked")
    import shutil

    shutil.rmtree(entry.path)
    os.symlink(real, entry.path)
    removed, deleted = reg.remove("linked", delete_files=True)
    assert deleted is False and (real / "config.json").is_file()
    assert [p.name for p in (llmctl_home / "models").iterdir()] == []


def test_stale_temp_dirs_of_dead_processes_are_removed(llmctl_home):
    reg = Registry()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = llmctl_home / "models" / f".x.tmp-{pid}-abc"
    stale.mkdir(parents=True)
    mine = llmctl_home / "models" / f".y.tmp-{os.getpid()}-abc"
    mine.mkdir()
    reg.reserve("z")
    assert not stale.exists() and mine.exists()
    mine.rmdir()


@pytest.mark.parametrize("bad", ["a/b", "..", "../x", "", "x" * 200, "-lead"])
def test_invalid_names(bad):
    with pytest.raises(LlmctlError, match="invalid model name"):
        validate_name(bad)


def test_unknown_name_lists_close_matches():
    reg = Registry()
    _link(reg, "smol-lora", "/x", format="hf")
    with pytest.raises(LlmctlError) as info:
        reg.get("smol-lra")
    assert "did you mean: smol-lora" in info.value.message
    assert "llmctl models list" in info.value.hint


def test_duplicate_needs_force():
    reg = Registry()
    _link(reg, "x", "/x", format="hf")
    with pytest.raises(LlmctlError, match="already exists"):
        _link(reg, "x", "/y", format="hf")
    _link(reg, "x", "/y", force=True, format="hf")
    assert reg.get("x").path == "/y"


def test_unknown_format_is_refused():
    with pytest.raises(LlmctlError, match="unknown model format 'weird'"):
        _link(Registry(), "x", "/x", format="weird")


def test_failed_staging_leaves_nothing(llmctl_home):
    reg = Registry()
    with pytest.raises(RuntimeError):
        with reg.reserve("half").staging() as tmp:
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
        "import sys; from llmctl.models.importer import import_model; from llmctl.models.registry import Registry;"
        "i=int(sys.argv[1]); reg=Registry();"
        "import_model(reg, sys.argv[2], f'm{i}', link=(i % 2 == 0));"
        "import_model(reg, sys.argv[2], f'tmp{i}', link=True); reg.remove(f'tmp{i}')"
    )
    env = {**os.environ, "LLMCTL_HOME": str(llmctl_home)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(tiny_llama_dir)], env=env) for i in range(16)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    names = sorted(e.name for e in Registry().list())
    assert names == sorted(f"m{i}" for i in range(16))
    for e in Registry().list():
        assert (Path(e.path) / "config.json").is_file()
    leftovers = [p.name for p in (llmctl_home / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []
