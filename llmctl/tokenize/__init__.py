"""Tokenizers and tokenized corpora: train (HF `tokenizers`), encode to token shards, stats, show.

One module per concept:
    reader.py    documents from --input files (.txt/.jsonl/.json/.parquet, via llmctl/data/records.py)
    spec.py      --tokenizer: the one resolver (tokenizer_folder) and loading (load_tokenizer_spec)
    train.py     `tokenize train`
    workers.py   per-chunk curation and tokenization (worker processes)
    pipeline.py  `tokenize encode`'s loop: dedup, split, EOS-separated shards (llmctl/data/token_data.py)
    encode.py    `tokenize encode`: checks, temp dir, publish
    stats.py     `tokenize stats` / `tokenize show`

Examples:
    train_tokenizer(["input.txt"], config, name="shakespeare-bpe")
    encode_corpus("shakespeare-bpe", ["input.txt"], config, output=Path("data/shakespeare"))
    corpus_stats("shakespeare-bpe", ["input.txt"], config)
    show_tokens("shakespeare-bpe", "Hello world")
"""

from __future__ import annotations

from llmctl.tokenize.encode import EncodeResult, encode_corpus
from llmctl.tokenize.reader import DocReader, check_input, resolve_inputs
from llmctl.tokenize.spec import TokenizerRef, load_tokenizer_spec, tokenizer_folder
from llmctl.tokenize.stats import corpus_stats, data_dir_text, show_tokens
from llmctl.tokenize.train import TYPES, TrainResult, train_tokenizer

__all__ = [
    "TYPES",
    "DocReader",
    "EncodeResult",
    "TokenizerRef",
    "TrainResult",
    "check_input",
    "corpus_stats",
    "data_dir_text",
    "encode_corpus",
    "load_tokenizer_spec",
    "resolve_inputs",
    "show_tokens",
    "tokenizer_folder",
    "train_tokenizer",
]
