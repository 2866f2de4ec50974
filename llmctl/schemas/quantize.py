"""Settings of `llmctl quantize`."""

from llmctl.schema import Field, Section

SCHEMA = Section(
    backend=Field(str, "inc", "inc (neural-compressor), openvino (NNCF weight compression) or bnb (bitsandbytes)",
                  choices=["inc", "openvino", "bnb"]),
    algo=Field(str, None, "inc: rtn|gptq|awq|teq|autoround|smoothquant|dynamic-int8; bnb: nf4|fp4|int8; "
               "null = the backend's default (rtn, weight-compression, nf4/int8 by bits)", nullable=True),
    bits=Field(int, 4, "weight bits (2, 3, 4 or 8, as the backend supports)", ge=1, le=8),
    group_size=Field(int, 128, "weights per quantization group along the input dim; -1 = per output channel", ge=-1),
    sym=Field(bool, True, "symmetric (true) or asymmetric with zero points (false) weight grid"),
    calib=Section(
        "calibration data",
        data=Field(str, None, "text file, JSONL/JSON records or registry data name; null = none", nullable=True),
        samples=Field(int, 32, "calibration windows", ge=1),
        seqlen=Field(int, 512, "tokens per calibration window", ge=2),
        seed=Field(int, 0, "seed for picking windows"),
    ),
    eval=Section(
        "held-out perplexity before/after (llmctl.perplexity)",
        data=Field(str, None, "text file to score; null = the last eval.tokens tokens of the calibration data",
                   nullable=True),
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
        rtn_grid=Field(bool, False, "symmetric grid ±max|w| like RTN instead of INC GPTQ's 2·max|w|/15 (clips +max by 1/15)"),
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
        compute_dtype=Field(str, "float32", "dtype of the 4-bit matmuls", choices=["float32", "bfloat16", "float16"]),
    ),
    max_loss=Field(float, None, "accuracy-aware: largest relative perplexity increase allowed (0.01 = 1%); "
                   "null = off", nullable=True, gt=0.0),
    max_trials=Field(int, 10, "accuracy-aware: configurations to try at most", ge=1),
)
