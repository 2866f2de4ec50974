"""Documents for tokenizing: the --input files as a stream of non-empty texts (on top of llmctl/data/records.py).

Plain text is split into documents by --doc-split (blank-line, line or file); .jsonl/.json/.parquet rows
give the string in --text-field. Files stream in blocks, so memory stays bounded however large they are.

Examples:
    paths = resolve_inputs(["input.txt"])
    reader = DocReader(paths, doc_split="blank-line")
    for text in reader: ...              # reader.bytes_read / reader.total_bytes for progress
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from llmctl.data.records import DataFile, json_type
from llmctl.errors import UsageError

DOC_SPLITS = ("blank-line", "line", "file")
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # a line end followed by whitespace-only lines


def input_file(path, text_field: str = "text", block_bytes: int = 1 << 20) -> DataFile:
    """An --input file as llmctl/data/records.py reads it (messages name it 'input … ; check the --input path')."""
    return DataFile(
        path, what="input", option="--input", fmt="auto", example=f'{{"{text_field}": "…"}}', block_bytes=block_bytes
    )


def check_input(path) -> Path:
    """Fail clearly on a missing, empty, binary or non-UTF-8 input file (checks its first 64 KiB).

    Examples:
        check_input(Path("input.txt"))
    """
    return input_file(path).check().path


def resolve_inputs(inputs: list) -> list[Path]:
    """The --input files, each checked; none at all is a usage error."""
    if not inputs:
        raise UsageError("no input files", hint="pass --input FILE (repeatable)")
    return [check_input(Path(p)) for p in inputs]


class DocReader:
    """Streams documents (non-empty strings) from input files; `bytes_read` tracks progress.

    Examples:
        reader = DocReader([Path("a.txt")], doc_split="blank-line")
        for text in reader: ...
    """

    def __init__(
        self, paths: list[Path], doc_split: str = "blank-line", text_field: str = "text", block_bytes: int = 1 << 20
    ):
        if doc_split not in DOC_SPLITS:
            raise UsageError(f"unknown --doc-split {doc_split!r}", hint="use blank-line, line or file")
        self.files = [input_file(p, text_field, block_bytes) for p in paths]
        self.paths = [f.path for f in self.files]
        self.doc_split = doc_split
        self.text_field = text_field
        self.total_bytes = sum(f.size for f in self.files)
        self.docs_per_file: dict[str, int] = {}

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes_read for f in self.files)

    def __iter__(self) -> Iterator[str]:
        for f in self.files:
            count = 0
            docs = self._text(f) if f.format() == "text" else self._rows(f)
            for text in docs:
                if text.strip():
                    count += 1
                    yield text
            self.docs_per_file[str(f.path)] = count
            if count == 0:
                raise f.error(
                    "has no documents (no non-blank text)", hint="check the file, --text-field and --doc-split"
                )

    def _text(self, f: DataFile) -> Iterator[str]:
        if self.doc_split == "file":
            yield "".join(f.blocks()).strip("\n")
            return
        if self.doc_split == "line":
            yield from f.lines()
            return
        # blank-line: paragraphs are separated by runs of whitespace-only lines
        carry = "\n"
        for text in f.blocks():
            pieces = _BLANK_LINES.split(carry + text)
            carry = pieces.pop()
            for piece in pieces:
                yield piece.strip("\n")
        for piece in _BLANK_LINES.split(carry + "\n"):
            yield piece.strip("\n")

    def _rows(self, f: DataFile) -> Iterator[str]:
        """The --text-field string of every row (null values are skipped, like blank documents)."""
        field = self.text_field
        hint = "name the text field with --text-field"
        if f.format() == "parquet" and field not in (names := f.parquet_columns()):
            raise f.error(f"has no column {field!r} (columns: {', '.join(names[:8])})", hint=hint)
        for rec in f.records(columns=[field] if f.format() == "parquet" else None):
            if field not in rec.value:
                fields = ", ".join(list(rec.value)[:8]) or "none"
                raise f.error(f"has no field {field!r} (fields: {fields})", where=rec.where, hint=hint)
            value = rec.value[field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise f.error(
                    f"field {field!r} is a JSON {json_type(value)}, not a string",
                    where=rec.where,
                    hint="name a string field with --text-field",
                )
            yield value


def chunks(docs: Iterator[str], chunk_chars: int) -> Iterator[list[str]]:
    """Documents grouped into lists of about chunk_chars characters (the unit of work of encode and stats)."""
    buf: list[str] = []
    size = 0
    for text in docs:
        buf.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf
