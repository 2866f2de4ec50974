"""Users' data files: one reader for plain text, JSONL, JSON and Parquet, and one set of error messages.

Every command that reads a user's data goes through here: `finetune --data`, `quantize`/`prune
--calib-data`, `generate --input`, `tokenize --input`, curation's `--decontaminate` files and the local
eval tasks. Encoding is checked (UTF-8; a BOM is dropped; NUL bytes mean binary) and so is structure
(valid JSON, one object per record, at least one record). Every problem is one `LlmctlError` that
names the file, the line or item, what is wrong and what would be right. Large files stream: text in
blocks of whole lines, JSONL line by line, Parquet in row batches; a JSON document is parsed whole.

Which layout a record has (alpaca, chat, …) is llmctl/data/layouts.py's business, not this module's.

Examples:
    for rec in DataFile("train.jsonl", what="data file", option="--data").records():
        rec.where, rec.value              # "line 3", {"instruction": …, "output": …}
    text = read_text(Path("wiki.test.raw"), what="text file", option="--data")
    rows = read_records(Path("prompts.jsonl"), what="input file", option="--input", fmt="records")
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from llmctl.errors import LlmctlError, first_line

FORMATS = ("auto", "records", "text", "jsonl", "json", "parquet")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
HEAD_BYTES = 1 << 16  # how much of a file check() reads to judge its encoding
# The longest JSONL line read: one record per line is never near this, but a file with no line ends (a JSON
# array saved as .jsonl, a binary dump) would otherwise be gathered whole into memory before the first record.
MAX_LINE_BYTES = 64 << 20
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_PARQUET_MAGIC = b"PAR1"


class Record(NamedTuple):
    """One record of a data file and where it is: `where` is "line 3", "item 2" or "row 7" for messages.

    (A NamedTuple, and `where` built only when asked for: JSONL files have millions of records.)
    """

    unit: str
    number: int
    value: Any

    @property
    def where(self) -> str:
        return f"{self.unit} {self.number}"


def json_type(value) -> str:
    """The JSON name of a Python value's type: object, array, string, number, boolean, null."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


