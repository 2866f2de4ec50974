"""The model registry: names → artifacts on disk, with lineage and metrics.

An SQLite index (`$LLMCTL_HOME/registry.db`, `registry_index.py`) plus one folder per model under
`$LLMCTL_HOME/models/<name>`. Every write is one transaction; folders are written to a temp
dir and renamed into place, so parallel processes never see or leave half an entry. Every command
that creates an entry goes through one path: `reserve` (before any work: the name is valid and free)
then `publish` (marker, rename, register, in one step; the staging dir is removed if anything fails).

Examples:
    reg = Registry()
    res = reg.reserve("my-model", force=False)       # refused now, not after an hour of training
    with res.staging() as tmp:                        # a temp dir beside the final folder
        model.save_pretrained(tmp)
        entry = res.publish(ModelEntry(name="my-model", format="hf", path=""), tmp)
    reg.get("my-model").parents
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.models import formats
from llmctl.models.locks import release_name_lock, take_name_lock
from llmctl.models.registry_index import ModelEntry, RegistryIndex
from llmctl.paths import delete_path, fsync_dir, fsync_tree, kill_point, llmctl_home, remove_stale_temps, temp_prefix

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def validate_name(name: str) -> str:
    """Return name if it is a valid registry name, else raise a clear error.

    Examples:
        validate_name("smol-lora")   # ok
        validate_name("../x")        # LlmctlError
    """
    if not name or "/" in name or "\\" in name or ".." in name or not _NAME_RE.match(name):
        raise LlmctlError(
            f"invalid model name {name!r}",
            hint="use letters, digits, '.', '_', '+' or '-' (no '/' or '..'), at most 128 characters",
        )
    return name


class Registry:
    """Access to the registry under LLMCTL_HOME.

    Examples:
        Registry().list()
    """

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else llmctl_home()
        self.models_root = self.home / "models"
        try:
            self.models_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LlmctlError(
                f"cannot create {self.models_root} ({exc.strerror or exc})",
                hint="set LLMCTL_HOME to a folder you can write to",
            ) from exc
        self.db_path = self.home / "registry.db"
        self.index = RegistryIndex(self.db_path)

    def damaged(self, what: str) -> LlmctlError:
        return self.index.damaged(what)

    # ---- reading -------------------------------------------------------------------------

    def list(self) -> list[ModelEntry]:
        """All entries, oldest first."""
        with self.index.connect() as con:
            rows = con.execute("SELECT * FROM models ORDER BY created, name").fetchall()
        return [self.index.entry(r) for r in rows]

    def find(self, name: str) -> ModelEntry | None:
        """The entry called name, or None."""
        with self.index.connect() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return self.index.entry(row) if row else None

    def get(self, name: str) -> ModelEntry:
        """The entry called name; an unknown name is an error listing close matches."""
        entry = self.find(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def unknown(self, name: str) -> LlmctlError:
        names = [e.name for e in self.list()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        msg = f"no model named {name!r} in the registry"
        if close:
            msg += f" (did you mean: {', '.join(close)}?)"
        return LlmctlError(msg, hint="see `llmctl models list`, or give a path to a model folder")

    def children(self, name: str) -> list[str]:
        return [e.name for e in self.list() if name in e.parents]

    # ---- writing -------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        return self.models_root / validate_name(name)

    def reserve(self, name: str, force: bool = False) -> Reservation:
        """Claim `name` for a new entry before any work starts: valid, free (or `force`), folder not in the way.

        Examples:
            res = Registry().reserve("smol-lora", force=False)
        """
        validate_name(name)
        if self.find(name) is not None and not force:
            raise LlmctlError(
                f"model {name!r} already exists in the registry",
                hint="pick another --name or pass --force to replace it",
            )
        folder = self.models_root / name
        if self.find(name) is None and (folder.exists() or folder.is_symlink()) and not force:
            raise LlmctlError(
                f"{folder} exists but is not a registry entry (kept from a removed model?)",
                hint="move it away, pick another --name, or pass --force to replace it",
            )
        remove_stale_temp_dirs(self.models_root)
        return Reservation(self, name, force, take_name_lock(self.models_root, name))

    def add(self, entry: ModelEntry, force: bool = False) -> ModelEntry:
        """Register an entry whose files stay where they are (not managed by llmctl): reserve, then publish.

        Examples:
            Registry().add(ModelEntry(name="tok", format="tokenizer", path="/abs/tok", managed=False))
        """
        entry.managed = False
        return self.reserve(entry.name, force).publish(entry)

    def _add(self, entry: ModelEntry, staged: Path | None, force: bool) -> ModelEntry:
        """Register entry; if staged is given, rename it to the entry's folder in the same lock."""
        validate_name(entry.name)
        formats.get(entry.format)
        final = self.model_dir(entry.name)
        old: Path | None = None
        with self.index.write() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (entry.name,)).fetchone()
            if row is not None:
                if not force:
                    raise LlmctlError(
                        f"model {entry.name!r} already exists in the registry",
                        hint="pick another --name or pass --force to replace it",
                    )
                con.execute("DELETE FROM models WHERE name = ?", (entry.name,))
            if staged is not None:
                if final.exists() or final.is_symlink():
                    if not force:
                        raise LlmctlError(
                            f"{final} exists but is not a registry entry",
                            hint="move it away, pick another --name, or pass --force to replace it",
                        )
                    old = final.with_name(f"{temp_prefix(final, 'old')}{time.time_ns()}")
                    os.replace(final, old)
                os.replace(staged, final)
                fsync_dir(final.parent)
                entry.path = str(final)
                entry.managed = True
            self.index.insert(con, entry)
        if old is not None:
            delete_path(old)
        _report_metrics(entry, entry.metrics, new=True)
        return entry

    def remove(self, name: str, delete_files: bool = False, protect_children: bool = False) -> tuple[ModelEntry, bool]:
        """Drop an entry; with delete_files also its folder. Returns (entry, whether files were deleted).

        Only folders llmctl manages are deleted. A managed entry whose folder is a symlink loses the link,
        never what it points to (that lies outside the registry). With protect_children, the files of a model
        others list as a parent are not deleted (`models remove` without --force); files another entry uses (its
        path lies inside this folder) never are. Kept files are marked `removed` in their marker, so
        `models doctor --fix` leaves them alone.

        Examples:
            Registry().remove("old-run", delete_files=True)
            Registry().remove("base", delete_files=True, protect_children=True)   # refused if others derive from it
        """
        with self.index.write() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise self.unknown(name)
            entry = self.index.entry(row)
            target = Path(entry.path)
            deleting = delete_files and entry.managed and (target.exists() or target.is_symlink())
            if deleting and not target.is_symlink():  # (a link goes, what it points to stays)
                others = con.execute("SELECT name, format, path, parents FROM models WHERE name != ?", (name,))
                _check_deletable(entry, others.fetchall(), protect_children)
            con.execute("DELETE FROM models WHERE name = ?", (name,))
            trash = None
            if deleting:
                trash = target.with_name(f"{temp_prefix(target, 'del')}{time.time_ns()}")
                os.replace(target, trash)
            else:
                _mark_removed(entry)  # in the transaction: if the mark cannot be written, nothing is removed
        deleted = False
        if trash is not None:
            deleted = not trash.is_symlink()
            delete_path(trash)
        return entry, deleted

    def update_metrics(self, name: str, metrics: dict) -> ModelEntry:
        """Merge metrics ({"task.metric": value}) into an entry (index and folder marker)."""
        return self._update(name, "metrics", metrics)

    def update_meta(self, name: str, meta: dict) -> ModelEntry:
        """Merge format-specific facts into an entry's meta (index and folder marker)."""
        return self._update(name, "meta", meta)

    def _update(self, name: str, column: str, values: dict) -> ModelEntry:
        with self.index.write() as con:
            row = con.execute(f"SELECT {column} FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise self.unknown(name)
            merged = {**json.loads(row[0]), **values}
            con.execute(f"UPDATE models SET {column} = ? WHERE name = ?", (json.dumps(merged, default=str), name))
        entry = self.get(name)
        _refresh_marker(entry)
        if column == "metrics":
            _report_metrics(entry, values, new=False)
        return entry


class Reservation:
    """A registry name claimed for a new entry: stage its files, then publish it in one step.

    Examples:
        res = registry.reserve("tiny-q4")
        with res.staging() as tmp:
            save(tmp)
            res.publish(ModelEntry(name="tiny-q4", format="inc-woq", path=""), tmp)
    """

    def __init__(self, registry: Registry, name: str, force: bool, lock: Path | None = None):
        self.registry, self.name, self.force, self.lock = registry, name, force, lock

    @property
    def path(self) -> Path:
        """Where the entry's folder will be once published."""
        return self.registry.model_dir(self.name)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A temp dir beside the final folder (named with this process's pid); removed unless published."""
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(self.path), dir=self.registry.models_root))
        try:
            yield tmp
        except BaseException:
            if self.lock is not None:  # the run failed: its name is free again at once
                release_name_lock(self.lock)
                self.lock = None
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, entry: ModelEntry, staged: Path | None = None, **marker_facts) -> ModelEntry:
        """Write the folder's marker (format, facts, the entry), rename it into place and register the entry.

        Without `staged` the entry points at a folder llmctl does not manage (entry.path), left untouched.
        """
        if entry.name != self.name:
            raise ValueError(f"reservation is for {self.name!r}, not {entry.name!r}")
        if staged is not None:
            entry.path, entry.managed = str(self.path), True
            formats.write_marker(staged, entry.format, entry.to_json(), **marker_facts)
            fsync_tree(staged)  # the files reach the disk before the rename that makes them an entry
            kill_point("publish")
        try:
            return self.registry._add(entry, staged, self.force)
        except LlmctlError as exc:
            if staged is not None and staged.is_dir():  # finished work is never thrown away
                kept = self._keep_unpublished(staged)
                exc.message += f" (the finished files are kept in {kept})"
            raise
        finally:
            if self.lock is not None:
                release_name_lock(self.lock)
                self.lock = None

    def _keep_unpublished(self, staged: Path) -> Path:
        """Move a complete staged folder whose publish failed to models/.unpublished/NAME-TIME."""
        kept = self.registry.models_root / ".unpublished" / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, kept)
        return kept


