"""RoPE scaling: the one home of the types llmctl offers, their transformers `rope_scaling` form and the checks.

`--rope-scaling linear|dynamic|yarn|llama3 --rope-factor F [--rope-original-length N]` (profile keys `rope.*`,
`llmctl.schemas._rope`) reach every command through these functions:

- `scale_config(cfg, rope)`: write the scaling into a transformers config before a model is built (pretrain,
  finetune): `config.json` then carries it in transformers' own form, so every loader and `export` sees it.
- `apply_to_model(model, rope)`: the same override on a model already loaded (generate, eval, serve); the
  rotary embedding modules are rebuilt from the new config.
- `check_lengths(cfg, lengths, ...)`: refuse, before loading, a context length beyond the model's positions (learned
  absolute positions) or beyond what memory allows (with the estimate).

What transformers (4.57, `modeling_rope_utils`) expects: linear, yarn and llama3 take `max_position_embeddings` as
the extended length (original x factor) and yarn/llama3 the pre-scaling length as
`rope_scaling.original_max_position_embeddings`; dynamic NTK reads `max_position_embeddings` as the trained length
and stretches the base only for sequences longer than it, so it stays at the original there.

Examples:
    override = scale_config(cfg, {"scaling": "yarn", "factor": 4.0, "original_max_length": None})
    # cfg.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError

ROPE_TYPES = ["linear", "dynamic", "yarn", "llama3"]

# Llama 3.1's frequency bands (its config.json: low_freq_factor 1, high_freq_factor 4).
LLAMA3_BANDS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}

# Per-token bytes kept alive in one forward pass beyond weights, KV and logits, in units of hidden_size:
# residual, normed input, attention output and two MLP inputs (measured order of magnitude, not a bound).
_ACTIVATION_WIDTHS = 6


def wanted(rope: dict | None) -> bool:
    """Whether a config's `rope` section asks for an override."""
    return bool(rope and rope.get("scaling"))


def has_rope(cfg) -> bool:
    """Whether the architecture reads transformers' RoPE table (`ROPE_INIT_FUNCTIONS`), so it can be scaled."""
    kind = str(getattr(cfg, "model_type", "") or "").replace("-", "_")
    if not kind:
        return False
    try:
        module = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    except ImportError:
        return False
    return hasattr(module, "ROPE_INIT_FUNCTIONS")


def original_length(cfg) -> int:
    """The context the model was trained at, before any scaling in its config."""
    rs = getattr(cfg, "rope_scaling", None) or {}
    kind = rs.get("rope_type", rs.get("type"))
    if rs.get("original_max_position_embeddings"):
        return int(rs["original_max_position_embeddings"])
    if kind == "linear" and rs.get("factor"):
        return int(round(cfg.max_position_embeddings / float(rs["factor"])))
    return int(positions(cfg) or 0)


# the keys a model config declares its learned positions under (LLaMA, GPT-2, others), first found wins
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def positions(cfg) -> int | None:
    """The context length a model config declares: its learned positions (`max_position_embeddings`, GPT-2's
    `n_positions`, …); None when it declares none. The one reading of it (perplexity, inference, export).

    Examples:
        positions(AutoConfig.from_pretrained("gpt2"))   # 1024
    """
    for attr in POSITION_KEYS:
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_length(cfg) -> int | None:
    """The longest context the model is meant to take: its positions, x factor for dynamic NTK scaling."""
    rs = getattr(cfg, "rope_scaling", None) or {}
    n = positions(cfg)
    if n and rs.get("rope_type", rs.get("type")) == "dynamic" and rs.get("factor"):
        return int(n * float(rs["factor"]))
    return n


def describe(cfg) -> str:
    """`yarn x4 (8192 → 32768)`, or `none` when the config has no scaling."""
    rs = getattr(cfg, "rope_scaling", None) or {}
    kind = rs.get("rope_type", rs.get("type"))
    if not kind or kind == "default":
        return "none"
    return f"{kind} x{float(rs.get('factor', 1)):g} ({original_length(cfg)} → {context_length(cfg)})"


def scaling_dict(kind: str, factor: float, original: int) -> dict:
    """transformers' `rope_scaling` for one type (the keys its validators require, no others)."""
    out: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    if kind in ("yarn", "llama3"):
        out["original_max_position_embeddings"] = int(original)
    if kind == "llama3":
        out.update(LLAMA3_BANDS)
    return out


