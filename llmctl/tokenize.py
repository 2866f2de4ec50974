"""Tokenizers and tokenized corpora: train (HF `tokenizers`), encode to token shards, stats, show.

`encode` streams documents from .txt/.jsonl/.json/.parquet files through optional curation steps
(llmctl/curation.py) and the tokenizer, on all cores, into the on-disk format of llmctl/token_data.py
(flat uint16/uint32 token stream, EOS after every document, train/val split by document).

Examples:
    train_tokenizer(["input.txt"], config, name="shakespeare-bpe")
    encode_corpus("shakespeare-bpe", ["input.txt"], config, output=Path("data/shakespeare"))
    corpus_stats("shakespeare-bpe", ["input.txt"], config)
    show_tokens("shakespeare-bpe", "Hello world")
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from llmctl.errors import LlmctlError, UsageError

TYPES = ("bpe", "wordpiece", "unigram")
BYTE_ALPHABET = 256
TEXT_SUFFIXES_JSON = (".jsonl", ".json")
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # a line end followed by whitespace-only lines


# ---- reading documents --------------------------------------------------------------------------


def check_input(path: Path) -> Path:
    """Fail clearly on a missing, empty, binary or non-UTF-8 input file (checks its first 64 KiB)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LlmctlError(f"input {path} does not exist", hint="check the --input path")
    if path.is_dir():
        raise LlmctlError(f"input {path} is a folder", hint="pass files: .txt, .jsonl, .json or .parquet")
    size = path.stat().st_size
    if size == 0:
        raise LlmctlError(f"input {path} is empty", hint="give a file with text in it")
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if path.suffix.lower() == ".parquet":
        if not head.startswith(b"PAR1"):
            raise LlmctlError(f"input {path} is not a Parquet file", hint="give a .parquet file written by pyarrow/pandas")
        return path
    if b"\x00" in head:
        raise LlmctlError(f"input {path} looks binary (it contains NUL bytes)",
                          hint="give UTF-8 text: .txt, .jsonl, .json or .parquet")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 64 KiB boundary
            raise LlmctlError(f"input {path} is not UTF-8 text (bad byte at offset {exc.start})",
                              hint="convert it to UTF-8, or give .jsonl/.parquet") from exc
    return path


