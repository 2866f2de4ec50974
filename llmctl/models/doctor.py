"""`llmctl models doctor`: check every registry entry, and with `--fix` repair what the findings name.

Checks: the index opens and its rows read; each entry's folder exists, its marker (`llmctl-entry.json`) matches
the index (format, entry record, metrics), its weights are readable, its parents exist; folders under `models/`
that no entry owns; leftovers of killed runs. `--fix` changes only what a finding names: it drops the row of a
managed entry whose folder is gone, rewrites a stale marker from the index (after merging into the index the
metrics only the marker holds), registers a folder the index lost from its marker, and removes leftovers whose
process is gone; only when the index cannot be read does it rebuild it, from the folders' markers merged with every
row it can still read (metrics of both kept, `--link` entries kept as the old index had them). The index is backed
up (`registry.db.bak-TIME`) before any change. A folder `models remove` kept is marked removed in its marker and
never registered again. Nothing in a model folder is deleted.

Examples:
    report = doctor(fix=False); report["problems"]
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.models import formats
from llmctl.models.registry import ModelEntry, Registry, _refresh_marker, remove_stale_temp_dirs, validate_name
from llmctl.paths import is_stale_temp, llmctl_home

_NOT_FACTS = ("format", "entry", "removed")  # marker keys that are not format facts


@dataclass
class Finding:
    """One problem: where, what, and what doctor --fix does (or what the user should do)."""

    where: str
    problem: str
    fix: str
    fixed: bool = False
    severity: str = "error"  # "warning": reported, but the registry works (e.g. a removed parent)
    action: tuple = ()  # what --fix does about it: ("drop", name), ("marker", name), ("register", entry), ...

    def report(self) -> dict:
        return {
            "where": self.where,
            "problem": self.problem,
            "fix": self.fix,
            "fixed": self.fixed,
            "severity": self.severity,
        }


def _weights_problem(entry: ModelEntry) -> str | None:
    """None when the entry's files load as far as can be checked without loading the model, else the problem."""
    from llmctl.models.formats.hf import check_folder

    folder = Path(entry.path)
    try:
        if entry.format == "gguf":  # a .gguf file, or a folder with one (`llmctl export --name`)
            file = formats.gguf_file(folder)
            return None if file.is_file() else f"{file} is not a file"
        if formats.get(entry.format).kind in ("model", "adapter"):
            check_folder(folder)
        if entry.format == "inc-int8":
            from safetensors import safe_open

            with safe_open(str(folder / "int8_weights.safetensors"), framework="pt") as fh:
                list(fh.keys())
    except LlmctlError as exc:
        return exc.one_line()
    except Exception as exc:  # safetensors' own errors
        return first_line(exc)
    return None


def _recorded(marker: dict | None, column: str) -> dict:
    """A dict column (metrics, meta) of the entry a marker records ({} when it records none)."""
    entry = (marker or {}).get("entry")
    value = entry.get(column) if isinstance(entry, dict) else None
    return value if isinstance(value, dict) else {}


def _marker_problem(entry: ModelEntry, marker: dict | None) -> str | None:
    """How a managed folder's marker disagrees with the entry's index row (None: it agrees)."""
    if marker is None:
        return "it has no marker"
    if marker["format"] != entry.format:
        return f"its marker says {marker['format']!r}, the index {entry.format!r}"
    if marker.get("removed"):
        return "its marker says `models remove` dropped it, but the index lists it"
    if not isinstance(marker.get("entry"), dict):
        return "its marker records no entry (a rebuild could not restore its lineage and metrics)"
    metrics = _recorded(marker, "metrics")
    only_marker = sorted(set(metrics) - set(entry.metrics))
    if only_marker:
        return f"its marker holds metrics the index lacks ({', '.join(only_marker)})"
    if json.dumps(metrics, sort_keys=True, default=str) != json.dumps(entry.metrics, sort_keys=True, default=str):
        return "its marker's metrics are behind the index (a rebuild would lose them)"
    return None


