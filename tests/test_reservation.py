"""Names reserved for real, temp folders judged per host, writes flushed before they are published (issue 24).

A second run of a name in progress is refused in its first seconds (subprocesses, real lock files); a dead
owner's lock is taken over; another host's temp folder is never removed; a publish that fails keeps the
finished files; every file of a published entry is fsynced before the rename.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from llmctl.models.registry import Registry
res = Registry().reserve(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def _holder(name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, name], stdout=subprocess.PIPE, text=True, env=os.environ)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _llmctl(*args, timeout=120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("llmctl")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=os.environ)


def test_a_name_in_progress_is_refused_at_once_and_taken_over_once_its_owner_is_gone(tiny_llama_dir, llmctl_home):
    holder = _holder("tiny-q")
    try:
        started = time.perf_counter()
        for force in ([], ["--force"]):  # --force never takes a name from a run in progress
            r = _llmctl("models", "import", tiny_llama_dir, "--name", "tiny-q", *force)
            assert r.returncode == 1, r.stderr
            line = r.stderr.strip().splitlines()[-1]
            assert line.startswith(f"Error: tiny-q is being made by pid {holder.pid} on "), line
            assert "wait for it or pick another --name" in line
        assert time.perf_counter() - started < 60  # refused in its first seconds, not after the work
        assert not (llmctl_home / "models" / "tiny-q").exists()
    finally:
        holder.kill()
        holder.wait()
    r = _llmctl("models", "import", tiny_llama_dir, "--name", "tiny-q")  # the dead owner's lock is taken over
    assert r.returncode == 0, r.stderr
    assert (llmctl_home / "models" / "tiny-q" / "config.json").is_file()
    assert not (llmctl_home / "models" / ".tiny-q.lock").exists()  # released at publish


def test_a_failed_publish_keeps_the_finished_files(llmctl_home, tmp_path):
    from llmctl.errors import LlmctlError
    from llmctl.models.registry import ModelEntry, Registry

    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.json").write_text("{}")
    registry = Registry()
    res = registry.reserve("twice")
    with res.staging() as staged:
        (staged / "weights.bin").write_bytes(b"\x01" * 1000)
        registry.add(ModelEntry(name="twice", format="hf", path=str(other)))  # the name taken meanwhile
        with pytest.raises(LlmctlError) as exc:
            res.publish(ModelEntry(name="twice", format="hf", path=""), staged)
    assert "already exists" in exc.value.message and "finished files are kept in" in exc.value.message
    (kept,) = (llmctl_home / "models" / ".unpublished").iterdir()
    assert kept.name.startswith("twice-") and (kept / "weights.bin").read_bytes() == b"\x01" * 1000


def test_the_cleaner_removes_only_this_hosts_dead_leftovers(tmp_path, monkeypatch):
    from llmctl.paths import remove_stale_temps
    from llmctl.runtime import host

    ours = host.host_id()
    other_host = ("0000" if ours[:4] != "0000" else "1111") + ours[4:]
    earlier_boot = ours[:4] + ("0000" if ours[4:] != "0000" else "1111")
    dead = 2**22 + 12345  # above Linux's default pid_max (4,194,304): no such process
    made = {
        "other_host": tmp_path / f".m.tmp-{dead}-h{other_host}-x1",
        "alive_here": tmp_path / f".m.tmp-{os.getpid()}-h{ours}-x2",
        "dead_here": tmp_path / f".m.tmp-{dead}-h{ours}-x3",
        "earlier_boot": tmp_path / f".m.tmp-{os.getppid()}-h{earlier_boot}-x4",
    }
    for path in made.values():
        path.mkdir()
        (path / "shard.bin").write_bytes(b"work")
    removed = {p.name for p in remove_stale_temps(tmp_path)}
    assert removed == {made["dead_here"].name, made["earlier_boot"].name}
    assert (made["other_host"] / "shard.bin").read_bytes() == b"work"  # node B never deletes node A's work
    assert (made["alive_here"] / "shard.bin").read_bytes() == b"work"


def test_a_published_entry_is_flushed_to_disk_before_its_rename(tiny_llama_dir, llmctl_home, monkeypatch):
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    synced, real = [], os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    import_model(Registry(), str(tiny_llama_dir), "flushed")
    folder = llmctl_home / "models" / "flushed"
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    flushed = {Path(p).name for p in synced}
    assert files <= flushed, files - flushed  # every file (their temp names end in the same file name)
    assert str(folder.parent) in synced  # and the rename itself
