"""`tokenize encode`'s per-chunk work, run in worker processes (or in-process with one worker).

Each chunk of documents goes through the per-document curation steps (quality, decontamination, PII
redaction, MinHash signature for near-dedup) and the tokenizer. Steps that need global state (exact
and near dedup decisions, the train/val split) stay in the main process (llmctl/tokenize/pipeline.py).

Examples:
    init_worker(state, threads=True)
    result = process_chunk(["first document", "second document"])
    result["ids"], result["lens"]
"""

from __future__ import annotations

import os
from collections import Counter

_W: dict = {}  # per-process worker state (tokenizer, curation steps)


def init_worker(state: dict, threads: bool) -> None:
    """Set up a worker (or the main process with workers=1): tokenizer from JSON, curation objects."""
    if not threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    from llmctl.data.curation import QualityFilter

    _W.clear()
    _W["tok"] = Tokenizer.from_str(state["tokenizer_json"])
    cur = state["curation"]
    q = cur["quality"]
    _W["quality"] = QualityFilter(**{k: v for k, v in q.items() if k != "enabled"}) if q["enabled"] else None
    _W["decon"] = state.get("decontaminator")
    _W["pii"] = tuple(cur["pii"]["kinds"]) if cur["pii"]["enabled"] else None
    nd = cur["near_dedup"]
    _W["near"] = (nd["num_perm"], nd["shingle_words"]) if nd["enabled"] else None


def _curate(texts: list[str]) -> tuple[list[str | None], list[str], Counter, int]:
    """(status per document: None kept or "step:reason", kept texts (PII redacted), PII counts, redacted docs)."""
    from llmctl.data.curation import redact_pii

    quality, decon, pii = _W["quality"], _W["decon"], _W["pii"]
    status: list[str | None] = []
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
            text, counts = redact_pii(text, pii)
            if counts:
                pii_docs += 1
                pii_counts.update(counts)
        status.append(None)
        kept.append(text)
    return status, kept, pii_counts, pii_docs


def process_chunk(texts: list[str]) -> dict:
    """Per-document curation and tokenization of one chunk.

    Returns status (per input doc), sigs (MinHash per kept doc or None), ids (all kept docs' tokens back
    to back, uint32), lens (tokens per kept doc), bytes (UTF-8 bytes per kept doc) and PII counts.
    """
    import numpy as np

    from llmctl.data.curation import minhash_signature

    status, kept, pii_counts, pii_docs = _curate(texts)
    near = _W["near"]
    sigs = np.stack([minhash_signature(t, near[0], near[1]) for t in kept]) if near and kept else None
    encs = _W["tok"].encode_batch_fast(kept, add_special_tokens=False) if kept else []
    arrays = [np.asarray(e.ids, dtype=np.uint32) for e in encs]
    lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)
    nbytes = [len(t.encode("utf-8")) for t in kept]
    return {
        "status": status,
        "sigs": sigs,
        "ids": ids,
        "lens": lens,
        "bytes": nbytes,
        "pii_counts": dict(pii_counts),
        "pii_docs": pii_docs,
    }


def default_workers() -> int:
    """--workers 0 (auto): in-process on up to 2 cores, else one worker process per core.

    In-process, the Rust tokenizer already encodes each batch on all cores; on this project's 2-core
    machines that measured faster than 2 worker processes (benchmarks/tokenize_speed.py). With more
    cores, processes also spread the Python side (reading, curation) and win.
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else cores
