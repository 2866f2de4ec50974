"""int8 W8A8 entries (`llmctl quantize --algo dynamic-int8|smoothquant`): torch dynamic-quantized Linear layers.

Saved as safetensors, never as a pickle: `int8_weights.safetensors` holds every plain tensor of the model plus,
per quantized Linear `L`, `L.weight_int8` (int8 codes), `L.weight_scale` and `L.weight_zero_point` (per tensor,
or per output row with `L.weight_axis`), and `L.bias`. Loading rebuilds the same modules from config.json with
`quantize_dynamic` and sets their packed weights, so nothing in the folder is ever unpickled.

Examples:
    save(qmodel, tokenizer, Path("out"))
    model, tok = load("out", None, "cpu")
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError, first_line

WEIGHTS = "int8_weights.safetensors"
_OLD_PICKLE = "int8_state_dict.pt"


def dynamic_int8(model):
    """Linear layers → int8 weights with per-token-dynamic int8 activations (torch fbgemm kernels), in place."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skip = {"lm_head"} if getattr(model.config, "tie_word_embeddings", False) else set()
        targets = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
        return quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)


def _quantized_linears(model) -> dict:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicLinear)}


def tensors_of(qmodel) -> dict:
    """Every tensor of an int8 model as plain (safetensors-storable) tensors."""
    import torch

    linears = _quantized_linears(qmodel)
    out: dict = {}
    for name, module in linears.items():
        w = module.weight()
        out[f"{name}.weight_int8"] = w.int_repr().contiguous()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[f"{name}.weight_scale"] = w.q_per_channel_scales().float()
            out[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int64)
            out[f"{name}.weight_axis"] = torch.tensor([w.q_per_channel_axis()])
        else:
            out[f"{name}.weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
            out[f"{name}.weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        if module.bias() is not None:
            out[f"{name}.bias"] = module.bias().detach().contiguous()
    prefixes = tuple(f"{n}." for n in linears)
    seen: set[int] = set()
    for key, value in qmodel.state_dict().items():
        if key.startswith(prefixes) or not isinstance(value, torch.Tensor):
            continue
        if value.data_ptr() in seen:  # tied weights are stored once; load re-ties them
            continue
        seen.add(value.data_ptr())
        out[key] = value.detach().contiguous()
    return out


def save(qmodel, tokenizer, dest: Path) -> None:
    """Write the int8 model (safetensors + config + tokenizer) into dest."""
    from safetensors.torch import save_file

    save_file(tensors_of(qmodel), str(Path(dest) / WEIGHTS))
    qmodel.config.save_pretrained(dest)
    if getattr(qmodel, "generation_config", None) is not None:
        qmodel.generation_config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _set_linear(module, tensors: dict, name: str) -> None:
    import torch

    codes = tensors[f"{name}.weight_int8"]
    scale, zero = tensors[f"{name}.weight_scale"], tensors[f"{name}.weight_zero_point"]
    if f"{name}.weight_axis" in tensors:
        axis = int(tensors[f"{name}.weight_axis"][0])
        qweight = torch._make_per_channel_quantized_tensor(codes, scale.double(), zero, axis)
    else:
        qweight = torch._make_per_tensor_quantized_tensor(codes, float(scale[0]), int(zero[0]))
    module.set_weight_bias(qweight, tensors.get(f"{name}.bias"))


def load(path: str, dtype, device: str):
    """Rebuild the int8 model from config.json and its safetensors weights; return (model, tokenizer)."""
    from safetensors.torch import load_file

    from llmctl.models.formats.hf import check_folder, load_tokenizer
    from llmctl.models.formats.inc import empty_model

    folder = Path(path)
    weights = folder / WEIGHTS
    if not weights.is_file():
        if (folder / _OLD_PICKLE).is_file():
            raise LlmctlError(
                f"{folder} holds int8 weights in the pickle format of older llmctl versions, which "
                f"llmctl no longer loads (unpickling can run code)",
                hint="re-create it from its parent with `llmctl quantize --algo dynamic-int8`",
            )
        raise LlmctlError(f"{folder} has no {WEIGHTS}", hint="re-create it with `llmctl quantize --algo dynamic-int8`")
    check_folder(folder)
    try:
        tensors = load_file(str(weights))
    except Exception as exc:
        raise LlmctlError(
            f"int8 weights {weights} are damaged ({first_line(exc)})", hint="re-create the model with `llmctl quantize`"
        ) from exc
    model = empty_model(str(folder))
    model.tie_weights()
    qmodel = dynamic_int8(model)
    linears = _quantized_linears(qmodel)
    # every plain parameter and buffer (the quantized Linears hold theirs packed, set by _set_linear)
    plain = {**dict(qmodel.named_parameters()), **dict(qmodel.named_buffers())}
    try:
        for name, module in linears.items():
            _set_linear(module, tensors, name)
        for key, value in tensors.items():
            if key in plain:
                plain[key].data.copy_(value)
    except (KeyError, RuntimeError) as exc:
        raise LlmctlError(
            f"int8 weights {weights} do not fit {folder / 'config.json'} ({first_line(exc)})",
            hint="re-create the model with `llmctl quantize`",
        ) from exc
    leftover = [k for k in plain if k not in tensors and "inv_freq" not in k]
    if getattr(qmodel.config, "tie_word_embeddings", False):
        leftover = [k for k in leftover if k != "lm_head.weight"]
        qmodel.tie_weights()
    if leftover:
        raise LlmctlError(
            f"int8 weights {weights} are incomplete (missing {leftover[0]})",
            hint="re-create the model with `llmctl quantize`",
        )
    return qmodel.eval(), load_tokenizer(str(folder))
