"""Where llmctl keeps its data: LLMCTL_HOME and helpers for atomic writes.

Examples:
    home = llmctl_home()          # $LLMCTL_HOME or the per-user data dir
    with atomic_dir(dest) as tmp: # write into tmp; renamed to dest on success
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from llmctl.errors import LlmctlError


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


@contextlib.contextmanager
def atomic_dir(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside dest; on success it replaces dest in one rename.

    Examples:
        with atomic_dir(Path("out/model")) as tmp:
            model.save_pretrained(tmp)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            if not force:
                raise LlmctlError(f"{dest} already exists", hint="pick another name or pass --force")
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
