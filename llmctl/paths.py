"""Where llmctl keeps its data: LLMCTL_HOME and helpers for atomic writes.

Examples:
    home = llmctl_home()          # $LLMCTL_HOME or the per-user data dir
    with atomic_dir(dest) as tmp: # write into tmp; renamed to dest on success
        ...
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.runtime.host import host_id, same_host


def llmctl_home(create: bool = True) -> Path:
    """The llmctl data directory: $LLMCTL_HOME, else the per-user data dir.

    Examples:
        llmctl_home() / "registry.db"
    """
    env = os.environ.get("LLMCTL_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        import platformdirs

        home = Path(platformdirs.user_data_dir("llmctl", appauthor=False))
    if create:
        try:
            home.mkdir(parents=True, exist_ok=True)
            probe = home / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise LlmctlError(
                f"LLMCTL_HOME {home} is not writable ({exc.strerror or exc})",
                hint="set LLMCTL_HOME to a folder you can write to",
            ) from exc
    return home


def ensure_new(path: Path, force: bool, what: str = "output") -> None:
    """Refuse to overwrite an existing path unless force is set.

    Examples:
        ensure_new(Path("out.jsonl"), force=False)
    """
    if path.exists() and not force:
        raise LlmctlError(f"{what} {path} already exists", hint="pick another name or pass --force")


# Every folder llmctl writes as a command's output carries this file, so that `--force` can tell a folder llmctl
# made (and may replace) from one of the user's (which it never deletes). Registry entries carry their own marker,
# which holds the whole entry (llmctl.models.formats writes and reads it).
OUTPUT_MARKER = ".llmctl-output"
ENTRY_MARKER = "llmctl-entry.json"


def mark_output(folder: Path) -> None:
    """Write llmctl's output marker into a folder about to be put in place."""
    (Path(folder) / OUTPUT_MARKER).write_text("written by llmctl; `--force` may replace this folder\n")


def check_replaceable(
    path: Path, what: str = "output", folder: bool | None = None, outside_registry: bool = True
) -> None:
    """Refuse, with one line, to replace an existing path that llmctl did not write (the `--force` rule).

    Replaceable: a folder holding llmctl's output marker or a registry entry's marker, an empty folder, a single
    file (when a file or either is being written), a symbolic link (only the link goes). Never: `/`, the user's
    home folder, LLMCTL_HOME, a folder that holds it, or anything inside its models/ and runs/ (the registry's).
    folder: True when a folder is being written, False for a file, None when either may be. outside_registry:
    the path is a user's output, so the registry's folders are refused too (atomic_dir's own writes there pass False).

    Examples:
        check_replaceable(Path("exports/q8"), "--output", folder=True)
    """
    path = Path(path).expanduser()
    real, home = path.resolve(), llmctl_home(create=False).resolve()
    in_registry = any(real.is_relative_to(home / part) for part in ("models", "runs"))
    if in_registry and any(TEMP_NAME.match(p.name) for p in real.parents):
        return  # inside a registry entry being staged (`--name`): llmctl's own temp folder
    if outside_registry and in_registry:  # new or old: the registry's space
        raise LlmctlError(
            f"{what} {path} is inside llmctl's registry ({home}): outputs never go there",
            hint="pick a path outside LLMCTL_HOME (`llmctl models remove` deletes entries)",
        )
    if path.is_symlink() or not path.exists() or (in_registry and not outside_registry):
        return  # nothing there, a link (only it goes), or llmctl's own space (checkpoints in runs/)
    fix = "pick a new path, or remove it yourself first"
    protected = {Path("/"), Path.home().resolve()}
    if real in protected or home.is_relative_to(real):
        kind = "LLMCTL_HOME or a folder holding it" if home.is_relative_to(real) else "a home or root folder"
        raise LlmctlError(f"{what} {path} is {kind}: --force never replaces it", hint=fix)
    if path.is_dir():
        if (path / OUTPUT_MARKER).is_file() or (path / ENTRY_MARKER).is_file() or not any(path.iterdir()):
            return
        raise LlmctlError(
            f"{what} {path} is a folder llmctl did not write: --force replaces only llmctl's outputs", hint=fix
        )
    if folder:
        raise LlmctlError(f"{what} {path} is a file, and a folder would replace it", hint=fix)


def check_output_path(
    path: Path,
    force: bool = False,
    what: str = "output",
    need_bytes: int = 0,
    folder: bool | None = None,
    registry: bool = False,
) -> Path:
    """Check before any work starts that `path` can be written: refuse what would fail only at the save.

    The parent must exist (or be creatable) as a folder and be writable, nothing that is not a folder may
    stand in the way, an existing path needs `force` and must be one llmctl may replace (check_replaceable),
    and the file system must have `need_bytes` free. registry: the path is a reserved registry folder (the
    reservation decides what it may replace).

    Examples:
        check_output_path(Path("out.jsonl"), force=False)
        check_output_path(Path("models/q4"), force=True, what="output folder", need_bytes=200 * 2**20)
    """
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise LlmctlError(f"{what} {path} already exists", hint="pick another path or pass --force")
    if not registry:
        check_replaceable(path, what, folder)
    parent = path.parent
    probe = parent
    while not probe.exists():  # the first existing ancestor is where the folders would be created
        probe = probe.parent
    if not probe.is_dir():
        raise LlmctlError(
            f"cannot write {what} {path}: {probe} is a file, not a folder",
            hint="pick a path whose parent folders are folders",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LlmctlError(f"cannot write {what} {path}: {probe} is not writable", hint="pick a folder you can write to")
    if need_bytes:
        free = shutil.disk_usage(probe).free
        if free < need_bytes:
            raise LlmctlError(
                f"not enough free disk for {what} {path}: about {need_bytes / 2**20:,.0f} MiB "
                f"needed, {free / 2**20:,.0f} MiB free on {probe}",
                hint="free some space or pick another location",
            )
    return path


# Temp and aside names llmctl writes beside a destination carry the writing process's pid and its host id
# (llmctl.runtime.host: host name and boot), so a later run can tell the leftovers of a killed process on this
# host (pid gone) from the work of one still running here or on another machine sharing LLMCTL_HOME. Names
# without a host id are an older llmctl's (judged by their pid alone, as it did).
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old|del|replaced)-(?P<pid>\d+)-(?:h(?P<host>[0-9a-f]{8})-)?")


