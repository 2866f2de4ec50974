"""`llmctl models doctor`: check every registry entry, and with `--fix` rebuild the index from the model folders.

Checks: the index opens; each entry's folder exists, its marker (`llmctl-entry.json`) matches the index, its
weights are readable, its parents exist; folders under `models/` that no entry owns; leftovers of killed runs.
`--fix` backs up `registry.db` (as `registry.db.bak-TIME`), rebuilds it from the folders' markers (keeping
entries registered in place, `--link`, from the old index when it is readable), rewrites stale markers and removes
leftovers whose process is gone. Nothing in a model folder is deleted.

Examples:
    report = doctor(fix=False); report["problems"]
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.models import formats
from llmctl.models.registry import ModelEntry, Registry, remove_stale_temp_dirs
from llmctl.paths import TEMP_NAME, llmctl_home, pid_alive


@dataclass
class Finding:
    """One problem: where, what, and what doctor --fix does (or what the user should do)."""

    where: str
    problem: str
    fix: str
    fixed: bool = False
    severity: str = "error"  # "warning": reported, but the registry works (e.g. a removed parent)


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


def check_entry(entry: ModelEntry, names: set[str]) -> list[Finding]:
    """The problems of one readable index entry."""
    out = []
    folder = Path(entry.path)
    if not folder.exists():
        fix = "--fix drops it from the index" if entry.managed else f"remove it: `llmctl models remove {entry.name}`"
        return [Finding(entry.name, f"its files are missing ({entry.path})", fix)]
    if entry.managed and folder.is_dir():
        try:
            marker = formats.read_marker(folder)
        except LlmctlError as exc:
            marker, problem = None, exc.message
        else:
            problem = (
                None
                if marker and marker["format"] == entry.format
                else f"its marker says {marker['format']!r}, the index {entry.format!r}"
                if marker
                else "it has no marker"
            )
        if problem:
            out.append(Finding(entry.name, problem, "--fix rewrites the marker from the index"))
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


def _marker_entries(models_root: Path) -> tuple[list[ModelEntry], list[Finding]]:
    """Entries described by the markers of the folders under models/ (the source of a rebuild)."""
    entries, findings = [], []
    for folder in sorted(p for p in models_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
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
            continue
        data = dict(marker.get("entry") or {"name": folder.name, "format": marker["format"]})
        data.update(name=folder.name, path=str(folder), managed=True, format=marker["format"])
        fields = {k: v for k, v in data.items() if k in ModelEntry.__dataclass_fields__}
        entries.append(ModelEntry(**fields))
    return entries, findings


def _old_entries(home: Path) -> list[ModelEntry] | None:
    """The index's entries, or None when the index (its file or a row) cannot be read."""
    try:
        return Registry(home).list()
    except LlmctlError:
        return None


def rebuild(home: Path, old: list[ModelEntry] | None) -> tuple[Path | None, int]:
    """Back up registry.db and rebuild it from the folders' markers (+ linked entries of the old index)."""
    db = home / "registry.db"
    backup = None
    if db.exists():
        backup = db.with_name(f"registry.db.bak-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(db, backup)
    reg = Registry(home)
    from_markers, _ = _marker_entries(reg.models_root)
    known = {e.name for e in from_markers}
    kept = [e for e in (old or []) if not e.managed and e.name not in known]
    by_name = {e.name: e for e in (old or [])}
    for entry in from_markers:
        previous = by_name.get(entry.name)
        if previous is not None and not entry.command and previous.command:  # an older marker: the index knew more
            entry = ModelEntry(**{**asdict(previous), "path": entry.path, "managed": True})
        reg._add(entry, None, force=True)
    for entry in kept:
        reg._add(entry, None, force=True)
    return backup, len(from_markers) + len(kept)


def doctor(fix: bool = False) -> dict:
    """Check the registry (and with fix=True repair what can be repaired); returns a JSON-able report."""
    home = llmctl_home()
    models_root = home / "models"
    models_root.mkdir(parents=True, exist_ok=True)
    findings: list[Finding] = []
    old = _old_entries(home)
    if old is None:
        findings.append(
            Finding(
                str(home / "registry.db"),
                "the index cannot be read (damaged file or row)",
                "--fix backs it up and rebuilds it from the model folders",
            )
        )
    names = {e.name for e in old or []}
    for entry in old or []:
        findings += check_entry(entry, names)
    marker_entries, marker_findings = _marker_entries(models_root)
    findings += marker_findings
    for entry in marker_entries:
        if old is not None and entry.name not in names:
            findings.append(
                Finding(
                    entry.name,
                    "a model folder that the index does not list",
                    "--fix registers it again from its marker",
                )
            )
    stale = [p for p in models_root.iterdir() if (m := TEMP_NAME.match(p.name)) and not pid_alive(int(m["pid"]))]
    for path in stale:
        findings.append(Finding(str(path), "a leftover of a killed run", "--fix removes it"))
    report: dict = {"home": str(home), "entries": len(old or []), "backup": None}
    if fix and findings:
        backup, count = rebuild(home, old)
        removed = remove_stale_temp_dirs(models_root)
        for entry in Registry(home).list():
            if entry.managed and Path(entry.path).is_dir():
                try:
                    if (formats.read_marker(Path(entry.path)) or {}).get("format") != entry.format:
                        formats.write_marker(Path(entry.path), entry.format, entry.to_json())
                except LlmctlError:
                    formats.write_marker(Path(entry.path), entry.format, entry.to_json())
        for f in findings:
            f.fixed = f.fix.startswith("--fix") and (Path(f.where) not in stale or Path(f.where) in removed)
        report.update(backup=str(backup) if backup else None, entries=count)
    report["problems"] = [asdict(f) for f in findings]
    report["ok"] = all(f.fixed for f in findings if f.severity == "error")
    return report