class DocReader:
    """Streams documents (non-empty strings) from input files; `bytes_read` tracks progress.

    Examples:
        reader = DocReader([Path("a.txt")], doc_split="blank-line")
        for text in reader: ...
    """

    def __init__(self, paths: list[Path], doc_split: str = "blank-line", text_field: str = "text",
                 block_bytes: int = 1 << 20):
        if doc_split not in ("blank-line", "line", "file"):
            raise UsageError(f"unknown --doc-split {doc_split!r}", hint="use blank-line, line or file")
        self.paths = [Path(p) for p in paths]
        self.doc_split = doc_split
        self.text_field = text_field
        self.block_bytes = block_bytes
        self.bytes_read = 0
        self.total_bytes = sum(p.stat().st_size for p in self.paths)
        self.docs_per_file: dict[str, int] = {}

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            count = 0
            suffix = path.suffix.lower()
            reader = (self._jsonl if suffix == ".jsonl" else self._json if suffix == ".json"
                      else self._parquet if suffix == ".parquet" else self._text)
            for text in reader(path):
                if text.strip():
                    count += 1
                    yield text
            self.docs_per_file[str(path)] = count
            if count == 0:
                raise LlmctlError(f"input {path} has no documents (no non-blank text)",
                                  hint="check the file, --text-field and --doc-split")

    def _lines(self, path: Path) -> Iterator[str]:
        """The file's lines (without their line ends), read block by block."""
        for text in self._blocks(path):
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            yield from lines

    def _blocks(self, path: Path) -> Iterator[str]:
        """The file as decoded text blocks of whole lines (CR/CRLF → LF), about `block_bytes` each."""
        offset = 0
        pending: list[bytes] = []  # bytes after the last line end seen so far
        with open(path, "rb") as raw:
            while True:
                block = raw.read(self.block_bytes)
                if block:
                    cut = block.rfind(b"\n") + 1
                    if cut == 0:
                        pending.append(block)
                        continue
                    part = b"".join([*pending, block[:cut]])
                    pending = [block[cut:]]
                else:
                    part = b"".join(pending)
                if part:
                    nul = part.find(b"\x00")
                    if nul >= 0:
                        raise LlmctlError(f"input {path} looks binary (NUL byte at offset {offset + nul})",
                                          hint="give UTF-8 text files")
                    try:
                        text = part.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise LlmctlError(f"input {path} is not UTF-8 text (bad byte at offset {offset + exc.start})",
                                          hint="convert the file to UTF-8") from exc
                    offset += len(part)
                    self.bytes_read += len(part)
                    yield text.replace("\r\n", "\n").replace("\r", "\n")
                if not block:
                    return

    def _text(self, path: Path) -> Iterator[str]:
        if self.doc_split == "file":
            yield "".join(self._blocks(path)).strip("\n")
            return
        if self.doc_split == "line":
            yield from self._lines(path)
            return
        # blank-line: paragraphs are separated by runs of whitespace-only lines
        carry = "\n"
        for text in self._blocks(path):
            pieces = _BLANK_LINES.split(carry + text)
            carry = pieces.pop()
            for piece in pieces:
                yield piece.strip("\n")
        for piece in _BLANK_LINES.split(carry + "\n"):
            yield piece.strip("\n")

    def _row_text(self, row, path: Path, where: str) -> str:
        if not isinstance(row, dict):
            raise LlmctlError(f"{path} {where} is not a JSON object", hint="each record must be an object with a text field")
        if self.text_field not in row:
            keys = ", ".join(list(row)[:8])
            raise LlmctlError(f"{path} {where} has no field {self.text_field!r} (fields: {keys})",
                              hint="name the text field with --text-field")
        value = row[self.text_field]
        if not isinstance(value, str):
            raise LlmctlError(f"{path} {where}: field {self.text_field!r} is {type(value).__name__}, not text",
                              hint="name a string field with --text-field")
        return value

    def _jsonl(self, path: Path) -> Iterator[str]:
        for lineno, line in enumerate(self._lines(path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LlmctlError(f"{path} line {lineno} is not valid JSON ({exc.msg})",
                                  hint="give one JSON object per line") from exc
            yield self._row_text(row, path, f"line {lineno}")

    def _json(self, path: Path) -> Iterator[str]:
        text = "".join(self._blocks(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LlmctlError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                              hint="give a JSON array of objects, or use .jsonl") from exc
        if not isinstance(data, list):
            raise LlmctlError(f"{path} is not a JSON array", hint="give a JSON array of objects, or use .jsonl")
        for i, row in enumerate(data):
            yield self._row_text(row, path, f"item {i}")

    def _parquet(self, path: Path) -> Iterator[str]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise LlmctlError(f"cannot read Parquet file {path} ({str(exc).splitlines()[0]})",
                              hint="the file may be truncated or damaged") from exc
        names = pf.schema_arrow.names
        if self.text_field not in names:
            raise LlmctlError(f"{path} has no column {self.text_field!r} (columns: {', '.join(names[:8])})",
                              hint="name the text column with --text-field")
        size = path.stat().st_size
        rows = max(pf.metadata.num_rows, 1)
        for batch in pf.iter_batches(columns=[self.text_field], batch_size=1024):
            self.bytes_read += int(size * batch.num_rows / rows)
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield str(value)


def resolve_inputs(inputs: list) -> list[Path]:
    if not inputs:
        raise UsageError("no input files", hint="pass --input FILE (repeatable)")
    return [check_input(Path(p)) for p in inputs]


# ---- tokenizers ---------------------------------------------------------------------------------


@dataclass
class TokenizerRef:
    """A loaded tokenizer and where it came from.

    Examples:
        ref = load_tokenizer_spec("shakespeare-bpe"); ref.backend.encode("hi").ids
    """

    label: str
    name: str | None
    path: str
    fast: object        # transformers tokenizer, when it had to be loaded through transformers
    backend: object     # tokenizers.Tokenizer
    vocab_size: int
    eos_id: int | None
    unk_id: int | None
    sha256: str

    def json(self) -> dict:
        return {"name": self.name, "path": self.path, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "unk_id": self.unk_id, "sha256": self.sha256}


def _tokenizer_dir(spec: str) -> tuple[str | None, Path]:
    """(registry name or None, folder holding tokenizer files) for a --tokenizer value."""
    from llmctl.registry import Registry
    from llmctl.resolve import resolve_model

    path = Path(spec).expanduser()
    if path.is_file() and path.name == "tokenizer.json":
        return None, path.parent
    if path.is_dir() and (path / "index.json").is_file():  # a tokenized data dir: its tokenizer
        return None, Path(json.loads((path / "index.json").read_text())["tokenizer"]["path"])
    reg = Registry()
    try:
        resolved = resolve_model(spec, registry=reg, allow_network=False)
    except LlmctlError as exc:
        raise LlmctlError(f"--tokenizer {spec!r}: {exc.message}",
                          hint="give a tokenizer or model name from `llmctl models list`, or a folder with tokenizer.json") from exc
    fmt, folder = resolved.format, Path(resolved.path)
    if fmt == "data":
        index = json.loads((folder / "index.json").read_text())
        return index["tokenizer"].get("name"), Path(index["tokenizer"]["path"])
    if fmt == "gguf":
        raise LlmctlError(f"--tokenizer {spec!r} is a GGUF file",
                          hint="import it first (`llmctl models import FILE.gguf`) and pass the model name")
    if fmt == "peft-adapter" and not (folder / "tokenizer_config.json").is_file() and resolved.parents:
        return _tokenizer_dir(resolved.parents[0])
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        raise LlmctlError(f"{resolved.label} has no tokenizer files in {folder}",
                          hint="pass a tokenizer made by `llmctl tokenize train`, or a model with tokenizer.json")
    return resolved.name, folder


def _special(config: dict, role: str) -> str | None:
    value = config.get(f"{role}_token")
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def load_tokenizer_spec(spec: str) -> TokenizerRef:
    """Load --tokenizer: a tokenizer/model registry name, a folder, a tokenizer.json, or a data dir.

    A folder with tokenizer.json is read with `tokenizers` directly (fast start); others go through
    transformers' AutoTokenizer (e.g. folders with only vocab.json/merges.txt).
    """
    name, folder = _tokenizer_dir(spec)
    tj = folder / "tokenizer.json"
    roles: dict = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / fname
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            for role in ("bos", "eos", "unk", "pad"):
                roles[role] = _special(data, role) or roles.get(role)
    fast = None
    backend = None
    if tj.is_file():
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(tj))
        except Exception as exc:
            raise LlmctlError(f"cannot read {tj} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                              hint="the file may be damaged; re-create the tokenizer with `llmctl tokenize train`") from exc
        sha = hashlib.sha256(tj.read_bytes()).hexdigest()
    else:
        import logging

        from transformers import AutoTokenizer

        logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
        try:
            fast = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            raise LlmctlError(f"cannot load the tokenizer in {folder} ({text[0] if text else type(exc).__name__})",
                              hint="the folder needs tokenizer.json (see `llmctl tokenize train`)") from exc
        if not getattr(fast, "is_fast", False):
            raise LlmctlError(f"the tokenizer in {folder} has no fast (Rust) version",
                              hint="use a tokenizer with tokenizer.json")
        backend = fast.backend_tokenizer
        for role in ("bos", "eos", "unk", "pad"):
            roles[role] = getattr(fast, f"{role}_token", None) or roles.get(role)
        sha = hashlib.sha256(backend.to_str().encode()).hexdigest()
    ids = {role: (backend.token_to_id(tok) if tok else None) for role, tok in roles.items()}
    return TokenizerRef(label=name or str(folder), name=name, path=str(folder.resolve()), fast=fast,
                        backend=backend, vocab_size=backend.get_vocab_size(with_added_tokens=True),
                        eos_id=ids.get("eos"), unk_id=ids.get("unk"), sha256=sha)


def special_tokens(cfg: dict) -> dict:
    """{role: token} for the configured bos/eos/pad/unk (roles set to null or '' are left out)."""
    out = {}
    for role in ("unk", "bos", "eos", "pad"):
        tok = cfg.get(f"{role}_token")
        if tok:
            out[role] = tok
    return out


def build_tokenizer(kind: str, cfg: dict):
    """An untrained HF `tokenizers` pipeline and its trainer for kind bpe|wordpiece|unigram."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    roles = special_tokens(cfg)
    specials = list(dict.fromkeys([*roles.values(), *cfg.get("extra_special_tokens", [])]))
    vocab = cfg["vocab_size"]
    if kind == "bpe":
        floor = BYTE_ALPHABET + len(specials)
        if vocab < floor:
            raise LlmctlError(f"--vocab-size {vocab} is below the byte alphabet of byte-level BPE "
                              f"({BYTE_ALPHABET} bytes + {len(specials)} special tokens = {floor})",
                              hint=f"use --vocab-size {floor} or more")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=cfg["min_frequency"], special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        return tok, trainer
    if kind in ("wordpiece", "unigram"):
        if "unk" not in roles:
            raise LlmctlError(f"a {kind} tokenizer needs an unknown token", hint="set --unk-token (e.g. '<|unk|>')")
        floor = len(specials) + 2
        if vocab < floor:
            raise LlmctlError(f"--vocab-size {vocab} is too small for {len(specials)} special tokens",
                              hint=f"use --vocab-size {floor} or more (hundreds at least, in practice)")
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=roles["unk"], max_input_chars_per_word=100))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab, min_frequency=cfg["min_frequency"],
                                            special_tokens=specials, show_progress=False)
        return tok, trainer
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab, special_tokens=specials, unk_token=roles["unk"],
                                          show_progress=False)
        return tok, trainer
    raise UsageError(f"unknown tokenizer type {kind!r}", hint=f"use --type {', '.join(TYPES)}")


@dataclass
class TrainResult:
    name: str | None
    path: str
    type: str
    vocab_size: int
    requested_vocab_size: int
    special_tokens: dict
    docs: int
    bytes: int
    seconds: float
    sources: list = field(default_factory=list)

    def json(self) -> dict:
        return self.__dict__.copy()


def train_tokenizer(inputs: list, config: dict, name: str | None = None, output: Path | None = None,
                    force: bool = False, command: str = "") -> TrainResult:
    """Train a tokenizer on input files; save it as an HF tokenizer folder and register it (format tokenizer).

    Examples:
        train_tokenizer(["input.txt"], resolve_config("tokenize"), name="shakespeare-bpe")
    """
    from llmctl.paths import atomic_dir, ensure_new
    from llmctl.profiles import save_config
    from llmctl.registry import ModelEntry, Registry

    cfg, icfg = config["train"], config["input"]
    if cfg["type"] not in TYPES:
        raise UsageError(f"unknown tokenizer type {cfg['type']!r}", hint=f"use --type {', '.join(TYPES)}")
    if name is None and output is None:
        raise UsageError("say where the tokenizer goes", hint="pass --name NAME (registry) and/or --output DIR")
    reg = Registry() if name is not None else None
    if reg is not None:
        from llmctl.registry import validate_name

        validate_name(name)
        if not force and reg.find(name) is not None:
            raise LlmctlError(f"model {name!r} already exists in the registry",
                              hint="pick another --name or pass --force to replace it")
    if output is not None:
        ensure_new(Path(output), force)
    paths = resolve_inputs(inputs)
    tok, trainer = build_tokenizer(cfg["type"], cfg)   # bad type/vocab fail before reading data
    reader = DocReader(paths, icfg["doc_split"], icfg["text_field"])
    t0 = time.perf_counter()
    docs = [0]

    def counted():
        for text in reader:
            docs[0] += 1
            yield text

    try:
        tok.train_from_iterator(counted(), trainer)
    except LlmctlError:
        raise
    except Exception as exc:  # tokenizers raises plain exceptions for impossible settings
        raise LlmctlError(f"tokenizer training failed ({str(exc).splitlines()[0]})",
                          hint="try a smaller --vocab-size or more input text") from exc
    seconds = time.perf_counter() - t0
    roles = special_tokens(cfg)
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg["model_max_length"],
                                   **{f"{r}_token": t for r, t in roles.items()},
                                   additional_special_tokens=list(cfg.get("extra_special_tokens") or []) or None)
    sources = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths]
    meta = {"type": cfg["type"], "vocab_size": len(fast), "requested_vocab_size": cfg["vocab_size"],
            "special_tokens": roles, "docs": docs[0], "bytes": reader.bytes_read, "sources": sources,
            "train_seconds": round(seconds, 3)}

    def fill(folder: Path) -> None:
        fast.save_pretrained(str(folder))
        save_config(config, folder / "llmctl-config.yaml", command)

    final_path: Path
    if output is not None:
        with atomic_dir(Path(output), force=force) as tmp:
            fill(tmp)
        final_path = Path(output).resolve()
        if reg is not None:
            reg.add(ModelEntry(name=name, format="tokenizer", path=str(final_path), command=command,
                               profile=config, meta=meta, managed=False), force=force)
    else:
        with reg.new_model_dir(name, force=force) as tmp:
            fill(tmp)
            entry = reg.add(ModelEntry(name=name, format="tokenizer", path="", command=command,
                                       profile=config, meta=meta), staged=tmp, force=force)
        final_path = Path(entry.path)
    return TrainResult(name=name, path=str(final_path), type=cfg["type"], vocab_size=len(fast),
                       requested_vocab_size=cfg["vocab_size"], special_tokens=roles, docs=docs[0],
                       bytes=reader.bytes_read, seconds=round(seconds, 3), sources=sources)


# ---- encode: workers ----------------------------------------------------------------------------

_W: dict = {}  # per-process worker state (tokenizer, curation steps)


def _init_worker(state: dict, threads: bool) -> None:
    """Set up a worker (or the main process with workers=1): tokenizer from JSON, curation objects."""
    if not threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    from llmctl.curation import QualityFilter

    _W.clear()
    _W["tok"] = Tokenizer.from_str(state["tokenizer_json"])
    cur = state["curation"]
    q = cur["quality"]
    _W["quality"] = QualityFilter(**{k: v for k, v in q.items() if k != "enabled"}) if q["enabled"] else None
    _W["decon"] = state.get("decontaminator")
    _W["pii"] = tuple(cur["pii"]["kinds"]) if cur["pii"]["enabled"] else None
    nd = cur["near_dedup"]
    _W["near"] = (nd["num_perm"], nd["shingle_words"]) if nd["enabled"] else None


def _process_chunk(texts: list[str]) -> dict:
    """Per-document curation (quality, decontamination, PII, MinHash signature) and tokenization of one chunk.

    Deduplication needs global state and happens in the main process, in document order."""
    import numpy as np

    from llmctl.curation import minhash_signature

    quality, decon, pii, near = _W["quality"], _W["decon"], _W["pii"], _W["near"]
    status: list[str | None] = []   # None = kept so far, else "step:reason"
    kept: list[str] = []
    pii_counts: Counter = Counter()
    pii_docs = 0
    for text in texts:
        if quality is not None:
            reason = quality.check(text)
            if reason:
                status.append(f"quality:{reason}")
                continue
        if decon is not None and decon.contaminated(text):
            status.append("decontaminate:ngram_overlap")
            continue
        if pii is not None:
            from llmctl.curation import redact_pii

            text, counts = redact_pii(text, pii)
            if counts:
                pii_docs += 1
                pii_counts.update(counts)
        status.append(None)
        kept.append(text)
    sigs = np.stack([minhash_signature(t, near[0], near[1]) for t in kept]) if near and kept else None
    encs = _W["tok"].encode_batch_fast(kept, add_special_tokens=False) if kept else []
    arrays = [np.asarray(e.ids, dtype=np.uint32) for e in encs]
    lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)
    nbytes = [len(t.encode("utf-8")) for t in kept]
    return {"status": status, "sigs": sigs, "ids": ids, "lens": lens, "bytes": nbytes,
            "pii_counts": dict(pii_counts), "pii_docs": pii_docs}


def _chunks(docs: Iterator[str], chunk_bytes: int) -> Iterator[list[str]]:
    buf: list[str] = []
    size = 0
    for text in docs:
        buf.append(text)
        size += len(text)
        if size >= chunk_bytes:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def default_workers() -> int:
    """--workers 0 (auto): in-process on up to 2 cores, else one worker process per core.

    In-process, the Rust tokenizer already encodes each batch on all cores; on this project's 2-core
    machines that measured faster than 2 worker processes (benchmarks/tokenize_speed.py). With more
    cores, processes also spread the Python side (reading, curation) and win.
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else cores


# ---- encode: main -------------------------------------------------------------------------------


@dataclass
class EncodeResult:
    path: str
    name: str | None
    index: dict

    def json(self) -> dict:
        return {"path": self.path, "name": self.name, **{k: v for k, v in self.index.items() if k != "format"}}


def _split_of(key: bytes, seed: int, val_fraction: float) -> str:
    if val_fraction <= 0:
        return "train"
    h = hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return "val" if int.from_bytes(h, "little") / 2**64 < val_fraction else "train"


def encode_corpus(tokenizer: str, inputs: list, config: dict, output: Path | None = None, name: str | None = None,
                  force: bool = False, command: str = "",
                  on_progress: Callable[[int, int, int], None] | None = None) -> EncodeResult:
    """Documents → curated, tokenized, EOS-separated train/val token shards plus index.json.

    The output is written to a temp dir and renamed into place only when complete; with `name` it is
    also registered (format "data"). `on_progress(bytes_done, bytes_total, docs_done)` is called per chunk.

    Examples:
        encode_corpus("shakespeare-bpe", ["input.txt"], config, output=Path("data/sh"))
    """
    from llmctl.paths import atomic_dir, ensure_new
    from llmctl.registry import ModelEntry, Registry, validate_name

    ecfg, ccfg = config["encode"], config["curation"]
    val_fraction = ecfg["val_fraction"]
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}", hint="e.g. --val-fraction 0.1")
    if output is None and name is None:
        raise UsageError("say where the data goes", hint="pass --output DIR and/or --name NAME (registry)")
    reg = None
    if name is not None:
        validate_name(name)
        reg = Registry()
        if not force and reg.find(name) is not None:
            raise LlmctlError(f"{name!r} already exists in the registry", hint="pick another --name or pass --force")
    if output is not None:
        ensure_new(Path(output), force, what="output dir")
    paths = resolve_inputs(inputs)
    for kind in ccfg["pii"]["kinds"]:
        if kind not in ("email", "phone", "ip"):
            raise LlmctlError(f"unknown PII kind {kind!r}", hint="use email, phone, ip")
    ref = load_tokenizer_spec(tokenizer)
    if ref.eos_id is None:
        raise LlmctlError(f"tokenizer {ref.label} has no EOS token to separate documents",
                          hint="train one with an --eos-token, or use a model's tokenizer")
    decon = None
    if ccfg["decontaminate"]["files"]:
        from llmctl.curation import Decontaminator

        decon = Decontaminator.from_files([Path(f).expanduser() for f in ccfg["decontaminate"]["files"]],
                                          n=ccfg["decontaminate"]["ngram"])
    state = {"tokenizer_json": ref.backend.to_str(), "curation": ccfg, "decontaminator": decon}
    sources = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths]

    def fill(folder: Path) -> dict:
        from llmctl.token_data import file_sha256

        index = _encode_into(folder, paths, ref, state, config, on_progress)
        for src in sources:
            src["sha256"] = file_sha256(Path(src["path"]))
        index.update({"sources": sources, "command": command, "created": time.time()})
        if name is not None:
            index["name"] = name
        from llmctl.profiles import save_config
        from llmctl.token_data import write_index

        save_config(config, folder / "llmctl-config.yaml", command)
        write_index(folder, index)
        return index

    meta_keys = ("dtype", "stats", "val_fraction", "seed")
    try:
        if output is not None:
            with atomic_dir(Path(output), force=force) as tmp:
                index = fill(tmp)
            final = Path(output).resolve()
            if reg is not None:
                reg.add(ModelEntry(name=name, format="data", path=str(final), parents=[ref.name] if ref.name else [],
                                   command=command, profile=config, meta=_data_meta(index, meta_keys),
                                   managed=False), force=force)
        else:
            with reg.new_model_dir(name, force=force) as tmp:
                index = fill(tmp)
                entry = reg.add(ModelEntry(name=name, format="data", path="", parents=[ref.name] if ref.name else [],
                                           command=command, profile=config, meta=_data_meta(index, meta_keys)),
                                staged=tmp, force=force)
            final = Path(entry.path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            where = output or "the registry"
            raise LlmctlError(f"disk full while writing token shards for {where}; nothing was kept",
                              hint="free disk space or pass an --output on another disk") from exc
        raise LlmctlError(f"cannot write tokenized data ({exc.strerror or exc})",
                          hint="check the --output folder is writable") from exc
    from llmctl.token_data import INDEX

    index = json.loads((final / INDEX).read_text())
    return EncodeResult(path=str(final), name=name, index=index)


def _data_meta(index: dict, keys: tuple) -> dict:
    meta = {k: index[k] for k in keys if k in index}
    meta["tokens"] = {s: v["tokens"] for s, v in index["splits"].items()}
    meta["tokenizer"] = index["tokenizer"].get("name") or index["tokenizer"]["path"]
    return meta


def _encode_into(folder: Path, paths: list[Path], ref: TokenizerRef, state: dict, config: dict,
                 on_progress) -> dict:
    import multiprocessing as mp

    import numpy as np

    from llmctl.curation import ExactDedup, NearDedup, doc_key
    from llmctl.token_data import ShardWriter, dtype_for_vocab

    ecfg, icfg, ccfg = config["encode"], config["input"], config["curation"]
    dtype = dtype_for_vocab(ref.vocab_size)
    seed, val_fraction = ecfg["seed"], ecfg["val_fraction"]
    workers = ecfg["workers"] or default_workers()
    reader = DocReader(paths, icfg["doc_split"], icfg["text_field"])
    exact = ExactDedup() if ccfg["exact_dedup"]["enabled"] else None
    near = NearDedup(ccfg["near_dedup"]["threshold"], ccfg["near_dedup"]["num_perm"]) if ccfg["near_dedup"]["enabled"] else None
    shard_tokens = ecfg["shard_mtokens"] << 20
    writers = {"train": ShardWriter(folder, "train", dtype, shard_tokens)}
    if val_fraction > 0:
        writers["val"] = ShardWriter(folder, "val", dtype, shard_tokens)
    order = ["exact_dedup", "quality", "decontaminate", "pii", "near_dedup"]
    enabled = {"quality": ccfg["quality"]["enabled"], "decontaminate": state["decontaminator"] is not None,
               "pii": ccfg["pii"]["enabled"], "exact_dedup": exact is not None, "near_dedup": near is not None}
    reasons: dict[str, Counter] = {s: Counter() for s in order}
    dropped: Counter = Counter()
    pii_counts: Counter = Counter()
    totals = {"docs_read": 0, "docs_kept": 0, "bytes_kept": 0, "chars_read": 0, "pii_docs": 0}
    split_docs: Counter = Counter()
    split_bytes: Counter = Counter()  # UTF-8 bytes of the documents (as tokenized) per split: for bits per byte
    t0 = time.perf_counter()

    def prefilter(chunks: Iterator[list[str]]) -> Iterator[tuple[list[str], list[bytes]]]:
        """Exact dedup first, in the main process (cheap, and duplicates never reach the workers)."""
        for chunk in chunks:
            totals["docs_read"] += len(chunk)
            keys = [doc_key(t) for t in chunk]
            if exact is not None:
                keep = [not exact.seen(k) for k in keys]
                dropped["exact_dedup"] += keep.count(False)
                chunk = [t for t, ok in zip(chunk, keep) if ok]
                keys = [k for k, ok in zip(keys, keep) if ok]
            if chunk:
                yield chunk, keys

    def consume(res: dict, keys: list[bytes]) -> None:
        totals["pii_docs"] += res["pii_docs"]
        pii_counts.update(res["pii_counts"])
        lens = res["lens"]
        dest = np.zeros(len(lens), dtype=np.int8)  # 0 dropped, 1 train, 2 val (per worker-kept doc)
        k = 0
        for st, key in zip(res["status"], keys):
            if st is not None:
                step, why = st.split(":", 1)
                dropped[step] += 1
                reasons[step][why] += 1
                continue
            if near is not None and near.is_duplicate(key, res["sigs"][k]):
                dropped["near_dedup"] += 1
            else:
                split = _split_of(key, seed, val_fraction)
                dest[k] = 2 if split == "val" else 1
                totals["bytes_kept"] += res["bytes"][k]
                split_bytes[split] += res["bytes"][k]
            k += 1
        tok_dest = np.repeat(dest, lens)
        for code, split in ((1, "train"), (2, "val")):
            sel = dest == code
            n = int(sel.sum())
            if not n:
                continue
            split_lens = lens[sel]
            flat = np.insert(res["ids"][tok_dest == code], np.cumsum(split_lens), ref.eos_id)  # EOS after each doc
            writers[split].add_documents(flat, split_lens + 1)
            split_docs[split] += n
            totals["docs_kept"] += n
        if on_progress is not None:
            on_progress(reader.bytes_read, reader.total_bytes, totals["docs_read"])

    chunks = prefilter(_chunks(iter(reader), ecfg["chunk_kb"] << 10))
    try:
        if workers <= 1:
            _init_worker(state, threads=True)
            for chunk, keys in chunks:
                consume(_process_chunk(chunk), keys)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers: one thread each, no fork warning
            try:
                pool = ctx.Pool(workers, initializer=_init_worker, initargs=(state, False))
            finally:
                if saved is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
            try:
                pending: deque = deque()
                for chunk, keys in chunks:  # at most 2 chunks in flight per worker: streaming, bounded memory
                    pending.append((pool.apply_async(_process_chunk, (chunk,)), keys))
                    while len(pending) >= 2 * workers:
                        job, job_keys = pending.popleft()
                        consume(job.get(), job_keys)
                while pending:
                    job, job_keys = pending.popleft()
                    consume(job.get(), job_keys)
            finally:
                pool.terminate()
                pool.join()
        splits = {s: w.close() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    seconds = time.perf_counter() - t0
    if totals["docs_read"] == 0:
        raise LlmctlError("the input has no documents", hint="check the files, --text-field and --doc-split")
    if totals["docs_kept"] == 0:
        raise LlmctlError(f"curation dropped all {totals['docs_read']} documents ({dict(dropped)})",
                          hint="loosen the curation settings (see `llmctl profiles show tokenize/default`)")
    steps = []
    remaining = totals["docs_read"]
    for step in order:
        if not enabled[step]:
            continue
        entry = {"step": step, "in": remaining, "dropped": dropped[step], "kept": remaining - dropped[step]}
        if reasons[step] and step == "quality":
            entry["reasons"] = dict(sorted(reasons[step].items()))
        if step == "pii":
            entry.update({"dropped": 0, "kept": remaining, "docs_redacted": totals["pii_docs"],
                          "redactions": dict(sorted(pii_counts.items()))})
        if step == "decontaminate":
            entry.update({"files": [str(Path(f).expanduser().resolve()) for f in ccfg["decontaminate"]["files"]],
                          "ngram": ccfg["decontaminate"]["ngram"], "eval_ngrams": len(state["decontaminator"])})
        if step == "near_dedup":
            entry.update({"threshold": ccfg["near_dedup"]["threshold"], "num_perm": ccfg["near_dedup"]["num_perm"],
                          "shingle_words": ccfg["near_dedup"]["shingle_words"]})
        steps.append(entry)
        remaining = entry["kept"]
    for s in splits:
        splits[s]["docs"] = split_docs[s]
        splits[s]["bytes"] = split_bytes[s]
    tokens = sum(v["tokens"] for v in splits.values())
    mb = reader.bytes_read / 1e6
    return {
        "dtype": dtype,
        "tokenizer": ref.json(),
        "splits": splits,
        "seed": seed,
        "val_fraction": val_fraction,
        "eos_after_each_doc": True,
        "input": {"doc_split": icfg["doc_split"], "text_field": icfg["text_field"]},
        "curation": {"steps": steps, "docs_in": totals["docs_read"], "docs_kept": totals["docs_kept"]},
        "stats": {"docs_read": totals["docs_read"], "docs_kept": totals["docs_kept"], "bytes_read": reader.bytes_read,
                  "bytes_kept": totals["bytes_kept"], "tokens": tokens,
                  "bytes_per_token": round(totals["bytes_kept"] / max(1, tokens - totals["docs_kept"]), 4),
                  "seconds": round(seconds, 3), "mb_per_s": round(mb / seconds, 3) if seconds > 0 else None,
                  "workers": workers},
    }


# ---- stats and show -----------------------------------------------------------------------------


def _is_data_dir(path) -> bool:
    return Path(path).is_dir() and (Path(path) / "index.json").is_file()


def _data_dir_counts(dirs: list[Path], vocab: int):
    """Token counts and document lengths (EOS separators left out) of encoded data dirs, all splits."""
    import numpy as np

    from llmctl.token_data import TokenData

    counts = np.zeros(vocab, dtype=np.int64)
    lens: list = []
    nbytes = 0
    for d in dirs:
        data = TokenData(d)
        eos = data.tokenizer.get("eos_id")
        for split in data.splits:
            toks = data.tokens(split)
            for i in range(0, len(toks), 1 << 24):
                part = np.asarray(toks[i:i + (1 << 24)], dtype=np.int64)
                if len(part) and part.max() >= len(counts):
                    counts = np.pad(counts, (0, int(part.max()) + 1 - len(counts)))
                counts += np.bincount(part, minlength=len(counts))
            offsets = data.doc_offsets(split)
            n_docs = len(offsets)
            if eos is not None and n_docs:
                counts[eos] -= n_docs  # the separators are not document text
            lens.append(np.diff(np.append(offsets, len(toks))) - 1)
            nbytes += int(data.index["splits"][split].get("bytes") or 0)
    return counts, (np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)), nbytes


def corpus_stats(tokenizer: str | None, inputs: list, config: dict) -> dict:
    """Token statistics of input files (or encoded data dirs): tokens, bytes/token, unknown rate, top tokens,
    document lengths. For data dirs the tokenizer defaults to the one they were encoded with.

    Examples:
        corpus_stats("shakespeare-bpe", ["input.txt"], config)["bytes_per_token"]
        corpus_stats(None, ["data/shakespeare"], config)["tokens"]
    """
    import numpy as np

    icfg = config["input"]
    if not inputs:
        raise UsageError("no input files", hint="pass --input FILE (repeatable)")
    dirs = [Path(p).expanduser() for p in inputs if _is_data_dir(Path(p).expanduser())]
    if dirs and len(dirs) != len(inputs):
        raise UsageError("mix of data dirs and text files", hint="pass either encoded data dirs or text files")
    if tokenizer is None:
        if not dirs:
            raise UsageError("--tokenizer is required for text files", hint="pass --tokenizer NAME")
        tokenizer = str(dirs[0])
    ref = load_tokenizer_spec(tokenizer)
    vocab = max(ref.vocab_size, ref.backend.get_vocab_size(with_added_tokens=True))
    t0 = time.perf_counter()
    nchars = nwords = None
    if dirs:
        paths = dirs
        counts, lens_arr, nbytes = _data_dir_counts(dirs, vocab)
        doc_lens = lens_arr.tolist()
        nbytes = nbytes or None
    else:
        paths = resolve_inputs(inputs)
        reader = DocReader(paths, icfg["doc_split"], icfg["text_field"])
        counts = np.zeros(vocab, dtype=np.int64)
        doc_lens = []
        nbytes = nchars = nwords = 0
        for chunk in _chunks(iter(reader), 256 << 10):
            encs = ref.backend.encode_batch_fast(chunk, add_special_tokens=False)
            for text, enc in zip(chunk, encs):
                ids = enc.ids
                doc_lens.append(len(ids))
                if ids:
                    arr = np.asarray(ids, dtype=np.int64)
                    if arr.max() >= len(counts):
                        counts = np.pad(counts, (0, int(arr.max()) + 1 - len(counts)))
                    counts += np.bincount(arr, minlength=len(counts))
                nbytes += len(text.encode("utf-8"))
                nchars += len(text)
                nwords += len(text.split())
    seconds = time.perf_counter() - t0
    tokens = int(counts.sum())
    unk = int(counts[ref.unk_id]) if ref.unk_id is not None and ref.unk_id < len(counts) else 0
    top_k = config["stats"]["top_k"]
    top = np.argsort(-counts, kind="stable")[:top_k]
    lens = np.asarray(doc_lens, dtype=np.int64)
    edges = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
    top_edge = int(lens.max()) + 1 if len(lens) else 1
    edges = [e for e in edges if e < top_edge] + [max(top_edge, 1)]
    hist, _ = np.histogram(lens, bins=edges)
    histogram = [{"min": int(edges[i]), "max": int(edges[i + 1] - 1), "docs": int(h)}
                 for i, h in enumerate(hist) if h]
    return {
        "tokenizer": ref.label, "tokenizer_path": ref.path, "vocab_size": ref.vocab_size,
        "files": [str(p) for p in paths], "docs": len(doc_lens), "tokens": tokens, "bytes": nbytes,
        "chars": nchars, "words": nwords,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens and nbytes else None,
        "chars_per_token": round(nchars / tokens, 4) if tokens and nchars else None,
        "tokens_per_word": round(tokens / nwords, 4) if nwords else None,
        "unk_id": ref.unk_id, "unk_tokens": unk, "unk_rate": round(unk / tokens, 6) if tokens else 0.0,
        "vocab_used": int((counts > 0).sum()),
        "vocab_used_fraction": round(float((counts > 0).sum()) / ref.vocab_size, 4),
        "top_tokens": [{"id": int(i), "piece": ref.backend.id_to_token(int(i)),
                        "text": ref.backend.decode([int(i)], skip_special_tokens=False),
                        "count": int(counts[i]), "share": round(float(counts[i]) / tokens, 5) if tokens else 0.0}
                       for i in top if counts[i] > 0],
        "doc_tokens": {"mean": round(float(lens.mean()), 2) if len(lens) else 0,
                       "median": float(np.median(lens)) if len(lens) else 0,
                       "max": int(lens.max()) if len(lens) else 0, "histogram": histogram},
        "seconds": round(seconds, 3),
    }


def show_tokens(tokenizer: str, text: str) -> dict:
    """The pieces of text under a tokenizer: ids, token strings and the text span each covers.

    Examples:
        show_tokens("shakespeare-bpe", "Hello world")["pieces"][0]   # {"id": …, "token": "Hello", "text": "Hello"}
    """
    if text == "":
        raise LlmctlError("no text to tokenize", hint='pass the text as an argument: llmctl tokenize show -t T "some text"')
    ref = load_tokenizer_spec(tokenizer)
    enc = ref.backend.encode(text, add_special_tokens=False)
    pieces = []
    for tid, tok, (start, end) in zip(enc.ids, enc.tokens, enc.offsets):
        pieces.append({"id": tid, "token": tok, "text": text[start:end], "start": start, "end": end,
                       "unknown": ref.unk_id is not None and tid == ref.unk_id})
    decoded = ref.backend.decode(enc.ids, skip_special_tokens=False)
    return {"tokenizer": ref.label, "text": text, "ids": list(enc.ids), "pieces": pieces,
            "tokens": len(enc.ids), "bytes": len(text.encode("utf-8")), "round_trip": decoded == text}