def temp_prefix(dest: Path, kind: str = "tmp") -> str:
    """`.NAME.KIND-PID-hHOSTID-`: the prefix of every temp or aside name llmctl writes beside dest.

    Examples:
        temp_prefix(Path("out/model"))          # ".model.tmp-4242-h3f9a0c1d-"
    """
    return f".{Path(dest).name}.{kind}-{os.getpid()}-h{host_id()}-"


def is_stale_temp(name: str, dest_name: str | None = None) -> bool:
    """Whether a file name is a temp/aside name of a dead process of this host (and of dest_name, if given)."""
    m = TEMP_NAME.match(name)
    if not m or (dest_name is not None and m["name"] != dest_name):
        return False
    if m["host"] is not None and not same_host(m["host"]):
        return False  # another host's: its pid cannot be checked from here
    if m["host"] is not None and m["host"] != host_id():
        return True  # this host, an earlier boot: every pid of that boot is gone
    pid = int(m["pid"])
    return pid != os.getpid() and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_path(path: Path) -> None:
    """Delete a file, a folder, or a symlink (the link only, never what it points to)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove leftovers (`.NAME.tmp-PID-*`, `.old-`, `.del-`, `.replaced-`) in folder whose process is gone.

    Only this host's: another machine's temp folder (LLMCTL_HOME on NFS) is never touched. With `name`, only
    those of that destination name.
    """
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        if is_stale_temp(path.name, name):
            delete_path(path)
            removed.append(path)
    return removed


def _fsync_wanted() -> bool:
    # LLMCTL_FSYNC=0 skips the flushes (scratch disks, tmpfs, benchmarks/durability.py's baseline)
    return os.environ.get("LLMCTL_FSYNC", "1") not in ("0", "false", "no")


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under a folder (and the folder itself), to the disk.

    Called before the rename that publishes them: after a power loss a renamed folder must never hold empty or
    short files that the registry lists as complete (the rename can reach the disk before the data does).

    Examples:
        fsync_tree(staged); os.replace(staged, final); fsync_dir(final.parent)
    """
    if not _fsync_wanted():
        return
    path = Path(path)
    if path.is_symlink():
        return
    if path.is_file():
        _fsync_fd(path, os.O_RDONLY)
        return
    for root, dirs, files in os.walk(path):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _fsync_fd(Path(root, name), os.O_RDONLY)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                _fsync_fd(Path(root, name), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    _fsync_fd(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk."""
    if _fsync_wanted():
        _fsync_fd(Path(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_fd(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders (EINVAL): the files were flushed all the same
        pass
    finally:
        os.close(fd)


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process here when LLMCTL_KILL_AT names this point (crash tests of every writer).

    Points: "staged" (an output's files are written in their temp place, not yet renamed into place),
    "checkpoint" (the same for a training checkpoint), "publish" (a registry entry's folder is complete, with
    its marker, just before it is renamed into place and registered).
    """
    if os.environ.get("LLMCTL_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_dir(dest: Path, force: bool = False, point: str = "staged") -> Iterator[Path]:
    """Yield a temp dir beside dest; on success it replaces dest in one rename.

    Leftovers of an earlier killed write to the same dest are removed first.

    Examples:
        with atomic_dir(Path("out/model")) as tmp:
            model.save_pretrained(tmp)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent, dest.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), dir=dest.parent))
    try:
        yield tmp
        kill_point(point)
        mark_output(tmp)
        fsync_tree(tmp)
        if dest.exists() or dest.is_symlink():
            if not force:
                raise LlmctlError(f"{dest} already exists", hint="pick another name or pass --force")
            check_replaceable(dest, "output", folder=True, outside_registry=False)
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(dest, "old"), dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            delete_path(old)
        else:
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(dest: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temp file beside dest for writing; renamed onto dest only if the block succeeds.

    Examples:
        with atomic_file(Path("out.jsonl")) as fh:
            fh.write("{}\\n")
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent, dest.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), dir=dest.parent)
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if _fsync_wanted():
                os.fsync(fh.fileno())
        kill_point("staged")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def dir_size_mb(path: Path) -> float:
    """Size of every file under path, in MiB (2**20 bytes)."""
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return round(total / 2**20, 2)


def weights_size_mb(path: Path) -> float:
    """Size of the weight files under path only (not tokenizer or configs), in MiB."""
    exts = (".safetensors", ".bin", ".pt", ".xml", ".gguf")
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.suffix in exts)
    return round(total / 2**20, 2)
