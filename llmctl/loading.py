"""Load any registry model format as (model, tokenizer) ready for inference or training.

Each format has one loader in `LOADERS`; quantized formats add theirs here too, so
`generate`, `eval` and the rest load every model the same way.

Examples:
    loaded = load_model(resolve_model("smollm2-135m-instruct"), dtype="auto", device="auto")
    loaded.model, loaded.tokenizer, loaded.device
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import LlmctlError
from llmctl.resolve import ResolvedModel, resolve_model


@dataclass
class LoadedModel:
    """A model and its tokenizer on a device.

    Examples:
        loaded.model.generate(...)
    """

    model: Any
    tokenizer: Any
    device: str
    dtype: Any
    resolved: ResolvedModel
    info: dict = field(default_factory=dict)


def pick_device(device: str = "auto") -> str:
    """'auto' → cuda when available, else cpu; anything else is checked to exist."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LlmctlError(f"device {device!r} asked for but no CUDA GPU is available", hint="use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise LlmctlError("device 'mps' asked for but not available", hint="use --device cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise LlmctlError(f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(dtype: str, device: str):
    """'auto' → bfloat16 on GPUs that support it, float32 elsewhere (CPU fp32 is exact and fast enough)."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype in (None, "", "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in table:
        raise LlmctlError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    return table[dtype]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_tokenizer(path: str):
    """Load a tokenizer and make sure it can pad (pad = eos when the model has no pad token)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise LlmctlError(f"cannot load the tokenizer from {path} ({_first_line(exc)})",
                          hint="the folder needs tokenizer.json or tokenizer_config.json") from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one (its eos, else unk), so batches can be padded."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def _load_hf(resolved: ResolvedModel, dtype, device: str, **kwargs):
    from transformers import AutoModelForCausalLM

    from llmctl.model_import import check_weights

    path = resolved.path
    if Path(path).is_dir():
        check_weights(Path(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except LlmctlError:
        raise
    except Exception as exc:
        raise LlmctlError(f"cannot load model from {path} ({_first_line(exc)})",
                          hint="the files may be incomplete or damaged; re-create or re-import the model") from exc
    return model.to(device), load_tokenizer(path)


def _load_gguf(resolved: ResolvedModel, dtype, device: str, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(resolved.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as exc:
        raise LlmctlError(f"cannot read GGUF file {path} ({_first_line(exc)})",
                          hint="the file may be truncated or not a GGUF model") from exc
    from llmctl.model_import import _fix_special_tokens

    _fix_special_tokens(tokenizer, model.config)
    ensure_pad_token(tokenizer)
    return model.to(device), tokenizer


def adapter_base(resolved: ResolvedModel) -> str:
    """The base model an adapter was trained on: its recorded parent, else adapter_config.json."""
    if resolved.parents:
        return resolved.parents[0]
    cfg = json.loads((Path(resolved.path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise LlmctlError(f"adapter {resolved.label} does not record its base model",
                          hint="pass the base with --model and the adapter with --adapter")
    return base


def attach_adapter(model, adapter_path: str, label: str):
    """Put a PEFT adapter on a loaded model; a mismatched base is a clear error."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_path)
    except Exception as exc:
        raise LlmctlError(f"adapter {label} does not fit this base model ({_first_line(exc)})",
                          hint="use the base model the adapter was trained on (see `llmctl models show`)") from exc


def _load_peft(resolved: ResolvedModel, dtype, device: str, **kwargs):
    base = resolve_model(adapter_base(resolved))
    loaded = load_model(base, dtype=dtype, device=device, **kwargs)
    model = attach_adapter(loaded.model, resolved.path, resolved.label)
    tokenizer = loaded.tokenizer
    if (Path(resolved.path) / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(resolved.path)
    return model.to(device), tokenizer


def _load_inc_woq(resolved: ResolvedModel, dtype, device: str, **kwargs):
    """neural-compressor weight-only folder (llmctl quantize --algo rtn|gptq|awq|teq|autoround)."""
    from llmctl.quantize import load_inc_woq

    return load_inc_woq(resolved.path).to(device), load_tokenizer(resolved.path)


def _load_inc_int8(resolved: ResolvedModel, dtype, device: str, **kwargs):
    """int8 W8A8 folder (llmctl quantize --algo dynamic-int8|smoothquant); CPU kernels only."""
    from llmctl.quantize import load_int8

    if device != "cpu":
        raise LlmctlError(f"{resolved.label} is an int8 (W8A8) model, which runs on CPU only", hint="use --device cpu")
    return load_int8(resolved.path), load_tokenizer(resolved.path)


def _load_openvino(resolved: ResolvedModel, dtype, device: str, **kwargs):
    """OpenVINO IR folder (llmctl quantize --backend openvino), run by OpenVINO on CPU."""
    from llmctl.quantize import load_openvino

    if device != "cpu":
        raise LlmctlError(f"{resolved.label} is an OpenVINO model; llmctl runs it on CPU", hint="use --device cpu")
    return load_openvino(resolved.path), load_tokenizer(resolved.path)


def _load_bnb(resolved: ResolvedModel, dtype, device: str, **kwargs):
    """HF folder quantized by bitsandbytes at load time (llmctl quantize --backend bnb)."""
    from llmctl.quantize import load_bnb

    return load_bnb(resolved.path, device), load_tokenizer(resolved.path)


# format → loader(resolved, torch_dtype, device, **kwargs) -> (model, tokenizer)
LOADERS: dict[str, Callable] = {
    "hf": _load_hf,
    "gguf": _load_gguf,
    "peft-adapter": _load_peft,
    "inc-woq": _load_inc_woq,
    "inc-int8": _load_inc_int8,
    "openvino": _load_openvino,
    "bnb": _load_bnb,
}


def load_model(resolved: ResolvedModel | str, dtype: Any = "auto", device: str = "auto",
               adapter: str | None = None, **kwargs) -> LoadedModel:
    """Load a resolved model (or a --model string) with an optional PEFT adapter on top.

    Examples:
        load_model("tiny", dtype="float32", device="cpu").model
    """
    if isinstance(resolved, str):
        resolved = resolve_model(resolved)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device) if isinstance(dtype, (str, type(None))) else dtype
    loader = LOADERS.get(resolved.format)
    if loader is None:
        raise LlmctlError(f"{resolved.label} has format {resolved.format!r}, which cannot be loaded as a language model",
                          hint=f"loadable formats: {', '.join(sorted(LOADERS))}")
    model, tokenizer = loader(resolved, torch_dtype, device, **kwargs)
    if adapter:
        ad = resolve_model(adapter)
        if ad.format != "peft-adapter":
            raise LlmctlError(f"--adapter {adapter} is a {ad.format!r} model, not a PEFT adapter",
                              hint="pass an adapter made by `llmctl finetune --method lora` or a PEFT adapter folder")
        model = attach_adapter(model, ad.path, ad.label).to(device)
    if hasattr(model, "eval"):
        model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=torch_dtype, resolved=resolved)
