"""Data curation for `tokenize encode`: quality filters, PII redaction, decontamination, exact and near dedup.

Each step is a small object usable on its own. Per-document steps (quality, decontamination, PII) are
pure functions of one text and run inside encode's worker processes; dedup steps keep global state and
run in the main process, in document order, so results are deterministic.

Examples:
    QualityFilter(min_chars=20).check("too short")              # -> "too_short"
    redact_pii("mail me at a@b.org")                            # -> ("mail me at <EMAIL>", {"email": 1})
    Decontaminator.from_files(["hellaswag_val.jsonl"], n=13).contaminated(text)
    dedup = ExactDedup(); dedup.seen(doc_key(text))             # False the first time, True after
    near = NearDedup(threshold=0.8); near.is_duplicate("k1", minhash_signature(text))
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# ---- quality -----------------------------------------------------------------------------------


@dataclass
class QualityFilter:
    """Heuristic quality filters (Gopher/C4 style); `check` returns the first failed rule or None.

    Examples:
        QualityFilter(min_chars=10, max_symbol_ratio=0.2).check("$$$$ ### !!!")   # "too_many_symbols"
    """

    min_chars: int = 0
    max_chars: int = 1_000_000
    min_words: int = 0
    min_alpha_ratio: float = 0.0  # letters / non-space characters
    max_symbol_ratio: float = 1.0  # non-alphanumeric, non-space characters / non-space characters
    max_dup_line_ratio: float = 1.0  # repeated lines / lines (lines counted once are not repeats)

    def check(self, text: str) -> str | None:
        n = len(text)
        if n < self.min_chars:
            return "too_short"
        if n > self.max_chars:
            return "too_long"
        if self.min_words and len(text.split()) < self.min_words:
            return "too_few_words"
        visible = n - sum(map(str.isspace, text))
        if visible:
            letters = sum(map(str.isalpha, text))
            symbols = visible - sum(map(str.isalnum, text))
            if letters / visible < self.min_alpha_ratio:
                return "too_few_letters"
            if symbols / visible > self.max_symbol_ratio:
                return "too_many_symbols"
        elif self.min_alpha_ratio > 0:
            return "too_few_letters"
        if self.max_dup_line_ratio < 1.0:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if len(lines) > 1:
                repeats = len(lines) - len(set(lines))
                if repeats / len(lines) > self.max_dup_line_ratio:
                    return "repeated_lines"
        return None


# ---- PII ---------------------------------------------------------------------------------------

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b")
_IPV6 = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b")
# International (+CC …) or North-American style numbers: 7–15 digits with the usual separators.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b")

_DIGIT = re.compile(r"\d")

PII_KINDS = {"email": (_EMAIL, "<EMAIL>"), "ip": (_IPV4, "<IP>"), "ipv6": (_IPV6, "<IP>"), "phone": (_PHONE, "<PHONE>")}


def redact_pii(text: str, kinds: tuple[str, ...] = ("email", "phone", "ip")) -> tuple[str, dict]:
    """Replace emails, IP addresses and phone numbers with placeholders; return (text, counts per kind).

    Examples:
        redact_pii("call +1 415-555-0100 or mail x@y.com")   # ("call <PHONE> or mail <EMAIL>", {...})
    """
    counts: dict[str, int] = {}
    if "@" not in text and not _DIGIT.search(text):
        return text, counts
    order = ["email", "ip", "ipv6", "phone"]  # emails and IPs first: their digits must not look like phones
    for kind in order:
        base = "ip" if kind == "ipv6" else kind
        if base not in kinds:
            continue
        pattern, placeholder = PII_KINDS[kind]
        text, n = pattern.subn(placeholder, text)
        if n:
            counts[base] = counts.get(base, 0) + n
    return text, counts


# ---- decontamination ---------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words (punctuation and spacing ignored)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int):
    for i in range(len(tokens) - n + 1):
        yield " ".join(tokens[i : i + n])


def eval_texts(path: Path) -> list[str]:
    """Every string in an eval file: all string values of .jsonl/.json/.parquet records (nested too), or the text."""
    from llmctl.data.records import DataFile

    source = DataFile(path, what="decontamination file", option="--decontaminate", fmt="auto").check()
    if source.format() == "text":
        return [source.text()]
    texts: list[str] = []

    def collect(value) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    for rec in source.records(objects=False):
        collect(rec.value)
    return texts


class Decontaminator:
    """Flags documents that share any word n-gram with eval data (GPT-3 style, n=13 by default).

    Eval strings shorter than n words contribute their whole word sequence when it has at least
    `min_words` words, so short multiple-choice endings still count.

    Examples:
        d = Decontaminator.from_files([Path("../shared/data/hellaswag/hellaswag_val_1000.jsonl")], n=13)
        d.contaminated(doc_text)   # True if the doc contains a 13-word span of an eval item
    """

    def __init__(self, texts: list[str], n: int = 13, min_words: int = 8):
        self.n = n
        self.grams: set[str] = set()
        self.short: set[str] = set()
        for text in texts:
            toks = words(text)
            if len(toks) >= n:
                self.grams.update(ngrams(toks, n))
            elif len(toks) >= min_words:
                self.short.add(" ".join(toks))
        self.short_lengths = sorted({len(s.split()) for s in self.short})
        self.vocab = {w for g in self.grams for w in g.split()} | {w for g in self.short for w in g.split()}

    @classmethod
    def from_files(cls, paths: list[Path], n: int = 13, min_words: int = 8) -> Decontaminator:
        texts: list[str] = []
        for p in paths:
            texts.extend(eval_texts(Path(p)))
        return cls(texts, n=n, min_words=min_words)

    def __len__(self) -> int:
        return len(self.grams) + len(self.short)

    def contaminated(self, text: str) -> bool:
        toks = words(text)
        lengths = [k for k in ([self.n] if self.grams else []) + self.short_lengths if k <= len(toks)]
        if not lengths:
            return False
        # Only windows made entirely of eval-vocabulary words can match: find those runs first.
        vocab = self.vocab
        run = 0
        ends: list[tuple[int, int]] = []  # (end index exclusive, run length) of in-vocab runs
        for i, w in enumerate(toks):
            if w in vocab:
                run += 1
            else:
                if run:
                    ends.append((i, run))
                run = 0
        if run:
            ends.append((len(toks), run))
        shortest = min(lengths)
        for end, length in ends:
            if length < shortest:
                continue
            span = toks[end - length : end]
            if self.grams and length >= self.n and any(g in self.grams for g in ngrams(span, self.n)):
                return True
            for k in self.short_lengths:
                if k <= length and any(g in self.short for g in ngrams(span, k)):
                    return True
        return False


# ---- dedup -------------------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")


def doc_key(text: str) -> bytes:
    """16-byte digest of a document with whitespace normalised: the exact-dedup and split key."""
    return hashlib.blake2b(_SPACES.sub(" ", text).strip().encode("utf-8"), digest_size=16).digest()


class ExactDedup:
    """Remembers document keys; `seen` is True for a key met before (memory: ~100 bytes per document).

    Examples:
        d = ExactDedup(); d.seen(doc_key("a b")), d.seen(doc_key("a  b"))   # (False, True)
    """

    def __init__(self):
        self.keys: set[bytes] = set()

    def seen(self, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.keys.add(key)
        return False


MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"  # datasketch 2.x default; named so signatures stay comparable across versions


def shingles(text: str, size: int = 5) -> list[bytes]:
    """Word shingles (lower-cased words, `size` at a time) as bytes, for MinHash."""
    toks = words(text)
    if len(toks) <= size:
        return [" ".join(toks).encode("utf-8")] if toks else [b""]
    return list({" ".join(toks[i : i + size]).encode("utf-8") for i in range(len(toks) - size + 1)})


_PERMS: dict = {}
_MERSENNE = (1 << 61) - 1
_MAX32 = (1 << 32) - 1


def _permutations(num_perm: int):
    import numpy as np

    if num_perm not in _PERMS:
        rng = np.random.RandomState(MINHASH_SEED)
        a = rng.randint(1, _MAX32, size=num_perm, dtype=np.uint64)
        b = rng.randint(0, _MAX32, size=num_perm, dtype=np.uint64)
        _PERMS[num_perm] = (a, b)
    return _PERMS[num_perm]


def minhash_signature(text: str, num_perm: int = 128, shingle_size: int = 5):
    """The MinHash signature (numpy uint64 array of num_perm values) of a document's word shingles.

    32-bit shingle hashes (crc32) under num_perm affine permutations mod 2**61-1, vectorized with numpy
    (datasketch's scheme, without rebuilding the permutations per document); fed to datasketch's LSH.
    """
    import zlib

    import numpy as np

    a, b = _permutations(num_perm)
    hv = np.fromiter((zlib.crc32(s) for s in shingles(text, shingle_size)), dtype=np.uint64)
    phv = ((hv[:, None] * a + b) % np.uint64(_MERSENNE)) & np.uint64(_MAX32)
    return phv.min(axis=0)


class NearDedup:
    """MinHash LSH over word shingles: a document whose estimated Jaccard similarity with an earlier kept
    document reaches `threshold` is a near duplicate (uses the `datasketch` package).

    Examples:
        nd = NearDedup(threshold=0.8)
        nd.is_duplicate("doc-1", minhash_signature(text))   # False, and doc-1 is remembered
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128):
        from datasketch import MinHashLSH

        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def is_duplicate(self, key, signature) -> bool:
        from datasketch import LeanMinHash

        m = LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)
        if self.lsh.query(m):
            return True
        self.lsh.insert(key, m, check_duplication=False)
        return False


def new_step_report() -> dict:
    return {"in": 0, "kept": 0, "dropped": 0}


def summarize(counter: Counter) -> dict:
    return dict(sorted(counter.items()))