class DataFile:
    """A user's data file and the one way to read it, with llmctl's messages for every problem.

    `what` and `option` name the file in messages ("data file", "--data"); `fmt` is how to read it:
    auto (by suffix: .jsonl/.ndjson, .json, .parquet, anything else text), records (like auto, but a
    file with another suffix is JSON if it starts with "[" and JSONL otherwise), or a fixed format.
    `example` is a record shown in hints ('{"text": "…"}'). `bytes_read` counts progress.

    Examples:
        f = DataFile("corpus.txt", what="input", option="--input").check()
        for block in f.blocks(): ...            # decoded text, whole lines, CR/CRLF → LF
        [r.value for r in DataFile("a.json", fmt="records").records()]
    """

    def __init__(
        self,
        path,
        what: str = "file",
        option: str | None = None,
        fmt: str = "auto",
        example: str = '{"text": "…"}',
        block_bytes: int = 1 << 20,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown data file format {fmt!r}")
        self.path = Path(path).expanduser()
        self.what = what
        self.option = option
        self.fmt = fmt
        self.example = example
        self.block_bytes = block_bytes
        self.bytes_read = 0

    # ---- messages -----------------------------------------------------------------------------------

    def error(self, problem: str, hint: str | None = None, where: str | None = None) -> LlmctlError:
        """The one message shape: '<what> <path>[ <where>] <problem>; <hint>'."""
        place = f" {where}" if where else ""
        return LlmctlError(f"{self.what} {self.path}{place} {problem}", hint=hint)

    def _text_kinds(self) -> str:
        """The UTF-8 file kinds this file may be, for hints."""
        return ".jsonl or .json" if self.fmt in ("records", "jsonl", "json") else ".txt, .jsonl or .json"

    def _records_hint(self) -> str:
        return f"give one JSON object per line (.jsonl), e.g. {self.example}, a JSON array of them, or .parquet"

    # ---- what kind of file ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def format(self) -> str:
        """text, jsonl, json or parquet: from `fmt`, the suffix and (for fmt=records) the first character."""
        if self.fmt not in ("auto", "records"):
            return self.fmt
        suffix = self.path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if suffix == ".json":
            return "json"
        if suffix == ".parquet":
            return "parquet"
        if self.fmt == "auto":
            return "text"
        with open(self.path, "rb") as fh:
            head = fh.read(HEAD_BYTES).removeprefix(_BOM).lstrip()
        return "json" if head.startswith(b"[") else "jsonl"

    def check(self) -> DataFile:
        """Fail now, before any work, on a missing, empty, binary or non-UTF-8 file (judged by its head)."""
        path = self.path
        if not path.exists():
            where = f"the {self.option} path" if self.option else "the path"
            raise self.error("does not exist", hint=f"check {where}")
        if path.is_dir():
            raise self.error("is a folder", hint=f"pass a file: {self._text_kinds().replace(' or', ',')} or .parquet")
        if self.size == 0:
            raise self.error(
                "is empty", hint="give a file with text in it" if self.format() == "text" else self._records_hint()
            )
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
        if self.format() == "parquet":
            if not head.startswith(_PARQUET_MAGIC):
                raise self.error(
                    "is not a Parquet file (it does not start with PAR1)",
                    hint="give a .parquet file written by pyarrow or pandas, or rename it",
                )
            return self
        self._check_bytes(head, 0, 1, cut_ok=len(head) == HEAD_BYTES)
        return self

    def _check_bytes(self, data: bytes, offset: int, line: int, cut_ok: bool = False) -> str:
        """Decode UTF-8 or raise the message for binary / UTF-16 / non-UTF-8 bytes.

        offset and line are those of data's first byte in the file; cut_ok allows a character cut at
        the end (a head read of HEAD_BYTES)."""
        if offset == 0 and data[:2] in _UTF16_BOMS:
            raise self.error(
                "is UTF-16 text, not UTF-8", hint="convert it to UTF-8, e.g. `iconv -f utf-16 -t utf-8 IN > OUT`"
            )
        nul = data.find(b"\x00")
        if nul >= 0:
            at, at_line = offset + nul, line + data.count(b"\n", 0, nul)
            raise self.error(
                f"looks binary (NUL byte at offset {at}, line {at_line})",
                hint=f"give a UTF-8 text file ({self._text_kinds()}) or a .parquet file",
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if cut_ok and exc.reason == "unexpected end of data":  # a character cut by the head read
                return data[: exc.start].decode("utf-8")
            at, at_line = offset + exc.start, line + data.count(b"\n", 0, exc.start)
            raise self.error(
                f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {at}, line {at_line})",
                hint="convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
            ) from exc

    # ---- text --------------------------------------------------------------------------------------------

    def text(self) -> str:
        """The whole file as text, exactly as written (line ends kept) but for a leading BOM."""
        raw = self.path.read_bytes()
        self.bytes_read += len(raw)
        text = self._check_bytes(raw, 0, 1)
        return text.removeprefix("\ufeff")

    def blocks(self, max_line: int | None = None) -> Iterator[str]:
        """The file as decoded text blocks of whole lines (CR/CRLF → LF), about `block_bytes` each.

        Memory stays at about one block however long the file is (a single line longer than a block
        is kept whole, up to `max_line` bytes when given: a longer line is an error naming it)."""
        offset, line = 0, 1
        pending: list[bytes] = []  # bytes after the last line end seen so far
        held = 0  # their length
        with open(self.path, "rb") as raw:
            while True:
                block = raw.read(self.block_bytes)
                if block:
                    cut = block.rfind(b"\n") + 1
                    if max_line is not None:
                        self._check_line_length(held + (block.find(b"\n") if cut else len(block)), max_line, line)
                    if cut == 0:
                        pending.append(block)
                        held += len(block)
                        continue
                    part = b"".join([*pending, block[:cut]])
                    pending = [block[cut:]]
                    held = len(pending[0])
                else:
                    part = b"".join(pending)
                if part:
                    text = self._check_bytes(part, offset, line)
                    if offset == 0:
                        text = text.removeprefix("\ufeff")
                    offset += len(part)
                    line += part.count(b"\n")
                    self.bytes_read += len(part)
                    yield text.replace("\r\n", "\n").replace("\r", "\n")
                if not block:
                    return

    def _check_line_length(self, length: int, max_line: int, line: int) -> None:
        if length > max_line:
            raise self.error(
                f"is longer than {max_line >> 20} MiB with no line end",
                where=f"line {line}",
                hint=f"give one JSON object per line (.jsonl), e.g. {self.example}, or a JSON array as .json",
            )

    def lines(self, max_line: int | None = None) -> Iterator[str]:
        """The file's lines without their line ends, streamed (a line over `max_line` bytes is an error)."""
        for text in self.blocks(max_line):
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            yield from lines

    # ---- records -----------------------------------------------------------------------------------------

    def records(self, objects: bool = True, columns: list[str] | None = None) -> Iterator[Record]:
        """The file's records: JSONL lines, JSON array items (or one JSON object), Parquet rows.

        objects=True requires every record to be a JSON object; columns picks Parquet columns (a
        missing one is an error). A file without records is an error. Plain text has no records."""
        fmt = self.format()
        reader = {"jsonl": self._jsonl, "json": self._json, "parquet": lambda: self._parquet(columns)}.get(fmt)
        if reader is None:
            raise self.error("is plain text, not records", hint=self._records_hint())
        count = 0
        for rec in reader():
            if objects and not isinstance(rec.value, dict):
                raise self.error(
                    f"is a JSON {json_type(rec.value)}, not an object",
                    where=rec.where,
                    hint=f"each record must be a JSON object like {self.example}",
                )
            count += 1
            yield rec
        if count == 0:
            raise self.error("has no records", hint=self._records_hint())

    def _jsonl(self) -> Iterator[Record]:
        for number, line in enumerate(self.lines(MAX_LINE_BYTES), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, deep nesting, a 5000-digit number
                raise self.error(
                    f"is not valid JSON ({_json_problem(exc, column=True)})",
                    where=f"line {number}",
                    hint=f"each line must be one JSON object, e.g. {self.example}",
                ) from exc
            yield Record("line", number, value)

    def _json(self) -> Iterator[Record]:
        start = self.bytes_read
        text = "".join(self.blocks())
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data" and exc.lineno > 1:
                self.bytes_read = start  # one object per line in a .json file: JSONL
                yield from self._jsonl()
                return
            raise self.error(f"is not valid JSON ({_json_problem(exc)})", hint=self._records_hint()) from exc
        if isinstance(data, dict):
            yield Record("item", 1, data)
            return
        if not isinstance(data, list):
            raise self.error(f"holds a JSON {json_type(data)}, not records", hint=self._records_hint())
        for number, value in enumerate(data, 1):
            yield Record("item", number, value)

    def parquet_columns(self) -> list[str]:
        """The column names of a Parquet file."""
        return list(self._parquet_file().schema_arrow.names)

    def _parquet_file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError with its own text for damaged files
            raise self.error(
                f"cannot be read as Parquet ({first_line(exc)})",
                hint="the file may be truncated or damaged; write it again",
            ) from exc

    def _parquet(self, columns: list[str] | None) -> Iterator[Record]:
        pf = self._parquet_file()
        names = pf.schema_arrow.names
        missing = [c for c in columns or [] if c not in names]
        if missing:
            raise self.error(
                f"has no column {missing[0]!r} (columns: {', '.join(names[:8])})",
                hint=f"each row needs the fields of a record like {self.example}",
            )
        size = self.size
        rows = max(pf.metadata.num_rows, 1)
        number = 0
        for batch in pf.iter_batches(columns=columns, batch_size=1024):
            self.bytes_read += int(size * batch.num_rows / rows)  # progress: bytes in proportion to rows
            for row in batch.to_pylist():
                number += 1
                yield Record("row", number, row)


def _json_problem(exc: Exception, column: bool = False) -> str:
    """What json.loads refused, for a message: "Expecting value at line 1 column 5", "nested too deeply", …

    column=True gives the column only (the caller names the line: one JSONL line was parsed)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}" if column else f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    return first_line(exc).split(";")[0]  # Python's own advice after ";" (set_int_max_str_digits) is not the user's


def read_text(path, what: str = "text file", option: str | None = None) -> str:
    """A whole UTF-8 text file (checked; a BOM dropped; line ends kept); empty or blank is an error.

    Examples:
        read_text(Path("wiki.test.raw"), what="text file", option="--data")[:40]
    """
    f = DataFile(path, what=what, option=option, fmt="text").check()
    text = f.text()
    if not text.strip():
        raise f.error("has no text (only blank lines)", hint="give a file with some text in it")
    return text


def read_records(
    path,
    what: str = "file",
    option: str | None = None,
    fmt: str = "records",
    example: str = '{"text": "…"}',
    objects: bool = True,
) -> list[Record]:
    """Every record of a JSONL/JSON/Parquet file, checked, with where each one is.

    Examples:
        [r.value["prompt"] for r in read_records(Path("p.jsonl"), "input file", "--input")]
    """
    f = DataFile(path, what=what, option=option, fmt=fmt, example=example).check()
    return list(f.records(objects=objects))
