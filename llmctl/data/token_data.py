"""Tokenized corpora on disk: the contract between `tokenize encode` (writer) and `pretrain` (reader).

A data dir holds flat token streams (documents joined with EOS between them) as raw little-endian
shards, read back with numpy memmap, plus `index.json`:

    {"format": "llmctl-tokens/1", "dtype": "uint16",
     "tokenizer": {"name": "shakespeare-bpe", "path": "/abs/tok", "vocab_size": 4096, "eos_id": 0, "sha256": "…"},
     "splits": {"train": {"tokens": N, "docs": D, "shards": [{"file": "train-00000.bin", "tokens": n}],
                          "doc_offsets": "train-docs.npy", "bytes": B}, "val": {…}},   # B: UTF-8 bytes of the docs
     "sources": [{"path": "/abs/input.txt", "bytes": 1115394, "sha256": "…"}],
     "seed": 1234, "val_fraction": 0.1, "curation": {…}}

Examples:
    with ShardWriter(out_dir, "train", "uint16") as w:
        w.add_document(ids)            # appends ids + EOS is the caller's choice
    data = TokenData(out_dir); data.tokens("train")[:10]
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from llmctl.errors import LlmctlError, first_line

FORMAT = "llmctl-tokens/1"
INDEX = "index.json"
SHARD_TOKENS = 1 << 26  # 64 Mi tokens per shard: 128 MiB as uint16
# The largest vocab_size an index may record. Real tokenizers stop near 256 Ki tokens; pretrain sizes the model's
# embedding by this number, so a damaged index (vocab_size 10**12) must stop here, not as an out-of-memory later.
MAX_VOCAB = 1 << 24
_DTYPE_LIMITS = {"uint16": 1 << 16, "uint32": 1 << 32}  # token ids a shard's dtype can hold: vocab_size at most this
_ITEMSIZE = {"uint16": 2, "uint32": 4}


def dtype_for_vocab(vocab_size: int) -> str:
    """uint16 when every id fits (vocab ≤ 65,536), else uint32."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Append token ids for one split into fixed-size shards; each shard appears only when complete.

    A shard is written as `.name.tmp`, fsynced, then renamed: an error (e.g. disk full) leaves no
    half shard behind, and `close()` returns only the shards that were finished.
    """

    def __init__(self, out_dir: Path, split: str, dtype: str, shard_tokens: int = SHARD_TOKENS):
        import numpy as np

        self.dir = Path(out_dir)
        self.split = split
        self.np_dtype = np.dtype(dtype).newbyteorder("<")
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.doc_offsets: list[int] = []
        self.total = 0
        self._fh = None
        self._tmp: Path | None = None
        self._in_shard = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._tmp = self.dir / f".{name}.tmp"
        self._fh = open(self._tmp, "wb")
        self._in_shard = 0

    def _finish(self) -> None:
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self.dir / self._tmp.name[1:].removesuffix(".tmp")
        os.replace(self._tmp, final)
        self.shards.append({"file": final.name, "tokens": self._in_shard})
        self._fh, self._tmp = None, None

    def add_document(self, ids) -> None:
        """Append one document's ids (include the EOS separator in ids if wanted)."""
        import numpy as np

        arr = np.asarray(ids, dtype=self.np_dtype)
        self.doc_offsets.append(self.total)
        pos = 0
        while pos < len(arr):
            if self._fh is None:
                self._open()
            room = self.shard_tokens - self._in_shard
            part = arr[pos : pos + room]
            self._fh.write(part.tobytes())
            self._in_shard += len(part)
            self.total += len(part)
            pos += len(part)
            if self._in_shard >= self.shard_tokens:
                self._finish()

    def add_documents(self, flat, lengths) -> None:
        """Append many documents at once: `flat` is their ids back to back, `lengths` each one's count."""
        import numpy as np

        lengths = np.asarray(lengths, dtype=np.int64)
        starts = self.total + np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        arr = np.asarray(flat, dtype=self.np_dtype)
        pos = 0
        while pos < len(arr):
            if self._fh is None:
                self._open()
            part = arr[pos : pos + self.shard_tokens - self._in_shard]
            self._fh.write(part.tobytes())
            self._in_shard += len(part)
            self.total += len(part)
            pos += len(part)
            if self._in_shard >= self.shard_tokens:
                self._finish()
        self.doc_offsets.extend(int(x) for x in starts)

    def close(self) -> dict:
        """Finish the last shard and write the doc offsets; return this split's index entry."""
        import numpy as np

        self._finish()
        offsets_name = f"{self.split}-docs.npy"
        tmp = self.dir / f".{offsets_name}.tmp.npy"
        np.save(tmp, np.asarray(self.doc_offsets, dtype=np.int64))
        os.replace(tmp, self.dir / offsets_name)
        return {"tokens": self.total, "docs": len(self.doc_offsets), "shards": self.shards, "doc_offsets": offsets_name}

    def abort(self) -> None:
        """Drop the unfinished shard (finished ones stay; the caller decides whether to keep them)."""
        if self._fh is not None:
            self._fh.close()
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
            self._fh, self._tmp = None, None


