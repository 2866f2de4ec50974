"""Calibration and held-out text for `quantize` and `prune`: one reader, one sampler.

A calibration source is a text file, a JSONL/JSON/Parquet file of records (any layout of
llmctl/data/layouts.py: text, prompt/output, instruction/input/output, chat messages, …; read by
llmctl/data/records.py) or a tokenized data dir / registry entry of format "data". Calibration
windows are non-overlapping token chunks picked at random (seeded); held-out text for
perplexity is the tail of the same source, never used for calibration, unless an explicit
evaluation file is given.

Examples:
    text, what = read_source("../shared/data/wikitext-2-raw/wiki.test.raw")
    data = prepare_data(tokenizer, calib="wiki.test.raw", samples=32, seqlen=512, seed=0,
                        eval_data=None, eval_tokens=8192)
    data.windows[0].shape, data.eval_text[:40]
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import LlmctlError

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".txt", ".raw", ".md", ".text")
_NOT_DATA = (
    "llmctl-entry.json",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
DATA_DIR_TOKENS = 1 << 21  # tokens decoded from a tokenized data dir: ~8 MB of text, far above 32 × 512 windows


def _read_records(path: Path, what: str, option: str | None) -> str:
    """The text of every record of a JSONL/JSON/Parquet file (any layout of llmctl/data/layouts.py, or bare strings)."""
    from llmctl.data.layouts import record_text
    from llmctl.data.records import DataFile

    source = DataFile(path, what=what, option=option, fmt="records").check()
    texts = [record_text(rec.value, source, rec.where) for rec in source.records(objects=False)]
    text = "\n\n".join(t for t in texts if t.strip())
    if not text.strip():
        raise source.error("has no text in its records", hint='give records with some text, e.g. {"text": "…"}')
    return text


def read_path(path: Path, what: str = "calibration data", option: str | None = "--calib-data") -> str:
    """Read one file (text, .jsonl, .json, .parquet), a tokenized data dir, or every data file in a folder.

    Examples:
        read_path(Path("../shared/data/wikitext-2-raw/wiki.test.raw"))[:40]
    """
    from llmctl.data.records import read_text
    from llmctl.data.token_data import is_data_dir

    path = Path(path).expanduser()
    if is_data_dir(path):
        from llmctl.tokenize import data_dir_text

        return data_dir_text(path, DATA_DIR_TOKENS)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in DATA_SUFFIXES
            and not p.name.startswith(".")
            and p.name not in _NOT_DATA
        )
        if not files:
            raise LlmctlError(
                f"{what} folder {path} has no .txt, .raw, .jsonl, .json or .parquet files",
                hint=f"point {option or 'it'} at a text or JSONL file",
            )
        return "\n\n".join(read_path(f, what, option) for f in files)
    if not path.exists():
        raise LlmctlError(f"{what} {path} not found", hint="give a text file, a JSONL file or a registry data name")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json", ".parquet"):
        return _read_records(path, what, option)
    return read_text(path, what=what, option=option)


def read_source(source: str, what: str = "calibration data", option: str | None = "--calib-data") -> tuple[str, str]:
    """Text of a calibration source (path or registry data name) and a short description of it."""
    path = Path(source).expanduser()
    if path.exists():
        return read_path(path, what, option), str(path.resolve())
    from llmctl.models.registry import Registry

    entry = Registry().find(source)
    if entry is not None:
        if entry.format != "data":
            raise LlmctlError(
                f"{source!r} is a {entry.format!r} model, not a data set",
                hint="give a text/JSONL file or a registry entry of format 'data'",
            )
        return read_path(Path(entry.path), what, option), f"registry:{source}"
    raise LlmctlError(
        f"{what} {source} not found",
        hint="give a text file, a JSONL file or a registry data name (see `llmctl models list`)",
    )


@dataclass
class PreparedData:
    """Calibration windows (each a 1×seqlen LongTensor) and held-out text for perplexity."""

    windows: list = field(default_factory=list)
    eval_text: str | None = None
    calib_source: str | None = None
    eval_source: str | None = None
    calib_tokens: int = 0
    eval_tokens: int = 0

    def describe(self) -> dict:
        return {
            "calib_data": self.calib_source,
            "calib_samples": len(self.windows),
            "calib_seqlen": int(self.windows[0].shape[1]) if self.windows else None,
            "calib_source_tokens": self.calib_tokens,
            "eval_data": self.eval_source,
            "eval_tokens": self.eval_tokens,
        }


def encode(tokenizer, text: str):
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return ids.to(torch.long)


def sample_windows(ids, samples: int, seqlen: int, seed: int, what: str = "calibration data") -> list:
    """`samples` non-overlapping windows of `seqlen` tokens from ids, chosen at random with seed."""
    if samples < 1 or seqlen < 2:
        raise LlmctlError(f"need at least 1 calibration sample of at least 2 tokens (got {samples} × {seqlen})")
    n_chunks = ids.numel() // seqlen
    if n_chunks < samples:
        raise LlmctlError(
            f"{what} has {ids.numel()} tokens, fewer than the {samples} × {seqlen} = {samples * seqlen} asked for",
            hint="give a longer file, or lower --calib-samples / --calib-seqlen",
        )
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(n_chunks), samples))
    return [ids[k * seqlen : (k + 1) * seqlen].unsqueeze(0) for k in picks]


def prepare_data(
    tokenizer,
    calib: str | None,
    samples: int,
    seqlen: int,
    seed: int,
    eval_data: str | None,
    eval_tokens: int,
    need_calib: bool,
) -> PreparedData:
    """Read and tokenize calibration and held-out data once; every size problem is reported up front.

    Held-out text: `eval_data` if given (its first eval_tokens tokens), else the last eval_tokens
    tokens of the calibration source (which calibration then never sees). No source: no perplexity.
    """
    out = PreparedData()
    if need_calib and not calib:
        raise LlmctlError("this method needs calibration data", hint="pass --calib-data FILE (text or JSONL)")
    calib_ids = None
    if calib:
        text, out.calib_source = read_source(calib)
        calib_ids = encode(tokenizer, text)
        out.calib_tokens = int(calib_ids.numel())
    if eval_data:
        text, out.eval_source = read_source(eval_data, "eval data", "--eval-data")
        ids = encode(tokenizer, text)[:eval_tokens] if eval_tokens else encode(tokenizer, text)
        out.eval_text = tokenizer.decode(ids)
        out.eval_tokens = int(ids.numel())
    elif calib_ids is not None and eval_tokens:
        held = calib_ids[-eval_tokens:]
        if need_calib:
            if calib_ids.numel() - eval_tokens < samples * seqlen:
                raise LlmctlError(
                    f"calibration data {calib} has {calib_ids.numel()} tokens, fewer than {samples} × {seqlen} "
                    f"calibration tokens plus {eval_tokens} held-out tokens for perplexity",
                    hint="give a longer file, lower --calib-samples/--calib-seqlen/--eval-tokens, or pass --eval-data",
                )
            calib_ids = calib_ids[:-eval_tokens]
        out.eval_text = tokenizer.decode(held)
        out.eval_tokens = int(held.numel())
        out.eval_source = f"{out.calib_source} (last {out.eval_tokens} tokens, held out)"
    if need_calib:
        out.windows = sample_windows(calib_ids, samples, seqlen, seed, what=f"calibration data {calib}")
    return out


def held_out_perplexity(model, tokenizer, text: str | None, seqlen: int = 512) -> float | None:
    """Token perplexity of text with non-overlapping windows (llmctl.evaluate.perplexity); None without text."""
    if not text:
        return None
    from llmctl.evaluate.perplexity import perplexity

    return round(perplexity(model, tokenizer, text, seqlen=seqlen, stride=seqlen)["perplexity"], 4)


def parent_perplexity(loaded, text: str | None, seqlen: int, say: Callable[[str], None]) -> float | None:
    """Held-out perplexity of an unmodified model, remembered per (weights, text, seqlen) in LLMCTL_HOME/cache.

    `quantize` and `prune` score their parent before compressing it; on the default model that pass costs
    ~6 s of a 20–30 s RTN or Wanda command on 2 cores (issue 16), and it gives the same number every time the
    same weights meet the same text. The key covers the weight files' names, sizes and mtimes, so replacing a
    model (`--force`) or editing its files scores it again.

    Examples:
        parent_perplexity(loaded, data.eval_text, 512, print)
    """
    if not text:
        return None
    key = _perplexity_key(loaded, text, seqlen)
    cache = _read_cache()
    if key and key in cache:
        say("perplexity before (remembered from an earlier run on the same weights and text)")
        return cache[key]
    say("perplexity before")
    value = held_out_perplexity(loaded.model, loaded.tokenizer, text, seqlen)
    if key and value is not None:
        _write_cache({**cache, key: value})
    return value


_CACHE_ENTRIES = 256  # a few KB; oldest dropped first


def _cache_path():
    from llmctl.paths import llmctl_home

    return llmctl_home() / "cache" / "heldout-perplexity.json"


def _perplexity_key(loaded, text: str, seqlen: int) -> str | None:
    """sha256 of the weight files' identity, the text and seqlen; None when the weights have no folder."""
    import hashlib

    folder = Path(getattr(loaded.resolved, "path", "") or "")
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(f"{seqlen}\n{getattr(loaded, 'dtype', '')}\n".encode())
    h.update(text.encode("utf-8"))
    return h.hexdigest()


def _read_cache() -> dict:
    import json

    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: score again and rewrite it
    return {k: v for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def _write_cache(cache: dict) -> None:
    import json

    from llmctl.paths import atomic_file

    items = list(cache.items())[-_CACHE_ENTRIES:]
    try:
        with atomic_file(_cache_path()) as fh:
            json.dump(dict(items), fh)
    except OSError:
        pass  # a read-only or full disk only costs the next run a perplexity pass
