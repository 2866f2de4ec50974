"""What `llmctl quantize` can do: the backend/algorithm/bits table.

Examples:
    backend_for(resolve_config("quantize", sets=["algo=teq"]))   # "inc"
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


def algo_for(config: dict) -> str:
    """The algorithm a resolved quantize config runs: `algo`, or (null) its backend's default at `bits`.

    The combination itself is the schema's rule (llmctl.schemas.quantize), checked before this runs.

    Examples:
        algo_for(resolve_config("quantize", sets=["backend=openvino"]))   # "weight-compression"
    """
    return config["algo"] or default_algo(backend_for(config), config["bits"])


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