def check_entry(entry: ModelEntry, names: set[str]) -> list[Finding]:
    """The problems of one readable index entry.

    Examples:
        check_entry(Registry().get("tiny"), {"tiny"})   # [] when its folder, marker, weights and parents are fine
    """
    out = []
    folder = Path(entry.path)
    if not folder.exists():
        if entry.managed:
            return [
                Finding(
                    entry.name,
                    f"its files are missing ({entry.path})",
                    "--fix drops it from the index",
                    action=("drop", entry.name),
                )
            ]
        return [
            Finding(
                entry.name, f"its files are missing ({entry.path})", f"remove it: `llmctl models remove {entry.name}`"
            )
        ]
    if entry.managed and folder.is_dir() and not folder.is_symlink():  # (never write through a link)
        try:
            problem = _marker_problem(entry, formats.read_marker(folder))
        except LlmctlError as exc:
            problem = exc.message
        if problem:
            merges = problem.startswith("its marker holds metrics")
            fix = "--fix merges them into the index and rewrites the marker" if merges else ""
            out.append(
                Finding(
                    entry.name,
                    problem,
                    fix or "--fix rewrites the marker from the index",
                    action=("marker", entry.name),
                )
            )
    weights = _weights_problem(entry)
    if weights:
        out.append(Finding(entry.name, f"its files cannot be loaded: {weights}", "re-create or re-import the model"))
    for parent in entry.parents:
        if parent not in names and not Path(parent).exists():
            out.append(
                Finding(
                    entry.name,
                    f"its parent {parent!r} is not in the registry",
                    "lineage only: nothing to fix unless you re-import the parent",
                    severity="warning",
                )
            )
    return out


