"""Settings of `llmctl quantize`, and the one table of what it supports (backend → algorithm → bits)."""

from llmctl.config.schema import Field, Rule, Section, dtype_field

# backend → algo → supported bits: the one list of quantize's combinations (the service reads it too)
# (auto: the first backend that has the algorithm at those bits: llmctl's own cores first, measured faster and
# no less accurate in benchmarks/compress_speed.py)
SUPPORTED: dict[str, dict[str, tuple[int, ...]]] = {
    "llmctl": {"rtn": (2, 3, 4, 8), "gptq": (2, 3, 4, 8), "awq": (2, 3, 4, 8)},
    "inc": {
        "rtn": (2, 3, 4, 8),
        "gptq": (2, 3, 4, 8),
        "awq": (2, 3, 4, 8),
        "teq": (2, 3, 4, 8),
        "autoround": (2, 3, 4, 8),
        "smoothquant": (8,),
        "dynamic-int8": (8,),
    },
    "openvino": {"weight-compression": (4, 8)},
    "bnb": {"nf4": (4,), "fp4": (4,), "int8": (8,)},
}
DEFAULT_ALGO = {
    "llmctl": "rtn",
    "inc": "rtn",
    "openvino": "weight-compression",
    "bnb": None,
}  # bnb: nf4 at 4 bits, int8 at 8


def default_algo(backend: str | None, bits: int) -> str:
    return DEFAULT_ALGO[backend or "llmctl"] or ("int8" if bits == 8 else "nf4")


def pick_backend(backend: str | None, algo: str | None, bits: int) -> str:
    """The backend that runs `algo` at `bits`: the one asked for, else the first in SUPPORTED that has both.

    Examples:
        pick_backend(None, "gptq", 4)    # "llmctl"
        pick_backend(None, "teq", 4)     # "inc"
    """
    if backend is not None:
        return backend
    algo = algo or default_algo(None, bits)
    return next((b for b, algos in SUPPORTED.items() if bits in algos.get(algo, ())), "llmctl")


def supported_table() -> str:
    """One line listing every backend/algo/bits combination, for messages."""
    return "; ".join(
        f"{b}/{a}: {','.join(map(str, bits))}" for b, algos in SUPPORTED.items() for a, bits in algos.items()
    )


def _combination_ok(backend: str | None, algo: str | None, bits: int) -> bool:
    backend = pick_backend(backend, algo, bits)
    algos = SUPPORTED[backend]
    return (algo or default_algo(backend, bits)) in algos and bits in algos[algo or default_algo(backend, bits)]


