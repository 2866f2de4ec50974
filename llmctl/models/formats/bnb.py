"""bitsandbytes entries: a full-precision HF folder plus the bitsandbytes config applied when it is loaded.

Written by `llmctl quantize --backend bnb` and `llmctl merge-lora --requantize`; the config lives in the entry
marker (`bnb_config`).

Examples:
    bnb_config_dict({"double_quant": True, "compute_dtype": "float32"}, "nf4")
    model, tok = load("/m/smol-nf4", None, "cpu")
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError, first_line


def bnb_config_dict(settings: dict, algo: str) -> dict:
    """The transformers BitsAndBytesConfig keywords (JSON-able) for nf4, fp4 or int8.

    settings: {"double_quant": bool, "compute_dtype": "float32"|"bfloat16"|"float16"} (the `bnb` profile section).
    """
    if algo == "int8":
        return {"load_in_8bit": True}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": algo,
        "bnb_4bit_use_double_quant": settings["double_quant"],
        "bnb_4bit_compute_dtype": settings["compute_dtype"],
    }


def require_bnb() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LlmctlError(
            "this model needs bitsandbytes, which is not installed", hint="pip install bitsandbytes==0.50.2"
        ) from exc


def check_bnb_4bit(device: str) -> None:
    """Make sure bitsandbytes 4-bit kernels run on this device; else a clear error suggesting lora."""
    try:
        import bitsandbytes.functional as F
        import torch

        w = torch.randn(64, 64, device=device)
        q, state = F.quantize_4bit(w, quant_type="nf4")
        F.dequantize_4bit(q, state)
    except Exception as exc:  # import errors, missing kernels, unsupported devices
        raise LlmctlError(
            f"qlora needs bitsandbytes 4-bit kernels, which cannot run on {device} here ({first_line(exc)})",
            hint="use --method lora (same adapter, full-precision base)",
        ) from exc


def load(path: str, dtype, device: str):
    """Load an HF folder with its bitsandbytes quantization_config (quantized at load time)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from llmctl.models.formats import read_marker
    from llmctl.models.formats.hf import check_folder, load_tokenizer

    require_bnb()
    check_folder(Path(path))
    marker = read_marker(Path(path)) or {}
    if not isinstance(marker.get("bnb_config"), dict):
        raise LlmctlError(
            f"{path} has no bitsandbytes config in its entry marker",
            hint="re-create it with `llmctl quantize --backend bnb`",
        )
    bnb = dict(marker["bnb_config"])
    if "bnb_4bit_compute_dtype" in bnb:
        import torch

        bnb["bnb_4bit_compute_dtype"] = getattr(torch, bnb["bnb_4bit_compute_dtype"])
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=BitsAndBytesConfig(**bnb), device_map={"": device}, trust_remote_code=False
    )
    return model, load_tokenizer(path)
