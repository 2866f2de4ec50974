"""Settings of `llmctl tokenize train|encode|stats|show`."""

from llmctl.config.schema import Field, Section

SCHEMA = Section(
    train=Section(
        "tokenizer training (`tokenize train`)",
        type=Field(str, "bpe", "tokenizer model", choices=["bpe", "wordpiece", "unigram"]),
        vocab_size=Field(int, 4096, "vocabulary size including special tokens", ge=1),
        min_frequency=Field(int, 2, "pairs/pieces seen fewer times are not merged (bpe, wordpiece)", ge=0),
        bos_token=Field(str, "<|bos|>", "beginning-of-sequence token; null = none", nullable=True),
        eos_token=Field(str, "<|endoftext|>", "end-of-sequence token, also the document separator", nullable=True),
        pad_token=Field(str, "<|pad|>", "padding token; null = none", nullable=True),
        unk_token=Field(
            str, "<|unk|>", "unknown token (required by wordpiece and unigram); null = none", nullable=True
        ),
        extra_special_tokens=Field(list, [], "more special tokens, e.g. <|im_start|>", item=str),
        model_max_length=Field(int, 2048, "max sequence length recorded in the tokenizer config", ge=1),
    ),
    input=Section(
        "how input files become documents (train, encode, stats)",
        doc_split=Field(
            str,
            "blank-line",
            "documents in .txt files: paragraphs, lines or whole files",
            choices=["blank-line", "line", "file"],
        ),
        text_field=Field(str, "text", "field holding the text in .jsonl/.json/.parquet rows"),
    ),
    encode=Section(
        "writing token shards (`tokenize encode`)",
        val_fraction=Field(float, 0.1, "share of documents in the validation split", ge=0.0, lt=1.0),
        seed=Field(int, 1234, "seed of the document-level train/val split"),
        workers=Field(
            int,
            0,
            "worker processes; 1 = in-process (tokenizer threads); 0 = auto: 1 on <= 2 cores, else one per core",
            ge=0,
        ),
        chunk_kb=Field(int, 256, "text per work item sent to a worker (KiB)", ge=1),
        shard_mtokens=Field(int, 64, "tokens per shard file, in millions (2**20)", ge=1),
    ),
    curation=Section(
        "optional data curation steps of `tokenize encode`, applied in this order",
        exact_dedup=Section(
            "exact deduplication",
            enabled=Field(bool, False, "drop documents identical (up to whitespace) to an earlier one"),
        ),
        quality=Section(
            "heuristic quality filters",
            enabled=Field(bool, False, "drop documents failing any rule below"),
            min_chars=Field(int, 20, "drop documents shorter than this (characters)", ge=0),
            max_chars=Field(int, 1000000, "drop documents longer than this (characters)", ge=1),
            min_words=Field(int, 3, "drop documents with fewer words", ge=0),
            min_alpha_ratio=Field(float, 0.6, "drop if letters / non-space characters is lower", ge=0.0, le=1.0),
            max_symbol_ratio=Field(float, 0.25, "drop if symbols / non-space characters is higher", ge=0.0, le=1.0),
            max_dup_line_ratio=Field(float, 0.3, "drop if repeated lines / lines is higher", ge=0.0, le=1.0),
        ),
        decontaminate=Section(
            "drop documents sharing a long word n-gram with eval data",
            files=Field(list, [], "eval files (.jsonl/.json: every string field; else the text)", item=str),
            ngram=Field(int, 13, "n-gram length in words", ge=3),
        ),
        pii=Section(
            "PII redaction",
            enabled=Field(bool, False, "replace PII with placeholders (<EMAIL>, <PHONE>, <IP>)"),
            kinds=Field(list, ["email", "phone", "ip"], "what to redact", item=str, choices=["email", "phone", "ip"]),
        ),
        near_dedup=Section(
            "near-duplicate removal (MinHash LSH over word shingles)",
            enabled=Field(bool, False, "drop documents too similar to an earlier kept one"),
            threshold=Field(float, 0.8, "estimated Jaccard similarity that counts as duplicate", gt=0.0, le=1.0),
            num_perm=Field(int, 128, "MinHash permutations", ge=16),
            shingle_words=Field(int, 5, "words per shingle", ge=1),
        ),
    ),
    stats=Section(
        "`tokenize stats`",
        top_k=Field(int, 20, "most frequent tokens to list", ge=0),
    ),
)
