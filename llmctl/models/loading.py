"""Load any registry model as (model, tokenizer) ready for inference or training.

The format table (`llmctl.models.formats`) says how each format loads; this service resolves `--model`, picks device
and dtype, and puts adapters on their base, so `generate`, `eval` and the rest load every model the same way.

Examples:
    loaded = load_model("smollm2-135m-instruct", dtype="auto", device="auto")
    loaded.model, loaded.tokenizer, loaded.device
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.config.dtypes import DTYPE_NAMES
from llmctl.errors import LlmctlError
from llmctl.models import formats
from llmctl.models.formats.adapter import adapter_base, attach
from llmctl.models.formats.hf import ensure_pad_token, load_tokenizer  # noqa: F401  (re-exported for services)
from llmctl.models.resolve import ResolvedModel, resolve_model


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
    """The torch dtype to load weights in: a spelling of llmctl.config.dtypes, or 'auto' (its inference meaning:
    bfloat16 on GPUs that support it, float32 elsewhere)."""
    import torch

    from llmctl.config.dtypes import auto_dtype

    if dtype in (None, "", "auto"):
        return getattr(torch, auto_dtype("inference", device))
    if dtype not in DTYPE_NAMES:
        raise LlmctlError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPE_NAMES[dtype])


def _load_adapter(resolved: ResolvedModel, dtype, device: str):
    base = resolve_model(adapter_base(Path(resolved.path), resolved.parents, resolved.label))
    loaded = load_model(base, dtype=dtype, device=device)
    model = attach(loaded.model, resolved.path, resolved.label)
    tokenizer = loaded.tokenizer
    if (Path(resolved.path) / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(resolved.path)
    return model.to(device), tokenizer


def load_model(
    resolved: ResolvedModel | str,
    dtype: Any = "auto",
    device: str = "auto",
    adapter: str | None = None,
    rope: dict | None = None,
) -> LoadedModel:
    """Load a resolved model (or a --model string) with an optional PEFT adapter on top.

    `rope`: a config's `rope` section (`--rope-scaling`, `--rope-factor`); a run-time RoPE scaling override,
    checked against the architecture before loading and recorded in `info["rope"]` (`llmctl.models.rope`).

    Examples:
        load_model("tiny", dtype="float32", device="cpu").model
        load_model("M", rope={"scaling": "yarn", "factor": 2.0, "original_max_length": None}).info["rope"]
    """
    from llmctl.models import rope as rope_scaling

    if isinstance(resolved, str):
        resolved = resolve_model(resolved)
    if rope_scaling.wanted(rope):
        rope_scaling.check_config_file(resolved, rope["scaling"])
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device) if isinstance(dtype, (str, type(None))) else dtype
    fmt = formats.get(resolved.format)
    if fmt.kind == "adapter":
        model, tokenizer = _load_adapter(resolved, torch_dtype, device)
    elif fmt.kind == "model":
        model, tokenizer = fmt.load(resolved.path, torch_dtype, device)
    else:
        raise LlmctlError(
            f"{resolved.label} has format {resolved.format!r} ({fmt.summary}), which cannot be loaded "
            f"as a language model",
            hint=f"loadable formats: {', '.join(formats.names(loadable=True))}",
        )
    if adapter:
        ad = resolve_model(adapter)
        if formats.get(ad.format).kind != "adapter":
            raise LlmctlError(
                f"--adapter {adapter} is a {ad.format!r} model, not a PEFT adapter",
                hint="pass an adapter made by `llmctl finetune --method lora` or a PEFT adapter folder",
            )
        model = attach(model, ad.path, ad.label).to(device)
    if hasattr(model, "eval"):
        model.eval()
    info = {}
    if rope_scaling.wanted(rope):
        info["rope"] = rope_scaling.apply_to_model(model, rope, resolved.label)
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=torch_dtype, resolved=resolved, info=info)


def describe(resolved: ResolvedModel) -> str:
    """The format of a resolved model with its algorithm and bits when recorded, e.g. "inc-woq gptq 4-bit"."""
    meta = resolved.entry.meta if resolved.entry else {}
    bits = f" {meta['bits']}-bit" if meta.get("bits") else ""
    algo = f" {meta['algo']}" if meta.get("algo") else ""
    return f"{resolved.format}{algo}{bits}".strip()


def check_full_precision(resolved: ResolvedModel, purpose: str) -> None:
    """Refuse a quantized, adapter or non-model entry as the input of quantize, prune, finetune or merge."""
    from llmctl.models.formats.hf import read_json

    fmt = formats.get(resolved.format)
    parent = resolved.parents[0] if resolved.parents else None
    if fmt.quantized:
        raise LlmctlError(
            f"{resolved.label} is already quantized ({describe(resolved)}); {purpose} needs full weights",
            hint=f"use its full-precision parent {parent!r} instead"
            if parent
            else "use the full-precision model it came from instead",
        )
    if not fmt.full_precision_source:
        raise LlmctlError(
            f"{resolved.label} is a {resolved.format!r} entry ({fmt.summary}), not a full model",
            hint="give an HF model (merge adapters first with `llmctl merge-lora`)",
        )
    cfg = Path(resolved.path) / "config.json"
    if resolved.format == "hf" and cfg.is_file() and "quantization_config" in read_json(cfg, "model config"):
        raise LlmctlError(
            f"{resolved.label} is already quantized (its config.json has a quantization_config); "
            f"{purpose} needs full weights",
            hint="use the full-precision model it came from",
        )


def load_full_precision(model: str, purpose: str = "quantize") -> LoadedModel:
    """Resolve and load a full-precision model in fp32 on CPU as the input of quantize or prune.

    Examples:
        loaded = load_full_precision("smollm2-135m-instruct", "quantize")
    """
    resolved = resolve_model(model)
    check_full_precision(resolved, purpose)
    return load_model(resolved, dtype="float32", device="cpu")
