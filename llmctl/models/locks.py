"""Name reservations that hold: a lock file per registry name being made, with its owner's host, pid and start.

`Registry.reserve(name)` takes `models/.NAME.lock` with an exclusive create before any work starts, so a second
run of the same `--name` is refused in its first seconds instead of finishing its work and losing it at
publish. The lock is released when the entry is published or the process ends. A lock whose process is gone
(same host: pid not alive, or an earlier boot) is taken over; another host's lock is never taken over (its pid
cannot be checked from here): the refusal names the file to delete if no such run is going on. `--force`
replaces a finished entry, never one in progress.

Examples:
    path = take_name_lock(models_root, "smol-q4")    # raises LlmctlError while another run makes smol-q4
    release_name_lock(path)
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.paths import pid_alive
from llmctl.runtime.host import host_id, hostname, same_host

_HELD: dict[Path, int] = {}  # this process's locks and how often each was taken (reserve inside reserve)


def lock_path(models_root: Path, name: str) -> Path:
    return Path(models_root) / f".{name}.lock"


def take_name_lock(models_root: Path, name: str) -> Path:
    """Create the name's lock file (exclusive), taking over a dead owner's; refuse a live one's."""
    path = lock_path(models_root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner(path)
            if owner is None:  # being written by its taker this instant, or empty: look again shortly
                time.sleep(0.05)
                continue
            if owner.get("pid") == os.getpid() and owner.get("host_id") == host_id():
                _HELD[path] = _HELD.get(path, 0) + 1
                return path  # this process already holds it (a command that reserves twice)
            if _owner_gone(owner):
                _set_aside(path)
                continue
            raise _refusal(name, owner, path) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(_me(), fh)
        _HELD[path] = 1
        return path
    raise LlmctlError(f"could not take the lock {path} for {name!r}", hint=f"delete {path} if no run makes {name}")


def release_name_lock(path: Path) -> None:
    """Give back one taking of this process's lock; the file goes with the last (never another process's)."""
    path = Path(path)
    if _HELD.get(path, 0) > 1:
        _HELD[path] -= 1
        return
    _HELD.pop(path, None)
    owner = _read_owner(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host_id") == host_id():
        path.unlink(missing_ok=True)


@atexit.register
def release_all() -> None:
    """Give back every lock this process holds (its command ended: the CLI's error boundary, or process exit)."""
    for path in list(_HELD):
        _HELD[path] = 1
        release_name_lock(path)


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": hostname(),
        "host_id": host_id(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:500],
    }


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _owner_gone(owner: dict) -> bool:
    other = str(owner.get("host_id", ""))
    if not same_host(other):
        return False
    if other != host_id():
        return True  # this host, an earlier boot
    pid = owner.get("pid")
    return isinstance(pid, int) and not pid_alive(pid)


def _set_aside(path: Path) -> None:
    """Move a dead owner's lock away in one rename (of two racing takers, one wins; the other retries)."""
    try:
        os.replace(path, path.with_name(f"{path.name}.stale-{os.getpid()}-{time.time_ns()}"))
    except FileNotFoundError:
        return
    for old in path.parent.glob(f"{path.name}.stale-{os.getpid()}-*"):
        old.unlink(missing_ok=True)


def _refusal(name: str, owner: dict, path: Path) -> LlmctlError:
    where = owner.get("host", "?")
    return LlmctlError(
        f"{name} is being made by pid {owner.get('pid', '?')} on {where} since {owner.get('started', '?')}",
        hint=f"wait for it or pick another --name (if no such run is going on, delete {path})",
    )
