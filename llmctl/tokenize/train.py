"""`tokenize train`: a byte-level BPE, WordPiece or Unigram tokenizer (HF `tokenizers`), saved as an HF folder.

Examples:
    train_tokenizer(["input.txt"], resolve_config("tokenize"), name="shakespeare-bpe")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError, first_line
from llmctl.tokenize.reader import DocReader, resolve_inputs

TYPES = ("bpe", "wordpiece", "unigram")
BYTE_ALPHABET = 256
# Disk a saved tokenizer needs, for the check before training: tokenizer.json holds each piece (and for
# BPE each merge) as JSON, measured at ~64 bytes per vocabulary entry (4,096-piece BPE: 261 kB; 2,000-piece
# Unigram: 128 kB, both on tiny-shakespeare); twice that, plus 1 MiB for the config files.
_BYTES_PER_PIECE = 128
_FIXED_BYTES = 1 << 20


def special_tokens(cfg: dict) -> dict:
    """{role: token} for the configured bos/eos/pad/unk (roles set to null or '' are left out)."""
    out = {}
    for role in ("unk", "bos", "eos", "pad"):
        tok = cfg.get(f"{role}_token")
        if tok:
            out[role] = tok
    return out


def _check_vocab_floor(kind: str, vocab: int, roles: dict, specials: list) -> None:
    if kind == "bpe":
        floor = BYTE_ALPHABET + len(specials)
        if vocab < floor:
            raise LlmctlError(
                f"--vocab-size {vocab} is below the byte alphabet of byte-level BPE "
                f"({BYTE_ALPHABET} bytes + {len(specials)} special tokens = {floor})",
                hint=f"use --vocab-size {floor} or more",
            )
        return
    if "unk" not in roles:
        raise LlmctlError(f"a {kind} tokenizer needs an unknown token", hint="set --unk-token (e.g. '<|unk|>')")
    floor = len(specials) + 2
    if vocab < floor:
        raise LlmctlError(
            f"--vocab-size {vocab} is too small for {len(specials)} special tokens",
            hint=f"use --vocab-size {floor} or more (hundreds at least, in practice)",
        )


def build_tokenizer(kind: str, cfg: dict):
    """An untrained HF `tokenizers` pipeline and its trainer for kind bpe|wordpiece|unigram."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind not in TYPES:
        raise UsageError(f"unknown tokenizer type {kind!r}", hint=f"use --type {', '.join(TYPES)}")
    roles = special_tokens(cfg)
    specials = list(dict.fromkeys([*roles.values(), *cfg.get("extra_special_tokens", [])]))
    vocab = cfg["vocab_size"]
    _check_vocab_floor(kind, vocab, roles, specials)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            min_frequency=cfg["min_frequency"],
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=roles["unk"], max_input_chars_per_word=100))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab, min_frequency=cfg["min_frequency"], special_tokens=specials, show_progress=False
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab, special_tokens=specials, unk_token=roles["unk"], show_progress=False
        )
    return tok, trainer


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


def _check_destination(name: str | None, output: Path | None, force: bool, vocab: int):
    """The registry reservation (when naming) after checking --output is writable: before any training."""
    from llmctl.models.registry import Registry
    from llmctl.paths import check_output_path

    if name is None and output is None:
        raise UsageError("say where the tokenizer goes", hint="pass --name NAME (registry) and/or --output DIR")
    reservation = Registry().reserve(name, force) if name is not None else None
    if output is not None:
        check_output_path(
            Path(output), force, what="output folder", need_bytes=_FIXED_BYTES + vocab * _BYTES_PER_PIECE, folder=True
        )
    return reservation


def _train(tok, trainer, reader: DocReader) -> int:
    """Train on every document of reader; the number of documents."""
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
        raise LlmctlError(
            f"tokenizer training failed ({first_line(exc)})", hint="try a smaller --vocab-size or more input text"
        ) from exc
    return docs[0]


def _publish(
    fast, config: dict, reservation, name: str | None, output: Path | None, force: bool, command: str, meta: dict
) -> Path:
    """Save the tokenizer atomically to --output and/or a registry folder; register it under name."""
    from llmctl.config.profiles import save_run_config
    from llmctl.models.registry import ModelEntry
    from llmctl.paths import atomic_dir

    def fill(folder: Path) -> None:
        fast.save_pretrained(str(folder))
        save_run_config(config, folder, command)

    if output is not None:
        with atomic_dir(Path(output), force=force) as tmp:
            fill(tmp)
        final = Path(output).resolve()
        if reservation is not None:
            reservation.publish(
                ModelEntry(
                    name=name,
                    format="tokenizer",
                    path=str(final),
                    command=command,
                    profile=config,
                    meta=meta,
                    managed=False,
                )
            )
        return final
    with reservation.staging() as tmp:
        fill(tmp)
        entry = reservation.publish(
            ModelEntry(name=name, format="tokenizer", path="", command=command, profile=config, meta=meta), tmp
        )
    return Path(entry.path)


def train_tokenizer(
    inputs: list,
    config: dict,
    name: str | None = None,
    output: Path | None = None,
    force: bool = False,
    command: str = "",
) -> TrainResult:
    """Train a tokenizer on input files; save it as an HF tokenizer folder and register it (format tokenizer).

    Examples:
        train_tokenizer(["input.txt"], resolve_config("tokenize"), name="shakespeare-bpe")
    """
    cfg, icfg = config["train"], config["input"]
    if cfg["type"] not in TYPES:
        raise UsageError(f"unknown tokenizer type {cfg['type']!r}", hint=f"use --type {', '.join(TYPES)}")
    reservation = _check_destination(name, output, force, cfg["vocab_size"])
    paths = resolve_inputs(inputs)
    tok, trainer = build_tokenizer(cfg["type"], cfg)  # bad type/vocab fail before reading data
    reader = DocReader(paths, icfg["doc_split"], icfg["text_field"])
    t0 = time.perf_counter()
    docs = _train(tok, trainer, reader)
    seconds = time.perf_counter() - t0
    roles = special_tokens(cfg)
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=cfg["model_max_length"],
        **{f"{r}_token": t for r, t in roles.items()},
        additional_special_tokens=list(cfg.get("extra_special_tokens") or []) or None,
    )
    sources = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths]
    meta = {
        "type": cfg["type"],
        "vocab_size": len(fast),
        "requested_vocab_size": cfg["vocab_size"],
        "special_tokens": roles,
        "docs": docs,
        "bytes": reader.bytes_read,
        "sources": sources,
        "train_seconds": round(seconds, 3),
    }
    final = _publish(fast, config, reservation, name, output, force, command, meta)
    return TrainResult(
        name=name,
        path=str(final),
        type=cfg["type"],
        vocab_size=len(fast),
        requested_vocab_size=cfg["vocab_size"],
        special_tokens=roles,
        docs=docs,
        bytes=reader.bytes_read,
        seconds=round(seconds, 3),
        sources=sources,
    )
