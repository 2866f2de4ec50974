"""Finding a task family's files in a data dir: family folders, the split a file holds, its format, its first row.

Examples:
    scan(Path("../shared/data"), "arc")[:1]            # [(…/arc/ARC-Challenge-Test.jsonl, …/arc)]
    split_of(Path("d/arc/ARC-Easy-Dev.jsonl"), Path("d/arc"), "arc")   # "validation"
"""

from __future__ import annotations

import re
from pathlib import Path

DATA_EXTS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


TEXT_EXTS = {".raw", ".txt", ".tokens"}


_SPLIT_WORDS = {
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "train": "train",
}


_FORMAT_PREF = ("parquet", "json", "csv")


def family_dirs(data_dir: Path, family: str) -> list[Path]:
    """Folders of a family in the data dir: `arc/`, also `wikitext-2-raw/` etc. for wikitext."""
    if not data_dir.is_dir():
        return []
    out = []
    for child in sorted(data_dir.iterdir()):
        if not child.is_dir():
            continue
        name = child.name.lower()
        if (
            name == family
            or (family == "wikitext" and name.startswith("wikitext"))
            or (family == "arc" and name in ("ai2_arc", "arc-challenge", "arc-easy", "arc_easy", "arc_challenge"))
        ):
            out.append(child)
    return out


def _words(path: Path, root: Path) -> list[str]:
    rel = path.relative_to(root)
    return [w for w in re.split(r"[^a-z0-9]+", str(rel.with_suffix("")).lower()) if w]


def split_of(path: Path, root: Path, family: str) -> str | None:
    """The split a file holds, from its name (then its folder names)."""
    stem_words = [w for w in re.split(r"[^a-z0-9]+", path.stem.lower()) if w]
    for words in (stem_words, _words(path, root)):
        for w in words:
            if w == "dev" and family == "mmlu":
                return "dev"
            if w in _SPLIT_WORDS:
                return _SPLIT_WORDS[w]
    return None


def scan(data_dir: Path, family: str) -> list[tuple[Path, Path]]:
    """Every candidate file of a family: (file, family folder)."""
    found = []
    for folder in family_dirs(data_dir, family):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                found.append((path, folder))
    return found


def _pick_format(files: list[Path]) -> tuple[str, list[Path]]:
    by_fmt: dict[str, list[Path]] = {}
    for f in files:
        by_fmt.setdefault(DATA_EXTS[f.suffix.lower()], []).append(f)
    for fmt in _FORMAT_PREF:
        if fmt in by_fmt:
            return fmt, by_fmt[fmt]
    raise AssertionError("no data files")


def _eval_file(path: Path, fmt: str = "auto"):
    """An eval data file as llmctl/data/records.py reads it (one set of messages for bad files)."""
    from llmctl.data.records import DataFile

    return DataFile(path, what="eval data file", option="--data-dir", fmt=fmt)


def _first_record(path: Path, fmt: str) -> dict:
    """The first row of a data file (to tell layouts apart)."""
    source = _eval_file(path).check()
    if fmt == "parquet":
        return {name: None for name in source.parquet_columns()}
    if fmt == "csv":
        import csv

        with open(path, newline="", encoding="utf-8", errors="replace") as fh:  # check() judged the encoding
            row = next(csv.reader(fh), [])
        return {name: None for name in row}
    return next(iter(source.records())).value
