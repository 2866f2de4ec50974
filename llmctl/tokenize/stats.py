"""`tokenize stats` and `tokenize show`: what a tokenizer makes of a corpus or of one text.

Examples:
    corpus_stats("shakespeare-bpe", ["input.txt"], config)["bytes_per_token"]
    corpus_stats(None, ["data/shakespeare"], config)["tokens"]      # an encoded data dir, its own tokenizer
    show_tokens("shakespeare-bpe", "Hello world")["pieces"][0]
"""

from __future__ import annotations

import time
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError
from llmctl.tokenize.reader import DocReader, chunks, resolve_inputs
from llmctl.tokenize.spec import TokenizerRef, load_tokenizer_spec

_BLOCK = 1 << 24  # tokens counted per step of a data dir's stream: 128 MiB as int64
_EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


def _add_counts(counts, ids):
    """counts += bincount(ids), growing counts for ids beyond it (added tokens)."""
    import numpy as np

    if len(ids) and ids.max() >= len(counts):
        counts = np.pad(counts, (0, int(ids.max()) + 1 - len(counts)))
    counts += np.bincount(ids, minlength=len(counts))
    return counts


def _data_dir_counts(dirs: list[Path], vocab: int):
    """Token counts, document lengths (EOS separators left out) and text bytes of encoded data dirs, all splits."""
    import numpy as np

    from llmctl.data.token_data import TokenData

    counts = np.zeros(vocab, dtype=np.int64)
    lens: list = []
    nbytes = 0
    for d in dirs:
        data = TokenData(d)
        eos = data.tokenizer.get("eos_id")
        for split in data.splits:
            toks = data.tokens(split)
            for i in range(0, len(toks), _BLOCK):
                counts = _add_counts(counts, np.asarray(toks[i : i + _BLOCK], dtype=np.int64))
            offsets = data.doc_offsets(split)
            if eos is not None and len(offsets):
                counts[eos] -= len(offsets)  # the separators are not document text
            lens.append(np.diff(np.append(offsets, len(toks))) - 1)
            nbytes += int(data.index["splits"][split].get("bytes") or 0)
    return counts, (np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)), nbytes


def _text_counts(ref: TokenizerRef, paths: list[Path], icfg: dict, vocab: int):
    """Token counts, document lengths, and bytes/chars/words of text files."""
    import numpy as np

    reader = DocReader(paths, icfg["doc_split"], icfg["text_field"])
    counts = np.zeros(vocab, dtype=np.int64)
    doc_lens: list[int] = []
    nbytes = nchars = nwords = 0
    for chunk in chunks(iter(reader), 256 << 10):
        for text, enc in zip(chunk, ref.backend.encode_batch_fast(chunk, add_special_tokens=False)):
            doc_lens.append(len(enc.ids))
            if enc.ids:
                counts = _add_counts(counts, np.asarray(enc.ids, dtype=np.int64))
            nbytes += len(text.encode("utf-8"))
            nchars += len(text)
            nwords += len(text.split())
    return counts, np.asarray(doc_lens, dtype=np.int64), nbytes, nchars, nwords


def _histogram(lens) -> list[dict]:
    """Document counts in power-of-two token-length buckets (empty buckets left out)."""
    import numpy as np

    top_edge = int(lens.max()) + 1 if len(lens) else 1
    edges = [e for e in _EDGES if e < top_edge] + [max(top_edge, 1)]
    hist, _ = np.histogram(lens, bins=edges)
    return [{"min": int(edges[i]), "max": int(edges[i + 1] - 1), "docs": int(h)} for i, h in enumerate(hist) if h]


def _top_tokens(ref: TokenizerRef, counts, top_k: int, tokens: int) -> list[dict]:
    import numpy as np

    top = np.argsort(-counts, kind="stable")[:top_k]
    return [
        {
            "id": int(i),
            "piece": ref.backend.id_to_token(int(i)),
            "text": ref.backend.decode([int(i)], skip_special_tokens=False),
            "count": int(counts[i]),
            "share": round(float(counts[i]) / tokens, 5) if tokens else 0.0,
        }
        for i in top
        if counts[i] > 0
    ]


def _inputs_and_tokenizer(tokenizer: str | None, inputs: list) -> tuple[list[Path], str]:
    """(encoded data dirs, or [] for text files; the tokenizer spec): data dirs default to their own tokenizer."""
    from llmctl.data.token_data import is_data_dir

    if not inputs:
        raise UsageError("no input files", hint="pass --input FILE (repeatable)")
    dirs = [Path(p).expanduser() for p in inputs if is_data_dir(Path(p).expanduser())]
    if dirs and len(dirs) != len(inputs):
        raise UsageError("mix of data dirs and text files", hint="pass either encoded data dirs or text files")
    if tokenizer is None:
        if not dirs:
            raise UsageError("--tokenizer is required for text files", hint="pass --tokenizer NAME")
        tokenizer = str(dirs[0])
    return dirs, tokenizer