# Metrics just recorded also go to the experiment tracker (MLflow, W&B) of the run that produced the model, found
# by lineage. The tracker is a service, a layer above the registry: named by string, like the formats table's loaders.
_TRACKING_HOOK = "llmctl.training.tracking:registry_metrics"


def _report_metrics(entry: ModelEntry, metrics: dict, new: bool) -> None:
    if not metrics:
        return
    import importlib

    module, function = _TRACKING_HOOK.split(":")
    getattr(importlib.import_module(module), function)(entry, metrics, new)


def _refresh_marker(entry: ModelEntry) -> None:
    """Keep a managed folder's marker in step with its index row (so `models doctor` can rebuild the index)."""
    folder = Path(entry.path)
    if not entry.managed or not folder.is_dir() or folder.is_symlink():
        return
    try:
        marker = formats.read_marker(folder) or {}
        # a registered entry is not a removed one: a stale `removed` mark (see _mark_removed) goes
        facts = {k: v for k, v in marker.items() if k not in ("format", "entry", "removed")}
        formats.write_marker(folder, entry.format, entry.to_json(), **facts)
    except (LlmctlError, OSError):
        pass  # the index is the source of truth; doctor reports a marker it cannot read


def _mark_removed(entry: ModelEntry) -> None:
    """Record in a kept folder's marker that `models remove` dropped it: `models doctor --fix` must not re-add it.

    A mark in the marker (rather than moving or renaming the folder or its marker) keeps the files where remove
    said they are, and keeps the marker's format facts, so re-importing the folder still works.
    """
    folder = Path(entry.path)
    if not entry.managed or folder.is_symlink() or not folder.is_dir():
        return
    try:
        marker = formats.read_marker(folder) or {}
    except LlmctlError:
        marker = {}  # damaged: rewritten from the index row
    facts = {k: v for k, v in marker.items() if k not in ("format", "entry", "removed")}
    try:
        formats.write_marker(folder, entry.format, entry.to_json(), removed=time.time(), **facts)
    except OSError as exc:
        raise LlmctlError(
            f"cannot mark {folder} as removed ({exc.strerror or exc}); {entry.name!r} stays registered",
            hint=f"make the folder writable, or delete it: `llmctl models remove {entry.name} --delete-files`",
        ) from exc