def write_index(out_dir: Path, index: dict) -> Path:
    """Write index.json atomically (its presence marks the data dir complete)."""
    from llmctl.paths import atomic_file

    index = {"format": FORMAT, **index}
    with atomic_file(Path(out_dir) / INDEX) as fh:
        json.dump(index, fh, indent=2)
    return Path(out_dir) / INDEX


_FIX = "re-run `llmctl tokenize encode` to write the data dir again"
_SPLIT_KEYS = ("tokens", "shards", "doc_offsets")


def is_data_dir(path) -> bool:
    """Whether path is a tokenized data dir (a folder with index.json)."""
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


def recorded_tokenizer(record: dict) -> tuple[str | None, Path | None]:
    """(registry name, folder) of the tokenizer an index's `tokenizer` record names: its recorded folder, else
    the folder of its registry name; folder None when neither exists (the caller says what to do then).

    Examples:
        recorded_tokenizer(read_index(Path("data/shakespeare"))["tokenizer"])   # ("shakespeare-bpe", Path(...))
    """
    name, path = record.get("name"), record.get("path")
    if path and Path(path).is_dir():
        return name, Path(path)
    from llmctl.models.registry import Registry

    entry = Registry().find(name) if name else None
    if entry is not None and Path(entry.path).is_dir():
        return name, Path(entry.path)
    return name, None


