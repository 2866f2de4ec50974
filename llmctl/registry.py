"""The model registry: names → artifacts on disk, with lineage and metrics.

An SQLite index (`$LLMCTL_HOME/registry.db`) plus one folder per model under
`$LLMCTL_HOME/models/<name>`. Every write is one transaction; folders are written to a temp
dir and renamed into place, so parallel processes never see or leave half an entry.

Examples:
    reg = Registry()
    with reg.new_model_dir("my-model") as tmp:      # write files into tmp
        model.save_pretrained(tmp)
    reg.add(ModelEntry(name="my-model", format="hf", path=str(reg.model_dir("my-model"))))
    reg.get("my-model").parents
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from llmctl.errors import LlmctlError
from llmctl.paths import llmctl_home

# Formats the registry knows. Loaders for each live in llmctl/loading.py.
FORMATS = ("hf", "peft-adapter", "tokenizer", "inc-woq", "inc-int8", "openvino", "bnb", "data")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name     TEXT PRIMARY KEY,
    format   TEXT NOT NULL,
    path     TEXT NOT NULL,
    created  REAL NOT NULL,
    parents  TEXT NOT NULL DEFAULT '[]',   -- JSON list of registry names
    command  TEXT NOT NULL DEFAULT '',     -- the command line that produced it
    profile  TEXT NOT NULL DEFAULT '{}',   -- JSON: the resolved config of that run
    metrics  TEXT NOT NULL DEFAULT '{}',   -- JSON: {"task.metric": value, ...}
    meta     TEXT NOT NULL DEFAULT '{}',   -- JSON: format-specific facts (bits, sizes, ...)
    managed  INTEGER NOT NULL DEFAULT 1    -- 1 when the folder lives under LLMCTL_HOME/models
);
"""


@dataclass
class ModelEntry:
    """One registry entry.

    Examples:
        ModelEntry(name="tiny", format="hf", path="/x/tiny", parents=["base"])
    """

    name: str
    format: str
    path: str
    created: float = field(default_factory=time.time)
    parents: list[str] = field(default_factory=list)
    command: str = ""
    profile: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    managed: bool = True

    def to_json(self) -> dict:
        return asdict(self)


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
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so writers serialize
        # instead of failing with "database is locked"; timeout in seconds.
        try:
            con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise LlmctlError(f"cannot open registry {self.db_path}: {exc}",
                              hint="check LLMCTL_HOME is a writable folder") from exc
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            for attempt in range(50):
                try:
                    con.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise LlmctlError(f"registry {self.db_path} stayed locked", hint="retry the command")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ---- reading -------------------------------------------------------------------------

    @staticmethod
    def _row(row: tuple) -> ModelEntry:
        name, fmt, path, created, parents, command, profile, metrics, meta, managed = row
        return ModelEntry(name, fmt, path, created, json.loads(parents), command,
                          json.loads(profile), json.loads(metrics), json.loads(meta), bool(managed))

    def list(self) -> list[ModelEntry]:
        """All entries, oldest first."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM models ORDER BY created, name").fetchall()
        return [self._row(r) for r in rows]

    def find(self, name: str) -> ModelEntry | None:
        """The entry called name, or None."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return self._row(row) if row else None

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

    @contextlib.contextmanager
    def new_model_dir(self, name: str, force: bool = False) -> Iterator[Path]:
        """Yield a temp dir to fill; `add` later moves it into place atomically.

        Examples:
            with reg.new_model_dir("x") as tmp:
                save(tmp)
                reg.add(entry, staged=tmp)
        """
        validate_name(name)
        if not force and self.find(name) is not None:
            raise LlmctlError(f"model {name!r} already exists in the registry",
                              hint="pick another --name or pass --force to replace it")
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.models_root))
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def add(self, entry: ModelEntry, staged: Path | None = None, force: bool = False) -> ModelEntry:
        """Register entry; if staged is given, rename it to the entry's folder in the same lock.

        Examples:
            reg.add(ModelEntry(name="x", format="hf", path="/abs/x"), force=False)
        """
        validate_name(entry.name)
        if entry.format not in FORMATS:
            raise LlmctlError(f"unknown model format {entry.format!r}", hint=f"use one of {', '.join(FORMATS)}")
        final = self.model_dir(entry.name)
        old_dir: Path | None = None
        with self._write() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (entry.name,)).fetchone()
            if row is not None:
                if not force:
                    raise LlmctlError(f"model {entry.name!r} already exists in the registry",
                                      hint="pick another --name or pass --force to replace it")
                con.execute("DELETE FROM models WHERE name = ?", (entry.name,))
            if staged is not None:
                if final.exists():
                    old_dir = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
                    os.replace(final, old_dir)
                os.replace(staged, final)
                entry.path = str(final)
                entry.managed = True
            con.execute(
                "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
                (entry.name, entry.format, entry.path, entry.created, json.dumps(entry.parents),
                 entry.command, json.dumps(entry.profile, default=str), json.dumps(entry.metrics),
                 json.dumps(entry.meta, default=str), int(entry.managed)),
            )
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
        return entry

    def remove(self, name: str, delete_files: bool = False) -> ModelEntry:
        """Drop an entry; with delete_files also its folder (only if managed by llmctl)."""
        with self._write() as con:
            row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise self.unknown(name)
            entry = self._row(row)
            con.execute("DELETE FROM models WHERE name = ?", (name,))
            trash = None
            # Only folders llmctl manages are deleted; a model registered in place stays put.
            if delete_files and entry.managed and Path(entry.path).exists():
                target = Path(entry.path)
                trash = target.with_name(f".{target.name}.del-{os.getpid()}-{time.time_ns()}")
                os.replace(target, trash)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink()
        return entry

    def update_metrics(self, name: str, metrics: dict) -> ModelEntry:
        """Merge metrics ({"task.metric": value}) into an entry."""
        with self._write() as con:
            row = con.execute("SELECT metrics FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise self.unknown(name)
            merged = {**json.loads(row[0]), **metrics}
            con.execute("UPDATE models SET metrics = ? WHERE name = ?", (json.dumps(merged), name))
        return self.get(name)

    def update_meta(self, name: str, meta: dict) -> ModelEntry:
        """Merge format-specific facts into an entry's meta."""
        with self._write() as con:
            row = con.execute("SELECT meta FROM models WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise self.unknown(name)
            merged = {**json.loads(row[0]), **meta}
            con.execute("UPDATE models SET meta = ? WHERE name = ?", (json.dumps(merged, default=str), name))
        return self.get(name)
