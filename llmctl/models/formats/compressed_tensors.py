"""compressed-tensors folders (format `compressed-tensors`): weight-only quantized models transformers and vLLM load.

The layout is compressed-tensors' `pack-quantized` W{bits}A16: per quantized Linear `L`, `L.weight_packed` (int32,
codes packed along the input dimension by compressed-tensors' own `pack_to_int32`), `L.weight_scale`,
`L.weight_shape`, `L.weight_zero_point` (asymmetric grids; packed along the output dimension) and `L.weight_g_idx`
(GPTQ act-order: the group of each input column, `actorder: group`), plus every other tensor unchanged, and
config.json's `quantization_config` built by compressed-tensors' QuantizationConfig. The codes, scales and zero
points are the quantizer's own (`llmctl/models/formats/woq.py`): writing re-quantizes nothing.

compressed-tensors needs in_features to be a multiple of the group size. neural-compressor splits a layer whose
inputs are not (576 = 4.5 x 128 on the default model) into full groups and one short last group; such a model is
written with the largest group size that divides every layer and the original group size (64 there), each
original group's scale and zero point repeated over its pieces: the same weights exactly.

Loading decompresses at load time (`CompressedTensorsConfig(run_compressed=False)`) into plain float Linear
layers, so `generate` and `eval` run at the speed of the unquantized parent. compressed-tensors 0.17.1 is the
version that loads every such folder with transformers 4.57 (0.18 fails on asymmetric zero points, 0.19 dropped
`actorder: group`).

Examples:
    save(woq, tokenizer, Path("out"))              # woq = woq.WoqModel from an INC model or another layout
    model, tok = load("out", torch.float32, "cpu")
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.runtime.quiet import stdout_to_stderr

WEIGHTS = "model.safetensors"
VERSION = "0.17.1"  # pinned in pyproject.toml; see the module docstring


def require() -> None:
    """compressed-tensors is importable (it is a dependency of llmctl), else one clear error."""
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as exc:
        raise LlmctlError(
            "compressed-tensors is not installed", hint=f"pip install compressed-tensors=={VERSION}"
        ) from exc


def common_group(woq) -> int:
    """The group size written: gcd of the quantizer's group size and every layer's in_features (-1 = per row)."""
    sizes = {layer.group_size for layer in woq.layers.values()}
    if len(sizes) != 1 or len({layer.bits for layer in woq.layers.values()}) != 1:
        raise LlmctlError(
            "the model's layers use different bits or group sizes, which one compressed-tensors scheme cannot hold",
            hint="export it dequantized (--format hf or gguf)",
        )
    size = sizes.pop()
    if size <= 0:
        return -1
    for layer in woq.layers.values():
        size = math.gcd(size, layer.shape[1])
    return size


def split_groups(layer, size: int):
    """(scale, zero, g_idx) of layer over groups of `size` columns: each original group's values repeated."""
    import torch

    cols = layer.shape[1]
    if layer.group_size <= 0:
        return layer.scale, layer.zero, None
    spans = torch.bincount(layer.groups_of_columns(), minlength=layer.scale.shape[1])  # columns per group
    pieces = spans // size
    scale = layer.scale.repeat_interleave(pieces, dim=1)
    zero = None if layer.zero is None else layer.zero.repeat_interleave(pieces, dim=1)
    if layer.g_idx is None:
        return scale, zero, None
    g = layer.g_idx.long()
    order = torch.argsort(g * cols + torch.arange(cols))  # columns by group, then by index
    first = torch.cumsum(spans, 0) - spans
    rank = torch.arange(cols) - first[g[order]]
    first_piece = torch.cumsum(pieces, 0) - pieces
    g_new = torch.empty(cols, dtype=torch.int32)
    g_new[order] = (first_piece[g[order]] + rank // size).to(torch.int32)
    return scale, zero, g_new


def quantization_config(woq, size: int, ignore: list[str]) -> dict:
    """config.json's quantization_config, as compressed-tensors' own QuantizationConfig serializes it."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    layers = list(woq.layers.values())
    args = dict(
        num_bits=layers[0].bits,
        type="int",
        symmetric=all(lay.zero is None for lay in layers),
        strategy="group" if size > 0 else "channel",
    )
    if size > 0:
        args["group_size"] = size
    if any(lay.g_idx is not None for lay in layers):
        args["actorder"] = "group"
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))
    qc = QuantizationConfig(
        config_groups={"group_0": scheme}, format="pack-quantized", quantization_status="compressed", ignore=ignore
    )
    return qc.model_dump(mode="json")


def tensors(woq, size: int) -> dict:
    """Every tensor of the folder's weights file, by name."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    out = {}
    symmetric = all(lay.zero is None for lay in woq.layers.values())
    for name, layer in woq.layers.items():
        scale, zero, g_idx = split_groups(layer, size)
        out[f"{name}.weight_packed"] = pack_to_int32(layer.q.contiguous(), layer.bits)
        out[f"{name}.weight_scale"] = scale.contiguous()
        out[f"{name}.weight_shape"] = torch.tensor(layer.shape)
        if not symmetric:
            zero = torch.zeros_like(layer.q[:, : scale.shape[1]]) if zero is None else zero
            out[f"{name}.weight_zero_point"] = pack_to_int32(zero.contiguous(), layer.bits, packed_dim=0).contiguous()
        if g_idx is not None:
            out[f"{name}.weight_g_idx"] = g_idx
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias.contiguous()
    for name, tensor in woq.rest.items():
        out[name] = tensor.contiguous()
    return out


def save(woq, tokenizer, dest: Path) -> dict:
    """Write a weight-only quantized model (woq.WoqModel) as a compressed-tensors folder; return its facts.

    Examples:
        save(WoqModel.from_inc_model(qmodel), tok, Path("out"))["layout_group_size"]   # 64 for g128, 576 columns
    """
    from safetensors.torch import save_file

    require()
    dest = Path(dest)
    ignore = woq.check_linear_targets("compressed-tensors")
    size = common_group(woq)
    qc = quantization_config(woq, size, ignore)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors(woq, size), str(dest / WEIGHTS), metadata={"format": "pt"})
    woq.save_config(dest, qc)
    tokenizer.save_pretrained(dest)
    weights = qc["config_groups"]["group_0"]["weights"]
    return {
        "layout": "compressed-tensors pack-quantized",
        "compressed_tensors_version": VERSION,
        "layout_group_size": size,
        "actorder": weights.get("actorder"),
        "quantized_layers": len(woq.layers),
    }