def _folders(models_root: Path) -> list[Path]:
    return sorted(p for p in models_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _entry_from_marker(folder: Path, marker: dict) -> ModelEntry:
    data = dict(marker.get("entry") or {"name": folder.name, "format": marker["format"]})
    data.update(name=folder.name, path=str(folder), managed=True, format=marker["format"])
    return ModelEntry(**{k: v for k, v in data.items() if k in ModelEntry.__dataclass_fields__})


def _scan_folders(models_root: Path, owned: set[Path]) -> tuple[list[ModelEntry], list[Finding], list[str]]:
    """The folders under models/ no index entry owns: entries their markers describe, problems, and kept folders."""
    entries, findings, kept = [], [], []
    for folder in _folders(models_root):
        if folder.resolve() in owned:
            continue  # check_entry checks its marker
        try:
            marker = formats.read_marker(folder)
        except LlmctlError as exc:
            findings.append(Finding(str(folder), exc.message, "re-create the model, or remove the folder"))
            continue
        if marker is None:
            findings.append(
                Finding(
                    str(folder),
                    "a folder without a marker (not made by llmctl?)",
                    "import it with `llmctl models import`, or move it away",
                )
            )
        elif marker.get("removed"):
            kept.append(str(folder))  # `models remove` kept its files: not a lost index row
        else:
            entries.append(_entry_from_marker(folder, marker))
    return entries, findings, kept


# ---- reading a damaged index ----------------------------------------------------------------------------------

_COLUMNS = ("name", "format", "path", "created", "parents", "command", "profile", "metrics", "meta", "managed")
_JSON_COLUMNS = {"parents": list, "profile": dict, "metrics": dict, "meta": dict}


def _index_rows(home: Path) -> tuple[list[ModelEntry] | None, bool, list[Finding]]:
    """(the index's entries, whether it reads cleanly, notes): a damaged index gives the rows still readable."""
    try:
        return Registry(home).list(), True, []
    except LlmctlError:
        rows, notes = _salvage(home / "registry.db")
        return rows, False, notes


def _salvage(db: Path) -> tuple[list[ModelEntry] | None, list[Finding]]:
    """The rows of a damaged index that can still be read (None: none can); a column that cannot is reported."""
    rows: list[ModelEntry] = []
    notes: list[Finding] = []
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None, notes
    try:
        for raw in con.execute(f"SELECT {', '.join(_COLUMNS)} FROM models ORDER BY created, name"):
            entry, lost = _salvage_row(dict(zip(_COLUMNS, raw)))
            if entry is None:
                notes.append(
                    Finding(
                        str(db),
                        f"a row that cannot be read ({lost})",
                        "--fix leaves it out",
                        severity="warning",
                        action=("rebuild",),
                    )
                )
            elif lost:
                notes.append(
                    Finding(
                        entry.name,
                        f"its {', '.join(lost)} cannot be read from the index",
                        "--fix takes them from its marker (managed entries), else goes without",
                        severity="warning",
                        action=("rebuild",),
                    )
                )
            if entry is not None:
                rows.append(entry)
    except sqlite3.DatabaseError as exc:
        if not rows:
            return None, notes
        notes.append(
            Finding(
                str(db),
                f"only part of the index can be read ({exc})",
                "--fix keeps what it read",
                severity="warning",
                action=("rebuild",),
            )
        )
    finally:
        con.close()
    return rows, notes


def _salvage_row(row: dict) -> tuple[ModelEntry | None, list[str] | str]:
    """An entry from a raw index row, with the columns that could not be read ([]: none); None when unusable."""
    name, fmt, path = row["name"], row["format"], row["path"]
    if not all(isinstance(v, str) for v in (name, fmt, path)):
        return None, "no name, format or path"
    try:
        validate_name(name)
        formats.get(fmt)
    except LlmctlError as exc:
        return None, exc.message
    fields, lost = {}, []
    for column, kind in _JSON_COLUMNS.items():
        try:
            value = json.loads(row[column])
        except (TypeError, ValueError):
            value = None
        if isinstance(value, kind):
            fields[column] = value
        else:
            lost.append(column)
    created = row["created"] if isinstance(row["created"], (int, float)) else time.time()
    command = row["command"] if isinstance(row["command"], str) else ""
    entry = ModelEntry(name, fmt, path, float(created), command=command, managed=bool(row["managed"]), **fields)
    return entry, lost


# ---- repairs ------------------------------------------------------------------------------------------------


def _backup(db: Path, move: bool) -> Path:
    """Keep the index as registry.db.bak-TIME: moved aside (before a rebuild) or copied (before a repair)."""
    stamp = f"registry.db.bak-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    dest, n = db.with_name(stamp), 1
    while dest.exists():  # never overwrite an earlier backup (two fixes in one second)
        dest, n = db.with_name(f"{stamp}-{n}"), n + 1
    if move:
        os.replace(db, dest)
        return dest
    src, dst = sqlite3.connect(db), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return dest


def _merged(row: ModelEntry, marker: dict | None) -> ModelEntry:
    """The index row with the metrics and facts only its folder's marker still holds (the row wins on a clash)."""
    return ModelEntry(
        **{
            **asdict(row),
            "metrics": {**_recorded(marker, "metrics"), **row.metrics},
            "meta": {**_recorded(marker, "meta"), **row.meta},
        }
    )


def rebuild(home: Path, rows: list[ModelEntry] | None) -> tuple[Path | None, int, list[Finding]]:
    """Back up registry.db and rebuild it from the folders' markers merged with the rows still readable.

    Lost rows come back from their markers, except folders `models remove` kept; `--link` rows are kept as they
    were. Returns (backup, entries, notes on the entries kept from the old index).

    Examples:
        backup, count, notes = rebuild(llmctl_home(), _salvage(llmctl_home() / "registry.db")[0])
    """
    db = home / "registry.db"
    backup = _backup(db, move=True) if db.exists() else None
    reg = Registry(home)
    old = {e.name: e for e in rows or []}
    new: dict[str, ModelEntry] = {}
    for folder in _folders(reg.models_root):
        try:
            marker = formats.read_marker(folder)
        except LlmctlError:
            marker = None
        row = old.get(folder.name)
        if row is not None and row.managed and Path(row.path).resolve() == folder.resolve():
            new[row.name] = _merged(row, marker)  # the index is the source of truth; a `removed` mark is stale
        elif row is None and marker is not None and not marker.get("removed"):
            new[folder.name] = _entry_from_marker(folder, marker)
    notes = []
    for row in old.values():
        if row.name in new or (row.managed and not Path(row.path).exists()):
            continue  # a managed row whose files are gone is dropped (check_entry reported it)
        new[row.name] = row
        if not row.managed:
            notes.append(
                Finding(
                    row.name,
                    f"registered in place (--link) at {row.path}: only the index records it",
                    "--fix kept it as the old index had it",
                    fixed=True,
                    severity="warning",
                )
            )
    if rows is None and backup is not None:
        notes.append(
            Finding(
                str(db),
                "entries registered in place (--link) are recorded only in the index, and none of it could be read",
                "register them again: `llmctl models import PATH --link --name NAME`",
                severity="warning",
            )
        )
    for entry in sorted(new.values(), key=lambda e: (e.created, e.name)):
        reg._add(entry, None, force=True)
        _refresh_marker(entry)  # so the next rebuild finds what this one merged
    return backup, len(new), notes


def _fix_marker(reg: Registry, name: str) -> None:
    """Merge what only the marker holds into the index, then rewrite the marker from the index."""
    entry = reg.get(name)
    folder = Path(entry.path)
    try:
        marker = formats.read_marker(folder) or {}
    except LlmctlError:
        marker = {}  # damaged: nothing to merge from it
    lost_metrics = {k: v for k, v in _recorded(marker, "metrics").items() if k not in entry.metrics}
    if lost_metrics:
        entry = reg.update_metrics(name, lost_metrics)
    lost_meta = {k: v for k, v in _recorded(marker, "meta").items() if k not in entry.meta}
    if lost_meta:
        entry = reg.update_meta(name, lost_meta)
    facts = {k: v for k, v in marker.items() if k not in _NOT_FACTS}
    formats.write_marker(folder, entry.format, entry.to_json(), **facts)


def _fix_register(reg: Registry, entry: ModelEntry) -> None:
    reg._add(entry, None, force=False)  # not force: a name registered meanwhile is not overwritten


_FIXES = {"drop": lambda reg, name: reg.remove(name), "marker": _fix_marker, "register": _fix_register}


def _apply(home: Path, rows: list[ModelEntry] | None, readable: bool, findings: list[Finding], report: dict) -> None:
    """Do what the findings' actions say (and only that); mark each finding fixed when it was."""
    leftovers = [f for f in findings if f.action[:1] == ("leftover",)]
    removed = remove_stale_temp_dirs(home / "models") if leftovers else []
    for f in leftovers:
        f.fixed = f.action[1] in removed
    if not readable:
        backup, count, notes = rebuild(home, rows)
        for f in findings:
            f.fixed = f.fixed or bool(f.action) and f.action[0] != "leftover"
        findings += notes
        report.update(backup=str(backup) if backup else None, entries=count)
        return
    repairs = [f for f in findings if f.action and f.action[0] in _FIXES]
    if not repairs:
        return
    report["backup"] = str(_backup(home / "registry.db", move=False))
    reg = Registry(home)
    for f in repairs:
        try:
            _FIXES[f.action[0]](reg, f.action[1])
            f.fixed = True
        except (LlmctlError, OSError) as exc:
            f.fix += f" (it could not: {exc.one_line() if isinstance(exc, LlmctlError) else first_line(exc)})"
    report["entries"] = len(reg.list())


def doctor(fix: bool = False) -> dict:
    """Check the registry (and with fix=True repair what the findings name); returns a JSON-able report."""
    home = llmctl_home()
    models_root = home / "models"
    models_root.mkdir(parents=True, exist_ok=True)
    rows, readable, findings = _index_rows(home)
    if not readable:
        findings.insert(
            0,
            Finding(
                str(home / "registry.db"),
                "the index cannot be read (damaged file or row)",
                "--fix backs it up and rebuilds it from the model folders and the rows it can still read",
                action=("rebuild",),
            ),
        )
    names = {e.name for e in rows or []}
    for entry in rows or []:
        findings += check_entry(entry, names)
    owned = {Path(e.path).resolve() for e in rows or [] if e.managed}
    orphans, folder_findings, kept = _scan_folders(models_root, owned)
    findings += folder_findings
    for entry in orphans:
        if rows is not None and entry.name not in names:
            findings.append(
                Finding(
                    entry.name,
                    "a model folder that the index does not list",
                    "--fix registers it again from its marker",
                    action=("register", entry),
                )
            )
    stale = [p for p in models_root.iterdir() if is_stale_temp(p.name)]  # this host's dead leftovers only
    for path in stale:
        findings.append(Finding(str(path), "a leftover of a killed run", "--fix removes it", action=("leftover", path)))
    report: dict = {"home": str(home), "entries": len(rows or []), "backup": None, "kept": kept}
    if fix:
        _apply(home, rows, readable, findings, report)
    report["problems"] = [f.report() for f in findings]
    report["ok"] = all(f.fixed for f in findings if f.severity == "error")
    return report
