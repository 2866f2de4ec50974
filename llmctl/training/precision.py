"""Compute precision of a training run: what `auto` means here, autocast, and fp16's gradient scaler.

float16 autocast needs loss scaling, or small gradients underflow to zero (GPUs without bf16); bfloat16 and
float32 do not, and their scaler passes everything through unchanged.

Examples:
    p = Precision.for_run("auto", "cpu")          # float32 on CPUs without native bf16
    with p.autocast():
        loss = model(x).loss
    p.backward(loss)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX512-BF16; Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return " amx_bf16" in flags or " avx512_bf16" in flags


def compute_dtype(dtype: str, device: str) -> str:
    """`auto` → its training meaning (llmctl.config.dtypes.AUTO_DTYPE): bf16 autocast on GPUs with bf16 and on
    CPUs with native bf16, else float32. Explicit values are kept."""
    from llmctl.config.dtypes import auto_dtype

    if dtype != "auto":
        return dtype
    return auto_dtype("training", device, cpu_bf16=device == "cpu" and cpu_has_native_bf16())


def autocast(device: str, dtype: str):
    """Autocast for bfloat16 or float16 ('auto' = bf16 on CUDA with bf16); float32: a no-op.

    torch autocasts float16 on CPU too (2.13 here); there it is slow and only useful to test the fp16 path.
    """
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    if dtype == "bfloat16" or (dtype == "auto" and kind == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    if dtype == "float16":
        return torch.autocast(device_type=kind, dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class Precision:
    """A run's compute dtype, its autocast context and its gradient scaler (enabled for float16 only)."""

    dtype: str
    device: str
    scaler: Any

    @classmethod
    def for_run(cls, dtype: str, device: str) -> Precision:
        """Resolve `auto` for this device and build the scaler (float16 on CUDA or CPU: enabled)."""
        import torch

        resolved = compute_dtype(dtype, device)
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return cls(resolved, device, torch.amp.GradScaler(kind, enabled=resolved == "float16"))

    def autocast(self):
        """The autocast context of this precision (a no-op for float32)."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return autocast(self.device, self.dtype)

    def backward(self, loss) -> None:
        """loss.backward(), scaled when the scaler is enabled."""
        self.scaler.scale(loss).backward()
