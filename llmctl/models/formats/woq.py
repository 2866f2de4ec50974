"""Weight-only quantized layers as plain integers: the one in-memory form the quantized layouts convert through.

A `WoqLayer` holds one Linear layer's integer codes, scales, zero points, group size and channel order (GPTQ's
`g_idx`) with the meaning every layout shares: weight[o, i] = (q[o, i] - zero[o, g(i)]) * scale[o, g(i)], with q
and zero signed (code - 2^(bits-1)) and g(i) = g_idx[i] (default i // group_size; a last group shorter than
group_size is its own group, as neural-compressor splits columns). neural-compressor's modules,
compressed-tensors (`llmctl/models/formats/compressed_tensors.py`) and the HF GPTQ layout
(`llmctl/models/formats/gptq.py`) read and write it, so a quantized model moves between them without
re-quantization.

neural-compressor dequantizes its weights in float16 (`INCWeightOnlyLinear.recover`), which rounds q·scale a
second time and, in a Python loop over input columns, takes seconds per layer; `exact_weights` gives its modules
the float32 product instead, as every other reader computes it.

Examples:
    layers = inc_layers(qmodel)                   # {"model.layers.0.mlp.up_proj": WoqLayer(...), ...}
    layers["model.layers.0.mlp.up_proj"].dequantize()   # float32 weight
    exact_weights(qmodel)                         # INC modules run on exact float32 weights from now on
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError


@dataclass
class WoqLayer:
    """One weight-only quantized Linear layer (see the module docstring for the meaning of each field).

    Examples:
        WoqLayer(q, scale, None, None, bits=4, group_size=128).dequantize().shape   # (out, in)
    """

    q: Any  # (out, in) int8, signed codes
    scale: Any  # (out, groups) float
    zero: Any | None  # (out, groups) int8 signed zero points; None = symmetric (zero 0)
    g_idx: Any | None  # (in,) int32 group of each input column; None = column order
    bits: int
    group_size: int  # -1 = one group per output row
    bias: Any | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def groups_of_columns(self):
        """The group of every input column, as a long tensor of length in_features."""
        import torch

        if self.g_idx is not None:
            return self.g_idx.long()
        cols = self.q.shape[1]
        size = cols if self.group_size <= 0 else self.group_size
        return torch.arange(cols) // size

    def dequantize(self):
        """The float32 weight: (q - zero) * scale, exact (scales as stored, the product in float32)."""
        import torch

        g = self.groups_of_columns()
        q = self.q.to(torch.float32)
        if self.zero is not None:
            q = q - self.zero.to(torch.float32)[:, g]
        return q * self.scale.to(torch.float32)[:, g]


def _is_inc_module(module) -> bool:
    return type(module).__name__ == "INCWeightOnlyLinear"


def inc_layer(module) -> WoqLayer:
    """A neural-compressor INCWeightOnlyLinear as a WoqLayer, unpacked by INC's own `unpack` (its packing order).

    INC stores codes unsigned (0 … 2^bits - 1) and, for symmetric grids, the zero point 2^(bits-1) (8 at 4 bits):
    both become signed here, and an all-8 zero point becomes "symmetric".
    """
    import torch

    if "int" not in str(module.dtype):
        raise LlmctlError(
            f"neural-compressor layer with data type {module.dtype} has no integer codes",
            hint="export it dequantized (--format hf or gguf)",
        )
    params = module.unpack()
    offset = 1 << (module.bits - 1)
    q = (params["int_weight"].to(torch.int32) - offset).to(torch.int8)
    zp = params.get("zp")
    zero = None
    if zp is not None:
        zero_i = zp.to(torch.int32) - offset
        zero = None if bool((zero_i == 0).all()) else zero_i.to(torch.int8)
    g_idx = getattr(module, "g_idx", None)
    group = module.group_size if module.group_size > 0 and module.group_size < module.in_features else -1
    if g_idx is not None:
        g_idx = g_idx.to(torch.int32)
        if bool((g_idx.long() == torch.arange(module.in_features) // max(group, 1)).all()) or group < 0:
            g_idx = None  # column order: no g_idx needed
    bias = getattr(module, "bias", None)
    if bias is not None and not bool(bias.any()):
        bias = None  # INC's HF-style module always carries a bias buffer; zeros mean the layer had none
    return WoqLayer(
        q=q,
        scale=params["scales"].contiguous(),
        zero=zero,
        g_idx=g_idx,
        bits=module.bits,
        group_size=group,
        bias=None if bias is None else bias.to(torch.float32),
    )


def inc_layers(model) -> dict[str, WoqLayer]:
    """Every weight-only quantized layer of a neural-compressor model, by module name.

    A layer wrapped in INC's MulLinear (an input scale AWQ/TEQ could not fold into the previous layer) has no
    integer form without re-quantizing and is refused.
    """
    layers = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "MulLinear":
            raise LlmctlError(
                f"layer {name} multiplies its input by a scale before the quantized weights (INC "
                "MulLinear), which quantized layouts cannot express",
                hint="export it dequantized (--format hf or gguf)",
            )
        if _is_inc_module(module):
            layers[name] = inc_layer(module)
    if not layers:
        raise LlmctlError(
            "the model has no neural-compressor weight-only layers",
            hint="give an entry made by `llmctl quantize --algo rtn|gptq|awq|teq`",
        )
    return layers


def exact_weights(model) -> int:
    """Give every INC weight-only module its exact float32 weight (INC's forward then reuses it); return the count.

    Examples:
        exact_weights(qmodel)   # 210 on the default model
    """
    import torch

    n = 0
    with torch.no_grad():
        for module in model.modules():
            if not _is_inc_module(module):
                continue
            layer = inc_layer(module)
            module.weight = layer.dequantize()
            if getattr(module, "bias", None) is not None:
                module.bias = module.bias.to(torch.float32)
            n += 1
    return n


def dequantized_model(model):
    """Replace every INC weight-only module (and MulLinear wrapper) by a plain float32 nn.Linear, in place.

    A MulLinear's input scale is folded into the weight's columns: linear(x * s) is the Linear with W * s.

    Examples:
        plain = dequantized_model(qmodel)   # a model the GGUF and safetensors writers take
    """
    import torch

    modules = list(model.named_modules())
    wrappers = {name for name, m in modules if type(m).__name__ == "MulLinear"}
    with torch.no_grad():
        for name, module in modules:
            if name.rpartition(".")[0] in wrappers:
                continue  # the quantized layer inside a MulLinear: replaced with its wrapper
            if type(module).__name__ == "MulLinear":
                layer = inc_layer(module.linear)
                weight = layer.dequantize() * module.input_scale.to(torch.float32)[None, :]
            elif _is_inc_module(module):
                layer = inc_layer(module)
                weight = layer.dequantize()
            else:
                continue
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
            linear.weight.data = weight.contiguous()
            if layer.bias is not None:
                linear.bias.data = layer.bias
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return model


@dataclass
class WoqModel:
    """A whole weight-only quantized model: its quantized layers, every other tensor, and its (unquantized) config.

    Examples:
        woq = WoqModel.from_inc_model(qmodel); sorted(woq.rest)[:2]   # ["lm_head.weight", "model.embed_tokens.weight"]
    """

    layers: dict[str, WoqLayer]
    rest: dict[str, Any]  # every other tensor by state-dict name (embeddings, norms, an untied output head)
    config: Any  # the transformers config of the architecture, without a quantization_config
    generation_config: Any | None = None
    facts: dict = field(default_factory=dict)

    @classmethod
    def from_inc_model(cls, model) -> WoqModel:
        """The WoqModel of a neural-compressor weight-only model (in memory or loaded from INC's layout)."""
        return cls.from_layers(model, inc_layers(model))

    @classmethod
    def from_layers(cls, model, layers: dict[str, WoqLayer]) -> WoqModel:
        """The WoqModel of `model` whose modules named in `layers` are quantized (their own tensors are dropped)."""
        import copy

        prefixes = tuple(f"{name}." for name in layers)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        rest = {
            k: v.detach().to("cpu")
            for k, v in model.state_dict().items()
            if not k.startswith(prefixes) and not (tied and k == "lm_head.weight")
        }
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        return cls(layers, rest, config, getattr(model, "generation_config", None))

    @classmethod
    def from_folder_parts(cls, path: Path, layers: dict[str, WoqLayer], rest: dict) -> WoqModel:
        """A WoqModel from a quantized folder's config.json and the tensors a layout module has read."""
        from transformers import AutoConfig, GenerationConfig

        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        gen = GenerationConfig.from_pretrained(str(path)) if (Path(path) / "generation_config.json").is_file() else None
        if getattr(config, "tie_word_embeddings", False):
            rest.pop("lm_head.weight", None)
        return cls(layers, rest, config, gen)

    def check_linear_targets(self, layout: str) -> list[str]:
        """Every quantized layer is an nn.Linear of the architecture; return the Linear layers left unquantized."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            empty = AutoModelForCausalLM.from_config(self.config, trust_remote_code=False)
        modules = dict(empty.named_modules())
        for name, layer in self.layers.items():
            module = modules.get(name)
            if not isinstance(module, torch.nn.Linear):
                kind = type(module).__name__ if module is not None else "no such layer"
                raise LlmctlError(
                    f"quantized layer {name} is a {kind} in {self.config.model_type}, not a Linear "
                    f"layer, so {layout} cannot hold it",
                    hint="export it dequantized (--format hf or gguf), or quantize with --save-format inc",
                )
            if (module.out_features, module.in_features) != layer.shape:
                raise LlmctlError(
                    f"quantized layer {name} has shape {layer.shape}, the architecture "
                    f"{(module.out_features, module.in_features)}",
                    hint="the quantized files do not match their config.json; re-create the model",
                )
        return [n for n, m in modules.items() if isinstance(m, torch.nn.Linear) and n not in self.layers]

    def save_config(self, dest: Path, quantization_config: dict) -> None:
        """config.json with the layout's quantization_config, and generation_config.json when there is one."""
        data = self.config.to_dict()
        data["quantization_config"] = quantization_config
        (Path(dest) / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if self.generation_config is not None:
            self.generation_config.save_pretrained(dest)