def _check_deletable(entry: ModelEntry, others: list[tuple], protect_children: bool) -> None:
    """Refuse to delete files other entries use, and (protect_children) those of a model others derive from."""
    folder = Path(entry.path).resolve()
    users, children = [], []
    for name, fmt, path, parents in others:
        if _inside(Path(path), folder):  # a --link entry inside it, or a folder that is a link into it
            users.append(name)
        with contextlib.suppress(TypeError, ValueError):
            if entry.name in json.loads(parents):
                children.append(
                    f"{name} (an adapter: it loads on top of {entry.name})" if fmt == "peft-adapter" else name
                )
    if users:
        raise LlmctlError(
            f"{', '.join(users)} {'use' if len(users) > 1 else 'uses'} files in {folder}, the folder of "
            f"{entry.name!r}: deleting it would break them",
            hint=f"remove them first, or keep the files: `llmctl models remove {entry.name}`",
        )
    if children and protect_children:
        raise LlmctlError(
            f"{', '.join(children)} {'were' if len(children) > 1 else 'was'} derived from {entry.name!r}",
            hint=f"pass --force to delete the files of {entry.name} anyway (each derived model keeps its own "
            "folder), or remove those first",
        )


def _inside(path: Path, folder: Path) -> bool:
    real = path.resolve()
    return real == folder or folder in real.parents


def remove_stale_temp_dirs(root: Path) -> list[Path]:
    """Leftovers of killed writers under models/ (their pid is gone)."""
    return remove_stale_temps(root)