def check_architecture(cfg, kind: str, label: str = "this model") -> None:
    """Refuse scaling on a model without RoPE (learned or ALiBi positions)."""
    if has_rope(cfg):
        return
    arch = getattr(cfg, "model_type", None) or "unknown"
    raise LlmctlError(
        f"--rope-scaling {kind}: {label} ({arch}) has no rotary position embeddings to scale",
        hint="RoPE scaling works on RoPE models (llama, mistral, qwen2, gemma, phi3, …); "
        "drop --rope-scaling for this model",
    )


def check_config_file(resolved, kind: str) -> None:
    """Before loading: refuse scaling when the model's config.json (or its adapter's base's) names no RoPE model."""
    from llmctl.models.formats.hf import read_json

    folder = Path(resolved.path)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        return  # an adapter: its base is checked when it loads (apply_to_model)
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        raw = read_json(cfg_file, "model config")
        check_architecture(_Raw(raw), kind, resolved.label)


class _Raw:
    """The attributes `has_rope` reads, from a config.json dict."""

    def __init__(self, raw: dict):
        self.model_type = raw.get("model_type")


def scale_config(cfg, rope: dict | None, label: str = "this model") -> dict | None:
    """Write the `rope` section's scaling into a transformers config; the `rope_scaling` written, or None.

    Examples:
        scale_config(cfg, {"scaling": "dynamic", "factor": 2.0, "original_max_length": None})
    """
    if not wanted(rope):
        return None
    kind, factor = rope["scaling"], float(rope["factor"])
    check_architecture(cfg, kind, label)
    original = int(rope.get("original_max_length") or original_length(cfg))
    cfg.rope_scaling = scaling_dict(kind, factor, original)
    cfg.max_position_embeddings = original if kind == "dynamic" else int(round(original * factor))
    return dict(cfg.rope_scaling)


def apply_to_model(model, rope: dict | None, label: str = "this model") -> dict | None:
    """The `rope` override on a loaded transformers model (through a PEFT wrapper): config and rotary modules.

    Returns the override as recorded in lineage ({"rope_scaling", "max_position_embeddings", "was"}), or None.
    This is the call `generate`, `eval` and `serve` make after `load_model`.

    Examples:
        loaded = load_model("M"); apply_to_model(loaded.model, config["rope"], "M")
    """
    if not wanted(rope):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(base, "named_modules"):
        raise LlmctlError(
            f"--rope-scaling needs a transformers model; {label} is not one",
            hint="use an hf entry (or its adapter) with --rope-scaling",
        )
    was = describe(cfg)
    written = scale_config(cfg, rope, label)
    _rebuild_rotary(base, label)
    return {"rope_scaling": written, "max_position_embeddings": cfg.max_position_embeddings, "was": was}


def _rebuild_rotary(base, label: str) -> None:
    """Make the model's rotary embedding modules again from its (changed) config."""
    swapped = 0
    for name, module in list(base.named_modules()):
        if hasattr(module, "rope_init_fn") and hasattr(module, "inv_freq"):
            fresh = type(module)(config=base.config, device=module.inv_freq.device)
            parent = base.get_submodule(name.rsplit(".", 1)[0]) if "." in name else base
            setattr(parent, name.rsplit(".", 1)[-1], fresh)
            swapped += 1
    if not swapped:
        raise LlmctlError(
            f"--rope-scaling: {label} has no rotary embedding module llmctl can rebuild",
            hint="drop --rope-scaling for this model",
        )


# ---- adapters -----------------------------------------------------------------------------------------------

# An adapter trained with RoPE scaling keeps it here (its base's config.json does not have it); `attach` and
# `merge-lora` put it back on the base, so the adapter runs (and merges) with the positions it was trained with.
ADAPTER_FILE = "llmctl-rope.json"


def write_for_adapter(folder: Path, cfg) -> None:
    """Record a scaled base config's `rope_scaling` beside an adapter."""
    import json

    if getattr(cfg, "rope_scaling", None):
        (Path(folder) / ADAPTER_FILE).write_text(
            json.dumps(
                {"rope_scaling": cfg.rope_scaling, "max_position_embeddings": cfg.max_position_embeddings}, indent=2
            )
        )


def apply_adapter_file(model, folder: Path, label: str) -> dict | None:
    """Put an adapter's recorded RoPE scaling on its (loaded) base; the recorded dict, or None."""
    from llmctl.models.formats.hf import read_json

    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        return None
    saved = read_json(path, "adapter RoPE scaling")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    check_architecture(base.config, saved["rope_scaling"].get("rope_type", "?"), label)
    base.config.rope_scaling = dict(saved["rope_scaling"])
    base.config.max_position_embeddings = int(saved["max_position_embeddings"])
    _rebuild_rotary(base, label)
    return saved


