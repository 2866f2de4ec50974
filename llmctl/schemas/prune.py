"""Settings of `llmctl prune`."""

from llmctl.config.schema import Field, Section


def _n_m(pattern: str) -> bool:
    """N:M with 0 < N < M (2:4, 4:8)."""
    n, sep, m = pattern.partition(":")
    return bool(sep) and n.isdigit() and m.isdigit() and 0 < int(n) < int(m)


SCHEMA = Section(
    method=Field(str, "wanda", "unstructured/N:M criterion", choices=["magnitude", "wanda", "sparsegpt"]),
    sparsity=Field(float, None, "share of zero weights in every decoder linear, in (0, 1)", nullable=True, gt=0, lt=1),
    pattern=Field(
        str,
        None,
        "N:M semi-structured sparsity: N non-zeros in every M inputs (2:4, 4:8)",
        nullable=True,
        check=_n_m,
        rule="N:M with 0 < N < M, e.g. 2:4",
    ),
    structure=Field(
        str, None, "remove whole attention heads or MLP channels instead", nullable=True, choices=["heads", "channels"]
    ),
    ratio=Field(float, None, "structured: share of heads / channels to remove, in (0, 1)", nullable=True, gt=0, lt=1),
    head_mode=Field(
        str,
        "query",
        "GQA heads: drop query heads evenly inside each kv group, or whole kv groups",
        choices=["query", "group"],
    ),
    calib=Section(
        "calibration data",
        data=Field(str, None, "text file, JSONL/JSON records or registry data name; null = none", nullable=True),
        samples=Field(int, 32, "calibration windows", ge=1),
        seqlen=Field(int, 512, "tokens per calibration window", ge=2),
        seed=Field(int, 0, "seed for picking windows"),
    ),
    eval=Section(
        "held-out perplexity before/after (llmctl.evaluate.perplexity)",
        data=Field(
            str, None, "text file to score; null = the last eval.tokens tokens of the calibration data", nullable=True
        ),
        tokens=Field(int, 8192, "held-out tokens to score (0 = no perplexity)", ge=0),
        seqlen=Field(int, 512, "window length for perplexity (non-overlapping windows)", ge=2),
    ),
    true_sequential=Field(
        bool,
        False,
        "wanda/sparsegpt: each linear's statistic from inputs run through the block's linears pruned before it "
        "(GPTQ's true-sequential; about one forward per block instead of two); false = the papers' reference",
    ),
    sparsegpt=Section(
        "SparseGPT",
        blocksize=Field(int, 128, "columns per block (mask selection and lazy update)", ge=1),
        percdamp=Field(float, 0.01, "Hessian damping as a fraction of its mean diagonal", gt=0.0),
    ),
    ignore_memory_check=Field(
        bool, False, "start even when the estimated peak memory (see --dry-run) exceeds the free memory"
    ),
)
