"""The one table of dtypes: the names stored, the short forms a user may type, export's type names, and what
`auto` means for loading weights and for a training run's compute dtype, side by side.

Examples:
    DTYPE_NAMES["bf16"]                      # "bfloat16"
    EXPORT_FLOAT_TYPES["f16"]                # "float16"
    auto_dtype("inference", "cpu")           # "float32"
"""

from __future__ import annotations

# name stored → (short form typed for --dtype, the type name of `export --format hf --type`)
DTYPE_TABLE = {
    "float32": ("fp32", "f32"),
    "bfloat16": ("bf16", "bf16"),
    "float16": ("fp16", "f16"),
}
DTYPES = list(DTYPE_TABLE)
DTYPE_ALIASES = {short: name for name, (short, _) in DTYPE_TABLE.items()}
# every spelling a user may type → the name stored (what torch calls it)
DTYPE_NAMES = {**{name: name for name in DTYPE_TABLE}, **DTYPE_ALIASES}
# export's float types, in the order its help lists them (f32 first: exact)
EXPORT_FLOAT_TYPES = {DTYPE_TABLE[name][1]: name for name in ("float32", "float16", "bfloat16")}

# what `auto` means, by use → (on a CUDA GPU with bf16, on a CPU with native bf16 (AMX/AVX512-BF16), elsewhere)
AUTO_DTYPE = {
    # weights loaded to run (generate, serve, eval, export's checks): CPU float32 is exact and fast enough
    "inference": ("bfloat16", "float32", "float32"),
    # a training run's compute dtype (autocast): bf16 measured 1.35x faster than fp32 on an AMX CPU
    # (benchmarks/pretrain_speed.py)
    "training": ("bfloat16", "bfloat16", "float32"),
}


def auto_dtype(use: str, device: str, cpu_bf16: bool = False) -> str:
    """The dtype `auto` stands for in `use` ("inference" or "training") on `device`; `cpu_bf16` says whether this
    CPU computes bf16 natively (`llmctl.training.precision.cpu_has_native_bf16`).

    Examples:
        auto_dtype("training", "cpu", cpu_bf16=True)     # "bfloat16"
    """
    cuda_bf16 = False
    if device.startswith("cuda"):
        import torch

        cuda_bf16 = torch.cuda.is_bf16_supported()
    column = 0 if cuda_bf16 else 1 if device == "cpu" and cpu_bf16 else 2
    return AUTO_DTYPE[use][column]