SCHEMA = Section(
    rules=(
        Rule(
            ("backend", "algo", "bits"),
            _combination_ok,
            f"backend, algorithm and bits must be a supported combination ({supported_table()})",
            nullable=True,
        ),
        Rule(("group_size",), lambda g: g == -1 or g >= 1, "group_size must be -1 (per channel) or at least 1"),
        Rule(
            ("backend", "save_format"),
            lambda b, f: b != "llmctl" or f != "inc",
            "save_format inc is neural-compressor's layout: use --backend inc (or leave --backend out)",
        ),
        Rule(
            ("backend", "rtn.mse_search", "gptq.mse_search"),
            lambda b, r, g: b != "llmctl" or not (r or g),
            "the MSE clipping search is neural-compressor's: use --backend inc (or leave --backend out)",
        ),
        Rule(
            ("backend", "algo", "awq.auto_scale"),
            lambda b, a, s: not (b == "llmctl" and a == "awq" and not s),
            "llmctl's AWQ always searches scales: use --backend inc for AWQ without it (or --algo rtn)",
        ),
    ),
    backend=Field(
        str,
        None,
        "llmctl (its own GPTQ/AWQ/RTN cores), inc (neural-compressor), openvino (NNCF weight compression) or bnb "
        "(bitsandbytes); null = the first of these that has the algorithm",
        nullable=True,
        choices=list(SUPPORTED),
    ),
    algo=Field(
        str,
        None,
        "llmctl: rtn|gptq|awq; inc: rtn|gptq|awq|teq|autoround|smoothquant|dynamic-int8; bnb: nf4|fp4|int8; "
        "null = the backend's default (rtn, weight-compression, nf4/int8 by bits)",
        nullable=True,
        choices=sorted({a for algos in SUPPORTED.values() for a in algos}),
    ),
    bits=Field(int, 4, "weight bits (2, 3, 4 or 8, as the backend supports)", ge=1, le=8),
    group_size=Field(int, 128, "weights per quantization group along the input dim; -1 = per output channel", ge=-1),
    sym=Field(bool, True, "symmetric (true) or asymmetric with zero points (false) weight grid"),
    save_format=Field(
        str,
        "compressed-tensors",
        "rtn/gptq/awq/teq results: compressed-tensors (transformers and vLLM load it) or inc "
        "(neural-compressor's own save layout, for its loader and kernels; inc backend only)",
        choices=["compressed-tensors", "inc"],
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
    rtn=Section("round-to-nearest", mse_search=Field(bool, False, "search clipping by MSE per group")),
    gptq=Section(
        "GPTQ (Frantar et al. 2022)",
        act_order=Field(bool, True, "quantize columns in order of decreasing Hessian diagonal"),
        true_sequential=Field(bool, True, "quantize q/k/v, then o, then up/gate, then down, re-capturing inputs"),
        percdamp=Field(float, 0.01, "Hessian damping as a fraction of its mean diagonal", gt=0.0),
        block_size=Field(int, 128, "columns per lazy-update block (capped at group_size)", ge=1),
        mse_search=Field(bool, False, "search clipping by MSE per group"),
        rtn_grid=Field(
            bool, False, "symmetric grid ±max|w| like RTN instead of INC GPTQ's 2·max|w|/15 (clips +max by 1/15)"
        ),
    ),
    awq=Section(
        "AWQ (Lin et al. 2023)",
        auto_scale=Field(bool, True, "search activation-aware channel scales"),
        auto_clip=Field(bool, True, "search weight clipping ranges"),
    ),
    teq=Section(
        "TEQ: trainable equivalent transformation",
        steps=Field(int, 50, "optimizer steps training the channel scales", ge=1),
        lr=Field(float, 0.001, "Adam learning rate of the scales", gt=0.0),
    ),
    autoround=Section(
        "AutoRound: signed-gradient rounding optimization",
        iters=Field(int, 50, "tuning iterations per block", ge=1),
        lr=Field(float, None, "learning rate; null = 1/iters", nullable=True),
    ),
    smoothquant=Section("SmoothQuant W8A8", alpha=Field(float, 0.5, "migration strength α in [0, 1]", ge=0.0, le=1.0)),
    openvino=Section(
        "OpenVINO / NNCF weight compression",
        awq=Field(bool, False, "data-aware AWQ scales (needs calibration data)"),
        scale_estimation=Field(bool, False, "data-aware scale estimation (needs calibration data)"),
        ratio=Field(float, 1.0, "share of layers in 4-bit; the rest stay 8-bit", gt=0.0, le=1.0),
    ),
    bnb=Section(
        "bitsandbytes (quantized at load time)",
        double_quant=Field(bool, True, "also quantize the 4-bit scales"),
        compute_dtype=dtype_field("float32", "dtype of the 4-bit matmuls", auto=False),
    ),
    max_loss=Field(
        float,
        None,
        "accuracy-aware: largest relative perplexity increase allowed (0.01 = 1%); null = off",
        nullable=True,
        gt=0.0,
    ),
    max_trials=Field(int, 10, "accuracy-aware: configurations to try at most", ge=1),
    ignore_memory_check=Field(
        bool, False, "start even when the estimated peak memory (see --dry-run) exceeds the free memory"
    ),
)
