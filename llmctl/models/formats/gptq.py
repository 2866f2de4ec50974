"""HF GPTQ folders (format `gptq`): the AutoGPTQ/GPTQModel layout transformers (with gptqmodel) and vLLM load.

Per quantized Linear `L`: `L.qweight` (int32, 32/bits unsigned codes per word along the input dimension, shape
[in·bits/32, out]), `L.qzeros` (zero points minus one, packed along the output dimension), `L.scales` (float16,
[groups, out]) and `L.g_idx` (the group of each input column; act-order when not i // group_size), plus config.json's
`quantization_config` (`quant_method: gptq`, `checkpoint_format: gptq`, bits, group_size, desc_act, sym) and the
same in quantize_config.json for older loaders. neural-compressor writes this layout for its HF export ("INC is
using AutoGPTQ format for RTN, GPTQ, AWQ, and TEQ"); llmctl packs with INC's own INCWeightOnlyLinear.pack.

Reading needs transformers with gptqmodel or auto-gptq; where neither is installed (CPU-only set-ups: gptqmodel
7.7 pulls a CUDA torch), neural-compressor's HF loader (`load(..., format="huggingface")`) reads the folder.

Examples:
    save(woq, tokenizer, Path("out"))
    model, tok = load("out", None, "cpu")
"""

from __future__ import annotations

import json
from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.runtime.quiet import stdout_to_stderr

WEIGHTS = "model.safetensors"


def _packed(layer):
    """INC's HF-layout buffers (qweight, qzeros, scales) of one WoqLayer, packed by INC's own module."""
    import torch
    from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

    out_f, in_f = layer.shape
    group = layer.group_size if layer.group_size > 0 else in_f
    module = INCWeightOnlyLinear(
        in_f, out_f, bits=layer.bits, group_size=group, zp=True, bias=False, use_optimum_format=True, g_idx=False
    )
    offset = 1 << (layer.bits - 1)
    unsigned = layer.q.to(torch.int32) + offset
    zero = torch.zeros_like(layer.scale, dtype=torch.int32) if layer.zero is None else layer.zero.to(torch.int32)
    with stdout_to_stderr():
        module.pack(unsigned, layer.scale.to(torch.float16), zero + offset, None)
    return {"qweight": module.qweight, "qzeros": module.qzeros, "scales": module.scales}


def quantization_config(woq) -> dict:
    """config.json's quantization_config in the keys AutoGPTQ, GPTQModel and transformers read."""
    layers = list(woq.layers.values())
    if len({(lay.bits, lay.group_size) for lay in layers}) != 1:
        raise LlmctlError(
            "the model's layers use different bits or group sizes, which one GPTQ config cannot hold",
            hint="export it dequantized (--format hf or gguf)",
        )
    return {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": layers[0].bits,
        "group_size": layers[0].group_size,
        "desc_act": any(lay.g_idx is not None for lay in layers),
        "sym": all(lay.zero is None for lay in layers),
        "static_groups": False,
        "true_sequential": True,
        "lm_head": False,
    }


def save(woq, tokenizer, dest: Path) -> dict:
    """Write a weight-only quantized model (woq.WoqModel) in the HF GPTQ layout; return its facts.

    Examples:
        save(woq, tokenizer, Path("out"))["desc_act"]   # True for a GPTQ act-order entry
    """
    import torch
    from safetensors.torch import save_file

    dest = Path(dest)
    woq.check_linear_targets("the GPTQ layout")
    qc = quantization_config(woq)
    out = {}
    for name, layer in woq.layers.items():
        for key, tensor in _packed(layer).items():
            out[f"{name}.{key}"] = tensor.contiguous()
        out[f"{name}.g_idx"] = layer.groups_of_columns().to(torch.int32)
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias.to(torch.float16).contiguous()
    out.update({k: v.contiguous() for k, v in woq.rest.items()})
    dest.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dest / WEIGHTS), metadata={"format": "pt"})
    woq.save_config(dest, qc)
    (dest / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(dest)
    return {"layout": "gptq", "desc_act": qc["desc_act"], "quantized_layers": len(woq.layers)}


def _gptq_kernels() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("gptqmodel", "auto_gptq"))


def read(path: str, dtype=None):
    """The model of a GPTQ folder through an independent reader: transformers + gptqmodel/auto-gptq when
    installed, else neural-compressor's HF loader (its float weights exact, see llmctl.models.formats.woq).

    Examples:
        model = read("out")
    """
    import torch

    from llmctl.models.formats.woq import exact_weights

    if _gptq_kernels():
        from transformers import AutoModelForCausalLM

        with stdout_to_stderr():
            return AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype or torch.float16, trust_remote_code=False
            )
    from neural_compressor.torch.quantization import load as inc_load

    with stdout_to_stderr():
        model = inc_load(str(path), format="huggingface", device="cpu", trust_remote_code=False)
    exact_weights(model)
    return model


def load(path: str, dtype, device: str):
    """(model, tokenizer) of a GPTQ folder (see `read`)."""
    from llmctl.models.formats.hf import check_folder, load_tokenizer

    check_folder(Path(path))
    try:
        model = read(path, dtype)
    except LlmctlError:
        raise
    except Exception as exc:  # the loaders raise many types for unreadable folders
        raise LlmctlError(
            f"GPTQ weights in {path} cannot be read ({first_line(exc)})",
            hint="the files are damaged; re-create them with `llmctl export --format gptq`",
        ) from exc
    return model.to(device), load_tokenizer(path)


def from_folder(path: Path):
    """The woq.WoqModel of a GPTQ folder (read by neural-compressor's HF loader, unpacked by its modules)."""
    from llmctl.models.formats.woq import WoqModel

    return WoqModel.from_inc_model(read(str(path)))
