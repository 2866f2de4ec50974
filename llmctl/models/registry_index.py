"""The registry's SQLite index, `$LLMCTL_HOME/registry.db`: its table, connections, write transactions and rows.

One row per `ModelEntry` (lists and dicts stored as JSON). Writers take the write lock up front (`BEGIN
IMMEDIATE`, retried with back-off), so parallel commands queue instead of failing with "database is locked"; a
file that is not a database, a missing table or column, or a row that is not JSON is reported as damage with the
`models doctor --fix` hint. `registry.py` builds the registry (names, folders, reserve/publish) on top of it and
re-exports `ModelEntry`.

Examples:
    index = RegistryIndex(home / "registry.db")          # creates the table if needed
    with index.write() as con:                            # one transaction: committed, or rolled back on error
        index.insert(con, ModelEntry(name="tiny", format="hf", path="/x/tiny"))
    with index.connect() as con:
        entry = index.entry(con.execute("SELECT * FROM models WHERE name = ?", ("tiny",)).fetchone())
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmctl.errors import LlmctlError

SCHEMA = """
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


class RegistryIndex:
    """The index file at `db_path` (its table is created on first use).

    Examples:
        RegistryIndex(Path("~/.llmctl/registry.db").expanduser())
    """

    def __init__(self, db_path: Path):
        self.db_path = db_path
        with self.connect() as con:
            con.executescript(SCHEMA)

    def damaged(self, what: str) -> LlmctlError:
        return LlmctlError(
            f"the registry index {self.db_path} is damaged ({what})",
            hint="run `llmctl models doctor --fix`: it keeps the damaged file as a backup and "
            "rebuilds the index from the model folders",
        )

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so writers serialize
        # instead of failing with "database is locked"; timeout in seconds.
        try:
            con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise LlmctlError(
                f"cannot open registry {self.db_path}: {exc}", hint="check LLMCTL_HOME is a writable folder"
            ) from exc
        try:
            yield con
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "not a database" in text or "malformed" in text or "no such table" in text or "no such column" in text:
                raise self.damaged(text) from exc
            raise LlmctlError(f"registry {self.db_path}: {text}", hint="retry the command") from exc
        finally:
            con.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction: committed when the block ends, rolled back if it raises."""
        with self.connect() as con:
            for attempt in range(50):  # 50 tries, 0.05 s more each: about a minute in all
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

    def entry(self, row: tuple) -> ModelEntry:
        """The entry a `SELECT *` row holds; a row whose JSON does not parse is damage."""
        name, fmt, path, created, parents, command, profile, metrics, meta, managed = row
        try:
            return ModelEntry(
                name,
                fmt,
                path,
                created,
                json.loads(parents),
                command,
                json.loads(profile),
                json.loads(metrics),
                json.loads(meta),
                bool(managed),
            )
        except (TypeError, ValueError) as exc:
            raise self.damaged(f"the row of {name!r} is not valid JSON: {exc}") from exc

    @staticmethod
    def insert(con: sqlite3.Connection, entry: ModelEntry) -> None:
        """Add entry's row (inside `write()`; a row of that name must not exist)."""
        con.execute(
            "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                entry.name,
                entry.format,
                entry.path,
                entry.created,
                json.dumps(entry.parents),
                entry.command,
                json.dumps(entry.profile, default=str),
                json.dumps(entry.metrics),
                json.dumps(entry.meta, default=str),
                int(entry.managed),
            ),
        )