def corpus_stats(tokenizer: str | None, inputs: list, config: dict) -> dict:
    """Token statistics of input files (or encoded data dirs): tokens, bytes/token, unknown rate, top tokens,
    document lengths. For data dirs the tokenizer defaults to the one they were encoded with.

    Examples:
        corpus_stats("shakespeare-bpe", ["input.txt"], config)["bytes_per_token"]
        corpus_stats(None, ["data/shakespeare"], config)["tokens"]
    """
    import numpy as np

    dirs, tokenizer = _inputs_and_tokenizer(tokenizer, inputs)
    ref = load_tokenizer_spec(tokenizer)
    vocab = max(ref.vocab_size, ref.backend.get_vocab_size(with_added_tokens=True))
    t0 = time.perf_counter()
    nchars = nwords = None
    if dirs:
        paths = dirs
        counts, lens, nbytes = _data_dir_counts(dirs, vocab)
        nbytes = nbytes or None
    else:
        paths = resolve_inputs(inputs)
        counts, lens, nbytes, nchars, nwords = _text_counts(ref, paths, config["input"], vocab)
    seconds = time.perf_counter() - t0
    tokens = int(counts.sum())
    unk = int(counts[ref.unk_id]) if ref.unk_id is not None and ref.unk_id < len(counts) else 0
    used = int((counts > 0).sum())
    return {
        "tokenizer": ref.label,
        "tokenizer_path": ref.path,
        "vocab_size": ref.vocab_size,
        "files": [str(p) for p in paths],
        "docs": len(lens),
        "tokens": tokens,
        "bytes": nbytes,
        "chars": nchars,
        "words": nwords,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens and nbytes else None,
        "chars_per_token": round(nchars / tokens, 4) if tokens and nchars else None,
        "tokens_per_word": round(tokens / nwords, 4) if nwords else None,
        "unk_id": ref.unk_id,
        "unk_tokens": unk,
        "unk_rate": round(unk / tokens, 6) if tokens else 0.0,
        "vocab_used": used,
        "vocab_used_fraction": round(used / ref.vocab_size, 4),
        "top_tokens": _top_tokens(ref, counts, config["stats"]["top_k"], tokens),
        "doc_tokens": {
            "mean": round(float(lens.mean()), 2) if len(lens) else 0,
            "median": float(np.median(lens)) if len(lens) else 0,
            "max": int(lens.max()) if len(lens) else 0,
            "histogram": _histogram(lens),
        },
        "seconds": round(seconds, 3),
    }


def show_tokens(tokenizer: str, text: str) -> dict:
    """The pieces of text under a tokenizer: ids, token strings and the text span each covers.

    Examples:
        show_tokens("shakespeare-bpe", "Hello world")["pieces"][0]   # {"id": …, "token": "Hello", "text": "Hello"}
    """
    if text == "":
        raise LlmctlError(
            "no text to tokenize", hint='pass the text as an argument: llmctl tokenize show -t T "some text"'
        )
    ref = load_tokenizer_spec(tokenizer)
    enc = ref.backend.encode(text, add_special_tokens=False)
    pieces = []
    for tid, tok, (start, end) in zip(enc.ids, enc.tokens, enc.offsets):
        pieces.append(
            {
                "id": tid,
                "token": tok,
                "text": text[start:end],
                "start": start,
                "end": end,
                "unknown": ref.unk_id is not None and tid == ref.unk_id,
            }
        )
    decoded = ref.backend.decode(enc.ids, skip_special_tokens=False)
    return {
        "tokenizer": ref.label,
        "text": text,
        "ids": list(enc.ids),
        "pieces": pieces,
        "tokens": len(enc.ids),
        "bytes": len(text.encode("utf-8")),
        "round_trip": decoded == text,
    }


def data_dir_text(path: Path, max_tokens: int) -> str:
    """The documents of a tokenized data dir as text (train split first), decoded with its recorded tokenizer.

    At most max_tokens tokens are decoded; documents are joined by blank lines. Used when a data dir is
    given as calibration data.

    Examples:
        data_dir_text(Path("data/shakespeare"), 1 << 20)[:40]
    """
    import numpy as np

    from llmctl.data.token_data import TokenData

    data = TokenData(path)
    ref = load_tokenizer_spec(str(path))
    docs: list[list[int]] = []
    left = max_tokens
    for split in sorted(data.splits, key=lambda s: s != "train"):
        toks = np.asarray(data.tokens(split)[:left], dtype=np.int64)
        left -= len(toks)
        cuts = np.flatnonzero(toks == ref.eos_id) if ref.eos_id is not None else np.zeros(0, dtype=np.int64)
        docs += [part.tolist() for part in np.split(toks, cuts) if len(part)]
        if left <= 0:
            break
    texts = ref.backend.decode_batch([[t for t in d if t != ref.eos_id] for d in docs], skip_special_tokens=False)
    text = "\n\n".join(t for t in texts if t.strip())
    if not text.strip():
        raise LlmctlError(f"data dir {path} has no text", hint="give a text file, or re-encode the data")
    return text