@contextlib.contextmanager
def _quiet_progress():
    """compressed-tensors draws a tqdm bar per (de)compression pass; llmctl shows its own progress instead."""
    import functools

    from compressed_tensors.compressors.model_compressors import model_compressor

    bar = model_compressor.tqdm
    model_compressor.tqdm = functools.partial(bar, disable=True)
    try:
        with stdout_to_stderr():
            yield
    finally:
        model_compressor.tqdm = bar


def read_transformers(path: str, dtype=None):
    """transformers' own compressed-tensors loader, decompressing into float Linear layers (the parity reader).

    Examples:
        model = read_transformers("out", torch.float32)
    """
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    require()
    with _quiet_progress(), warnings.catch_warnings():
        # transformers warns that run_compressed overrides the folder's own quantization_config: it is meant to
        warnings.filterwarnings("ignore", message=".*quantization_config.*", category=UserWarning)
        return AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=dtype or torch.float32,
            trust_remote_code=False,
            quantization_config=CompressedTensorsConfig(run_compressed=False),
        )


def strip(model):
    """Make a decompressed model a plain one: Linear forwards, no quantization parameters, no quantizer.

    After `run_compressed=False` compressed-tensors leaves its scales, a wrapped forward and the quantizer on
    the model; without them every Linear is the plain float layer its parent had, as fast and as saveable.
    """
    for module in model.modules():
        if not hasattr(module, "quantization_scheme"):
            continue
        module.__dict__.pop("forward", None)
        for key in [k for k in module._parameters if k.startswith("weight_")]:
            del module._parameters[key]
        for key in [k for k in module._buffers if k.startswith("weight_")]:
            del module._buffers[key]
        for attr in ("quantization_scheme", "quantization_status", "quantization_enabled"):
            module.__dict__.pop(attr, None)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.__dict__.pop("_pre_quantization_dtype", None)  # the quantizer's note; a torch.dtype JSON cannot hold
    return model


def load(path: str, dtype, device: str):
    """(model, tokenizer) of a compressed-tensors folder, decompressed at load into plain float Linear layers."""
    from llmctl.models.formats.hf import check_folder, load_tokenizer

    check_folder(Path(path))
    try:
        model = strip(read_transformers(path, dtype))
    except LlmctlError:
        raise
    except Exception as exc:  # transformers and compressed-tensors raise many types for unreadable folders
        raise LlmctlError(
            f"compressed-tensors weights in {path} cannot be read ({first_line(exc)})",
            hint="the files are damaged; re-create the model with `llmctl quantize` or `llmctl export`",
        ) from exc
    return model.to(device), load_tokenizer(path)


def from_folder(path: Path):
    """The woq.WoqModel of a compressed-tensors folder (codes unpacked by compressed-tensors' own helpers).

    Examples:
        woq = from_folder(Path("models/smol-gptq4")); woq.layers["model.layers.0.mlp.up_proj"].bits   # 4
    """
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    from llmctl.models.formats.hf import read_json
    from llmctl.models.formats.woq import WoqLayer, WoqModel

    require()
    path = Path(path)
    qc = read_json(path / "config.json", "model config").get("quantization_config") or {}
    groups = list((qc.get("config_groups") or {}).values())
    if qc.get("format") != "pack-quantized" or len(groups) != 1 or not groups[0].get("weights"):
        raise LlmctlError(
            f"{path} is not a single-scheme pack-quantized compressed-tensors folder",
            hint="llmctl reads the weight-only layout it writes (pack-quantized, one scheme)",
        )
    w = groups[0]["weights"]
    state: dict = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    layers = {}
    for key in [k for k in state if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        shape = state.pop(f"{name}.weight_shape").tolist()
        q = unpack_from_int32(state.pop(key), w["num_bits"], torch.Size(shape))
        scale = state.pop(f"{name}.weight_scale")
        zero = state.pop(f"{name}.weight_zero_point", None)
        if zero is not None:
            zero = unpack_from_int32(zero, w["num_bits"], torch.Size((shape[0], scale.shape[1])), packed_dim=0)
            zero = None if not bool(zero.any()) else zero
        g_idx = state.pop(f"{name}.weight_g_idx", None)
        layers[name] = WoqLayer(
            q=q,
            scale=scale,
            zero=zero,
            g_idx=g_idx,
            bits=w["num_bits"],
            group_size=w.get("group_size") or -1 if w.get("strategy") == "group" else -1,
            bias=state.pop(f"{name}.bias", None),
        )
    return WoqModel.from_folder_parts(path, layers, state)