def read_index(path: Path) -> dict:
    """The index.json of a data dir, checked: valid UTF-8 JSON, this format, every key readers use, a sane
    vocab_size, and shard files inside the data dir whose sizes match the token counts recorded.

    Examples:
        read_index(Path("data/shakespeare"))["tokenizer"]["path"]
    """
    folder = Path(path)
    index_path = folder / INDEX
    if not index_path.is_file():
        raise LlmctlError(
            f"{folder} is not a tokenized data dir (no {INDEX})",
            hint="create one with `llmctl tokenize encode --tokenizer T --input FILES --output DIR`",
        )
    try:
        index = json.loads(index_path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number, …
        if isinstance(exc, json.JSONDecodeError):
            why = f"{exc.msg} at line {exc.lineno}"
        elif isinstance(exc, UnicodeDecodeError):
            why = "not UTF-8"
        else:
            why = "nested too deeply" if isinstance(exc, RecursionError) else first_line(exc)
        raise LlmctlError(f"{index_path} is damaged (not valid JSON: {why})", hint=_FIX) from exc
    except OSError as exc:
        raise LlmctlError(
            f"cannot read {index_path} ({exc.strerror or exc})", hint="check the file's permissions"
        ) from exc
    if not isinstance(index, dict):
        from llmctl.data.records import json_type

        raise LlmctlError(f"{index_path} is damaged (a JSON {json_type(index)}, not an object)", hint=_FIX)
    _require(index_path, index, "", ("format",))
    if index.get("format") != FORMAT:
        raise LlmctlError(
            f"{index_path} has format {index.get('format')!r}, expected {FORMAT!r}",
            hint="re-run `llmctl tokenize encode` with this llmctl version",
        )
    _require(index_path, index, "", ("dtype", "tokenizer", "splits"))
    _require(index_path, index["tokenizer"], "tokenizer.", ("path",))
    _require(index_path, index["splits"], "splits.", ())
    if index["dtype"] not in ("uint16", "uint32"):  # a tuple: a JSON list or object here must not raise TypeError
        raise LlmctlError(f"{index_path} has dtype {index['dtype']!r}, expected uint16 or uint32", hint=_FIX)
    _check_vocab(index_path, index["tokenizer"].get("vocab_size"), index["dtype"])
    for split, entry in index["splits"].items():
        _require(index_path, entry, f"splits.{split}.", _SPLIT_KEYS)
        _check_split(index_path, folder, split, entry, index["dtype"])
    return index


def _count(index_path: Path, key: str, value, least: int = 0) -> int:
    """An index number that counts something: a whole number (JSON true/false and 3.5 are not), at least `least`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a positive whole number" if least else "a whole number of at least 0"
        raise LlmctlError(f"{index_path} has {key} {json.dumps(value)}, expected {what}", hint=_FIX)
    return value


def _check_vocab(index_path: Path, vocab_size, dtype: str) -> None:
    """vocab_size (optional) is a positive count no larger than MAX_VOCAB whose ids fit the shards' dtype."""
    if vocab_size is None:
        return
    _count(index_path, "tokenizer.vocab_size", vocab_size, least=1)
    if vocab_size > MAX_VOCAB:
        raise LlmctlError(
            f"{index_path} has tokenizer.vocab_size {vocab_size}, more than any tokenizer has (at most {MAX_VOCAB})",
            hint=_FIX,
        )
    if vocab_size > _DTYPE_LIMITS[dtype]:
        raise LlmctlError(
            f"{index_path} has tokenizer.vocab_size {vocab_size} but dtype {dtype}, which holds token ids below "
            f"{_DTYPE_LIMITS[dtype]} only",
            hint=_FIX,
        )


def _inside(index_path: Path, folder: Path, key: str, name) -> Path:
    """The file an index entry names, refused unless it is a relative path that stays inside the data dir.

    Symlinks are resolved first: a shard that links outside the data dir is refused as well."""
    if not isinstance(name, str) or not name:
        raise LlmctlError(f"{index_path} has {key} {json.dumps(name)}, expected a file name", hint=_FIX)
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        why = "an absolute path" if path.is_absolute() else "a path that leaves the data dir with '..'"
        raise LlmctlError(
            f"{index_path} names {key} {name!r}: {why}",
            hint=f"an index may only name files inside {folder}; {_FIX}",
        )
    target = folder / path
    if not target.resolve().is_relative_to(folder.resolve()):
        raise LlmctlError(
            f"{index_path} names {key} {name!r}, a link to {target.resolve()} outside the data dir",
            hint=f"an index may only name files inside {folder}; {_FIX}",
        )
    return target


def _check_split(index_path: Path, folder: Path, split: str, entry: dict, dtype: str) -> None:
    """One split's entry: shard files inside the data dir whose sizes are the token counts the index records."""
    prefix = f"splits.{split}"
    total = _count(index_path, f"{prefix}.tokens", entry["tokens"])
    if not isinstance(entry["shards"], list):
        raise LlmctlError(f"{index_path} is damaged: {prefix}.shards is not a list", hint=_FIX)
    _inside(index_path, folder, f"{prefix}.doc_offsets", entry["doc_offsets"])
    listed = 0
    for number, shard in enumerate(entry["shards"]):
        key = f"{prefix}.shards[{number}]"
        _require(index_path, shard, f"{key}.", ("file", "tokens"))
        f = _inside(index_path, folder, f"{key}.file", shard["file"])
        tokens = _count(index_path, f"{key}.tokens", shard["tokens"])
        if not f.is_file():
            raise LlmctlError(f"shard {f} listed in {index_path} is missing", hint=_FIX)
        size, width = f.stat().st_size, _ITEMSIZE[dtype]
        if size % width:
            raise LlmctlError(
                f"shard {f} is {size} bytes, not a whole number of {dtype} tokens ({width} bytes each)",
                hint=f"the shard is truncated or damaged; {_FIX}",
            )
        if size // width != tokens:
            raise LlmctlError(
                f"shard {f} holds {size // width} tokens, {index_path} says {tokens} ({key}.tokens)",
                hint=f"the shard is truncated or not from this index; {_FIX}",
            )
        listed += tokens
    if listed != total:
        raise LlmctlError(
            f"{index_path} says {prefix}.tokens is {total}, but its shards hold {listed} tokens", hint=_FIX
        )


def _require(index_path: Path, obj, prefix: str, keys: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise LlmctlError(
            f"{index_path} is damaged: {prefix.rstrip('.') or 'the top level'} is not an object", hint=_FIX
        )
    for key in keys:
        if key not in obj:
            raise LlmctlError(f"{index_path} lacks key '{prefix}{key}'", hint=_FIX)


class TokenData:
    """Read a data dir written by `tokenize encode`: memory-mapped token streams per split.

    Examples:
        data = TokenData("data/shakespeare")
        data.tokens("train")          # 1-D numpy memmap (or concatenation of shards)
        data.tokenizer["path"]
    """

    def __init__(self, path: Path):
        self.dir = Path(path)
        self.index = read_index(self.dir)
        self.dtype = self.index["dtype"]
        self._cache: dict = {}

    @property
    def tokenizer(self) -> dict:
        return self.index["tokenizer"]

    @property
    def splits(self) -> list[str]:
        return list(self.index["splits"])

    def num_tokens(self, split: str) -> int:
        return int(self.index["splits"][split]["tokens"]) if split in self.index["splits"] else 0

    def tokens(self, split: str):
        """All tokens of a split as one 1-D array (a memmap when there is one shard)."""
        import numpy as np

        if split not in self.index["splits"]:
            raise LlmctlError(
                f"{self.dir} has no {split!r} split (has: {', '.join(self.splits)})",
                hint="re-encode with --val-fraction > 0 for a validation split",
            )
        if split in self._cache:
            return self._cache[split]
        # read_index checked every shard's path and size; an empty shard cannot be memory-mapped, so it is skipped
        dtype = np.dtype(self.dtype).newbyteorder("<")
        shards = [s for s in self.index["splits"][split]["shards"] if s["tokens"]]
        maps = [np.memmap(self.dir / shard["file"], dtype=dtype, mode="r") for shard in shards]
        arr = maps[0] if len(maps) == 1 else (np.concatenate(maps) if maps else np.zeros(0, dtype=self.dtype))
        self._cache[split] = arr
        return arr

    def doc_offsets(self, split: str):
        """Where each document of a split starts in its token stream."""
        import numpy as np

        f = self.dir / self.index["splits"][split]["doc_offsets"]
        if not f.is_file():
            raise LlmctlError(f"document offsets {f} listed in the index are missing", hint=_FIX)
        try:
            return np.load(f, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise LlmctlError(f"document offsets {f} are damaged ({first_line(exc)})", hint=_FIX) from exc
