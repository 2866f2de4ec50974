"""The `llmctl` quantize backend: llmctl.compress's RTN, GPTQ and AWQ cores, saved as compressed-tensors.

The cores return integer codes with compressed-tensors' meaning (llmctl.compress.grid.QuantizedWeight), which
are the fields of a `llmctl.models.formats.woq.WoqLayer`; the model is left holding the dequantized weights, so the
perplexity measured on it afterwards is the saved model's. Grids follow the neural-compressor runs they
replace: RTN on INC RTN's grid, GPTQ on INC GPTQ's (or RTN's with `gptq.rtn_grid`), AWQ's codes on RTN's.
benchmarks/compress_speed.py measures both sides (README: GPTQ 4-bit at 8×512 took 235 CPU seconds in INC and
34 here, at a lower WikiText-2 perplexity).

Examples:
    layers = quantize_with_cores(model, "gptq", config, windows, progress=print)
    facts = save_layers(model, layers, tokenizer, Path("out"))
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.runtime.progress import Progress


def quantize_with_cores(model, algo: str, config: dict, windows: list, progress: Progress | None = None) -> dict:
    """Quantize every decoder-block linear of `model` in place; full module name → QuantizedWeight."""
    from llmctl.compress.awq import awq_model
    from llmctl.compress.gptq import quantize_model

    bits, group, sym = config["bits"], config["group_size"], config["sym"]
    if algo == "rtn":
        return quantize_model(model, None, bits=bits, group_size=group, sym=sym, grid="rtn")
    if algo == "gptq":
        g = config["gptq"]
        return quantize_model(
            model,
            windows,
            bits=bits,
            group_size=group,
            sym=sym,
            grid="rtn" if g["rtn_grid"] else "gptq",
            act_order=g["act_order"],
            true_sequential=g["true_sequential"],
            percdamp=g["percdamp"],
            blocksize=g["block_size"],
            progress=progress,
        )
    if algo == "awq":
        if not config["awq"]["auto_scale"]:
            raise LlmctlError(
                "the llmctl backend's AWQ always searches scales (awq.auto_scale false is RTN)",
                hint="use --algo rtn, or --backend inc for AWQ without scale search",
            )
        return awq_model(
            model, windows, bits=bits, group_size=group, sym=sym, clip=config["awq"]["auto_clip"], progress=progress
        )
    raise LlmctlError(f"the llmctl backend has no algorithm {algo!r}", hint="use rtn, gptq or awq")


def woq_model(model, layers: dict):
    """The WoqModel (llmctl.models.formats.woq) of a float model whose `layers` were quantized by the cores."""
    from llmctl.models.formats.woq import WoqLayer, WoqModel

    modules = dict(model.named_modules())
    woq_layers = {}
    for name, q in layers.items():
        bias = modules[name].bias
        woq_layers[name] = WoqLayer(
            q=q.codes,
            scale=q.scales,
            zero=q.zeros,
            g_idx=q.g_idx,
            bits=q.bits,
            group_size=q.group_size,
            bias=None if bias is None else bias.detach().to("cpu"),
        )
    return WoqModel.from_layers(model, woq_layers)


def save_layers(model, layers: dict, tokenizer, dest: Path) -> dict:
    """Write the quantized model as a compressed-tensors folder; return its layout facts."""
    from llmctl.models.formats import compressed_tensors

    return compressed_tensors.save(woq_model(model, layers), tokenizer, dest)
