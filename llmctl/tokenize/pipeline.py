"""`tokenize encode`'s main loop: documents → curation → tokens → EOS-separated train/val shards.

The main process reads documents (reader.py), drops exact duplicates, hands chunks to workers
(workers.py: quality, decontamination, PII, MinHash, tokenization), then decides near-duplicates and
the train/val split of each kept document in input order, and appends its tokens plus EOS to the
split's ShardWriter (llmctl/data/token_data.py). At most two chunks per worker are in flight, so memory
stays bounded however large the input is.

Examples:
    index = Encoder(folder, paths, ref, state, config, on_progress=None).run()
    index["splits"]["train"]["tokens"]
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.runtime.progress import Progress
from llmctl.tokenize.reader import DocReader, chunks
from llmctl.tokenize.spec import TokenizerRef
from llmctl.tokenize.workers import default_workers, init_worker, process_chunk

STEPS = ("exact_dedup", "quality", "decontaminate", "pii", "near_dedup")  # the order documents meet them
_TRAIN, _VAL = 1, 2  # destination codes per kept document (0: dropped)


def split_of(key: bytes, seed: int, val_fraction: float) -> str:
    """train or val for a document, by a seeded hash of its key: stable under reordering and workers."""
    if val_fraction <= 0:
        return "train"
    h = hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return "val" if int.from_bytes(h, "little") / 2**64 < val_fraction else "train"


class Encoder:
    """One encode run into `folder`; `run()` returns the index (without sources, command, name).

    Examples:
        Encoder(tmp, [Path("input.txt")], ref, state, config, None).run()["stats"]["tokens"]
    """

    def __init__(
        self,
        folder: Path,
        paths: list[Path],
        ref: TokenizerRef,
        state: dict,
        config: dict,
        on_progress: Progress | None,
    ):
        from llmctl.data.curation import ExactDedup, NearDedup
        from llmctl.data.token_data import ShardWriter, dtype_for_vocab

        self.ecfg, self.icfg, self.ccfg = config["encode"], config["input"], config["curation"]
        self.ref, self.state, self.on_progress = ref, state, on_progress
        self.dtype = dtype_for_vocab(ref.vocab_size)
        self.seed, self.val_fraction = self.ecfg["seed"], self.ecfg["val_fraction"]
        self.workers = self.ecfg["workers"] or default_workers()
        self.reader = DocReader(paths, self.icfg["doc_split"], self.icfg["text_field"])
        ccfg = self.ccfg
        self.exact = ExactDedup() if ccfg["exact_dedup"]["enabled"] else None
        self.near = (
            NearDedup(ccfg["near_dedup"]["threshold"], ccfg["near_dedup"]["num_perm"])
            if ccfg["near_dedup"]["enabled"]
            else None
        )
        shard_tokens = self.ecfg["shard_mtokens"] << 20
        self.writers = {"train": ShardWriter(folder, "train", self.dtype, shard_tokens)}
        if self.val_fraction > 0:
            self.writers["val"] = ShardWriter(folder, "val", self.dtype, shard_tokens)
        self.reasons: dict[str, Counter] = {s: Counter() for s in STEPS}
        self.dropped: Counter = Counter()
        self.pii_counts: Counter = Counter()
        self.totals = {"docs_read": 0, "docs_kept": 0, "bytes_kept": 0, "pii_docs": 0}
        self.split_docs: Counter = Counter()
        self.split_bytes: Counter = Counter()  # UTF-8 bytes of the documents (as tokenized) per split: bits per byte

    # ---- the loop --------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Encode everything; on any failure the unfinished shards are dropped and the error re-raised."""
        t0 = time.perf_counter()
        work = self._prefilter(chunks(iter(self.reader), self.ecfg["chunk_kb"] << 10))
        try:
            if self.workers <= 1:
                self._run_here(work)
            else:
                self._run_pool(work)
            splits = {s: w.close() for s, w in self.writers.items()}
        except BaseException:
            for w in self.writers.values():
                w.abort()
            raise
        seconds = time.perf_counter() - t0
        self._check_kept()
        return self._index(splits, seconds)

    def _prefilter(self, work: Iterator[list[str]]) -> Iterator[tuple[list[str], list[bytes]]]:
        """Exact dedup first, in the main process (cheap, and duplicates never reach the workers)."""
        from llmctl.data.curation import doc_key

        for chunk in work:
            self.totals["docs_read"] += len(chunk)
            keys = [doc_key(t) for t in chunk]
            if self.exact is not None:
                keep = [not self.exact.seen(k) for k in keys]
                self.dropped["exact_dedup"] += keep.count(False)
                chunk = [t for t, ok in zip(chunk, keep) if ok]
                keys = [k for k, ok in zip(keys, keep) if ok]
            if chunk:
                yield chunk, keys

    def _run_here(self, work) -> None:
        init_worker(self.state, threads=True)
        for chunk, keys in work:
            self._consume(process_chunk(chunk), keys)

    def _run_pool(self, work) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers: one thread each, no fork warning
        try:
            pool = ctx.Pool(self.workers, initializer=init_worker, initargs=(self.state, False))
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
        try:
            pending: deque = deque()
            for chunk, keys in work:  # at most 2 chunks in flight per worker: streaming, bounded memory
                pending.append((pool.apply_async(process_chunk, (chunk,)), keys))
                while len(pending) >= 2 * self.workers:
                    job, job_keys = pending.popleft()
                    self._consume(job.get(), job_keys)
            while pending:
                job, job_keys = pending.popleft()
                self._consume(job.get(), job_keys)
        finally:
            pool.terminate()
            pool.join()

    # ---- one chunk's results -------------------------------------------------------------------------

    def _consume(self, res: dict, keys: list[bytes]) -> None:
        self.totals["pii_docs"] += res["pii_docs"]
        self.pii_counts.update(res["pii_counts"])
        self._write(res, self._route(res, keys))
        if self.on_progress is not None:
            docs = self.totals["docs_read"]
            self.on_progress(f"{docs:,} docs", self.reader.bytes_read, self.reader.total_bytes)  # done/total: bytes

    def _route(self, res: dict, keys: list[bytes]):
        """Per document kept by the workers: 0 dropped (near-duplicate), _TRAIN or _VAL; counts drops."""
        import numpy as np

        dest = np.zeros(len(res["lens"]), dtype=np.int8)
        k = 0
        for st, key in zip(res["status"], keys):
            if st is not None:
                step, why = st.split(":", 1)
                self.dropped[step] += 1
                self.reasons[step][why] += 1
                continue
            if self.near is not None and self.near.is_duplicate(key, res["sigs"][k]):
                self.dropped["near_dedup"] += 1
            else:
                split = split_of(key, self.seed, self.val_fraction)
                dest[k] = _VAL if split == "val" else _TRAIN
                self.totals["bytes_kept"] += res["bytes"][k]
                self.split_bytes[split] += res["bytes"][k]
            k += 1
        return dest

    def _write(self, res: dict, dest) -> None:
        """Append each routed document's tokens plus EOS to its split's shards."""
        import numpy as np

        lens = res["lens"]
        tok_dest = np.repeat(dest, lens)
        for code, split in ((_TRAIN, "train"), (_VAL, "val")):
            sel = dest == code
            n = int(sel.sum())
            if not n:
                continue
            split_lens = lens[sel]
            flat = np.insert(res["ids"][tok_dest == code], np.cumsum(split_lens), self.ref.eos_id)
            self.writers[split].add_documents(flat, split_lens + 1)
            self.split_docs[split] += n
            self.totals["docs_kept"] += n

    # ---- the report ------------------------------------------------------------------------------------

    def _check_kept(self) -> None:
        if self.totals["docs_read"] == 0:
            raise LlmctlError("the input has no documents", hint="check the files, --text-field and --doc-split")
        if self.totals["docs_kept"] == 0:
            raise LlmctlError(
                f"curation dropped all {self.totals['docs_read']} documents ({dict(self.dropped)})",
                hint="loosen the curation settings (see `llmctl profiles show tokenize/default`)",
            )

    def _enabled(self) -> dict:
        c = self.ccfg
        return {
            "quality": c["quality"]["enabled"],
            "decontaminate": self.state["decontaminator"] is not None,
            "pii": c["pii"]["enabled"],
            "exact_dedup": self.exact is not None,
            "near_dedup": self.near is not None,
        }

    def _steps(self) -> list[dict]:
        """What each enabled curation step got, dropped and kept, in order."""
        c = self.ccfg
        steps = []
        remaining = self.totals["docs_read"]
        enabled = self._enabled()
        for step in STEPS:
            if not enabled[step]:
                continue
            entry = {
                "step": step,
                "in": remaining,
                "dropped": self.dropped[step],
                "kept": remaining - self.dropped[step],
            }
            if self.reasons[step] and step == "quality":
                entry["reasons"] = dict(sorted(self.reasons[step].items()))
            if step == "pii":
                entry.update(
                    {
                        "dropped": 0,
                        "kept": remaining,
                        "docs_redacted": self.totals["pii_docs"],
                        "redactions": dict(sorted(self.pii_counts.items())),
                    }
                )
            if step == "decontaminate":
                entry.update(
                    {
                        "files": [str(Path(f).expanduser().resolve()) for f in c["decontaminate"]["files"]],
                        "ngram": c["decontaminate"]["ngram"],
                        "eval_ngrams": len(self.state["decontaminator"]),
                    }
                )
            if step == "near_dedup":
                entry.update(
                    {
                        "threshold": c["near_dedup"]["threshold"],
                        "num_perm": c["near_dedup"]["num_perm"],
                        "shingle_words": c["near_dedup"]["shingle_words"],
                    }
                )
            steps.append(entry)
            remaining = entry["kept"]
        return steps

    def _index(self, splits: dict, seconds: float) -> dict:
        t = self.totals
        for s in splits:
            splits[s]["docs"] = self.split_docs[s]
            splits[s]["bytes"] = self.split_bytes[s]
        tokens = sum(v["tokens"] for v in splits.values())
        bytes_read = self.reader.bytes_read
        return {
            "dtype": self.dtype,
            "tokenizer": self.ref.json(),
            "splits": splits,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "eos_after_each_doc": True,
            "input": {"doc_split": self.icfg["doc_split"], "text_field": self.icfg["text_field"]},
            "curation": {"steps": self._steps(), "docs_in": t["docs_read"], "docs_kept": t["docs_kept"]},
            "stats": {
                "docs_read": t["docs_read"],
                "docs_kept": t["docs_kept"],
                "bytes_read": bytes_read,
                "bytes_kept": t["bytes_kept"],
                "tokens": tokens,
                "bytes_per_token": round(t["bytes_kept"] / max(1, tokens - t["docs_kept"]), 4),
                "seconds": round(seconds, 3),
                "mb_per_s": round(bytes_read / 1e6 / seconds, 3) if seconds > 0 else None,
                "workers": self.workers,
            },
        }
