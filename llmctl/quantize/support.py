"""What `llmctl quantize` can do: the backend/algorithm/bits table.

Examples:
    check_combination("inc", "gptq", 4)          # "gptq"
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.schemas.quantize import DEFAULT_ALGO, SUPPORTED, default_algo, pick_backend, supported_table  # noqa: F401

CALIB_ALGOS = {"gptq", "awq", "teq", "autoround", "smoothquant"}
# INC weight-only algorithms whose results are saved in `save_format` (compressed-tensors or INC's layout)
WEIGHT_ONLY = ("rtn", "gptq", "awq", "teq")


def backend_for(config: dict) -> str:
    """The backend a resolved quantize config runs on: `backend`, or (null) llmctl's cores for rtn/gptq/awq unless
    a setting only neural-compressor has is asked for (its save layout, the MSE clipping search), else the first
    backend of SUPPORTED with the algorithm.

    Examples:
        backend_for(resolve_config("quantize", sets=["algo=gptq"]))   # "llmctl"
    """
    if config["backend"] is not None:
        return config["backend"]
    algo = config["algo"] or default_algo(None, config["bits"])
    inc_only = (
        config["save_format"] == "inc"
        or config["rtn"]["mse_search"]
        and algo == "rtn"
        or config["gptq"]["mse_search"]
        and algo == "gptq"
        or algo == "awq"
        and not config["awq"]["auto_scale"]
    )
    if inc_only and algo in SUPPORTED["inc"]:
        return "inc"
    return pick_backend(None, algo, config["bits"])


def check_combination(backend: str, algo: str | None, bits: int) -> str:
    """The algo to use for backend/bits, or a clear error naming the supported combinations."""
    if backend not in SUPPORTED:
        raise LlmctlError(f"unknown backend {backend!r}", hint="use " + ", ".join(SUPPORTED))
    algos = SUPPORTED[backend]
    if algo is None:
        algo = default_algo(backend, bits)
    if algo not in algos:
        raise LlmctlError(
            f"backend {backend} has no algorithm {algo!r}",
            hint=f"supported: {', '.join(f'{a} (bits {sorted(b)})' for a, b in algos.items())}",
        )
    if bits not in algos[algo]:
        raise LlmctlError(
            f"{backend}/{algo} does not support {bits}-bit", hint=f"supported combinations: {supported_table()}"
        )
    return algo


def hf_dir_of(loaded, tmp_root: Path) -> str:
    """A folder with the model in HF format (OpenVINO export and bnb need one on disk)."""
    path = Path(loaded.resolved.path)
    if path.is_dir() and (path / "config.json").is_file():
        return str(path)
    dest = tmp_root / "hf-source"
    loaded.model.save_pretrained(dest, safe_serialization=True)
    loaded.tokenizer.save_pretrained(dest)
    return str(dest)


def check_linear_layers(model) -> None:
    """compressed-tensors holds Linear layers only: refuse a model with GPT-2's Conv1D before quantizing it."""
    conv = next((n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"), None)
    if conv is not None:
        raise LlmctlError(
            f"{model.config.model_type} keeps its weights in Conv1D layers ({conv}), which the "
            f"compressed-tensors layout cannot hold",
            hint="pass --save-format inc (neural-compressor's layout)",
        )