# ---- memory ------------------------------------------------------------------------------------------------


def _get(cfg: dict, *names, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def estimate_bytes(
    cfg: dict,
    length: int,
    dtype_bytes: int = 4,
    logits_rows: int | None = None,
    batch: int = 1,
    train: str | None = None,
) -> dict[str, int]:
    """Bytes a forward pass over `batch` x `length` tokens needs, by part, from a config.json dict (an estimate).

    Weights from the shapes; the KV cache; activations (a few hidden-size vectors per token plus the MLP width, in
    every layer when training keeps them for the backward pass); logits in float32 for `logits_rows` positions
    per sequence (all when None, as perplexity scores them); for the eager attention implementation only, one
    layer's length x length scores (sdpa's kernels do not build them for a causal, unpadded sequence).
    `train`: "full" adds gradients and AdamW's two moments for every weight; "adapter" adds nothing for them.
    """
    hidden = int(_get(cfg, "hidden_size", "n_embd", default=0))
    layers = int(_get(cfg, "num_hidden_layers", "n_layer", default=0))
    heads = int(_get(cfg, "num_attention_heads", "n_head", default=1))
    kv = int(_get(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_get(cfg, "head_dim", default=hidden // max(1, heads)))
    inter = int(_get(cfg, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden)
    vocab = int(_get(cfg, "vocab_size", default=0))
    per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + 3 * hidden * inter
    weights = (layers * per_layer + vocab * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2)) * dtype_bytes
    tokens = batch * length
    act = tokens * (_ACTIVATION_WIDTHS * hidden + 2 * inter) * dtype_bytes
    parts = {
        "weights": weights,
        "kv_cache": 2 * layers * kv * head_dim * tokens * dtype_bytes,
        "activations": act * (layers if train else 1),
        "logits": batch * (length if logits_rows is None else logits_rows) * vocab * 4 * (1 if logits_rows else 2),
    }
    if train == "full":
        parts["gradients_and_optimizer"] = 3 * weights
    if cfg.get("_attn_implementation") == "eager" or cfg.get("attn_implementation") == "eager":
        parts["attention_scores"] = batch * heads * length * length * dtype_bytes
    return parts


def available_bytes(device: str) -> int | None:
    """Free memory of a device: the GPU's free bytes, or the host's MemAvailable (Linux); None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_lengths(
    config_path: Path,
    lengths: list[int],
    device: str,
    option: str,
    dtype_bytes: int = 4,
    logits_rows: int | None = None,
    label: str = "the model",
    batch: int = 1,
    train: str | None = None,
    memory: bool = True,
) -> None:
    """Refuse, before loading, context lengths a model cannot take: beyond learned positions, or beyond memory.

    `LLMCTL_MEMORY_BYTES` overrides the memory available (tests; a share of a machine). `memory=False` checks
    positions only (finetune checks memory with its fuller estimate, `llmctl.training.estimate`).

    Examples:
        check_lengths(Path(m) / "config.json", [8192, 16384], "cpu", "--context-lengths", logits_rows=8)
    """
    from llmctl.models.formats.hf import read_json

    if not lengths or not Path(config_path).is_file():
        return
    raw = read_json(Path(config_path), "model config")
    longest = max(lengths)
    if not has_rope(_Raw(raw)):
        n = int(_get(raw, "max_position_embeddings", "n_positions", default=0) or 0)
        if n and longest > n:
            raise LlmctlError(
                f"{option} {longest} is longer than {label} can take: it has {n} learned positions",
                hint=f"use lengths up to {n} (RoPE scaling needs a RoPE model)",
            )
    if not memory:
        return
    parts = estimate_bytes(raw, longest, dtype_bytes, logits_rows, batch, train)
    want = sum(parts.values())
    have = (
        int(os.environ["LLMCTL_MEMORY_BYTES"])
        if os.environ.get("LLMCTL_MEMORY_BYTES", "").isdigit()
        else available_bytes(device)
    )
    if have is not None and want > have:
        detail = ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in parts.items())
        what = f"a training step of batch {batch}" if train else "one forward pass"
        raise LlmctlError(
            f"{option} {longest} needs about {_gib(want)} for {what} of {label} ({detail}); "
            f"{device} has {_gib(have)} available",
            hint="use shorter lengths, a smaller --dtype, or a device with more memory",
        )
