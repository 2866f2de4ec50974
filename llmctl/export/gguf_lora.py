"""Write a PEFT LoRA adapter as a GGUF LoRA adapter file (llama.cpp `--lora FILE` on top of the base GGUF).

Layout as llama.cpp's convert_lora_to_gguf.py writes it: `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, and for each adapted weight W the tensors `W.lora_a` (rank x in) and `W.lora_b`
(out x rank) under W's GGUF name; llama.cpp adds (alpha / rank) * lora_b @ lora_a to W. For LLaMA q/k
weights, lora_b's rows get the same rotary permutation as the base weight's rows.

Examples:
    write_lora_gguf(Path("runs/lora"), base_model.config, Path("lora.gguf"))
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.export.gguf_writer import _ARCH_ENUM, _architecture, _check_type, _llama_tensor, _write_atomic
from llmctl.paths import check_output_path

LORA_GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_lora_to_gguf.py offers


def write_lora_gguf(
    adapter_dir: Path, base_config, out_path: Path, *, qtype: str = "f32", name: str | None = None, force: bool = False
) -> dict:
    """Write the PEFT LoRA adapter in adapter_dir (for a base model with base_config) as a GGUF adapter file.

    Examples:
        write_lora_gguf(Path("runs/lora"), AutoConfig.from_pretrained("models/smol"), Path("lora.gguf"))["pairs"]
    """
    import gguf
    import torch

    start = time.perf_counter()
    qtype = _check_type(qtype)
    if qtype not in LORA_GGUF_TYPES:
        raise LlmctlError(
            f"GGUF type {qtype!r} is not offered for LoRA adapters", hint=f"use one of: {', '.join(LORA_GGUF_TYPES)}"
        )
    out_path = check_output_path(Path(out_path), force=force, what="output", folder=False)
    arch = _architecture(base_config)
    settings = _adapter_settings(Path(adapter_dir))
    pairs = _lora_pairs(Path(adapter_dir), arch, base_config)
    ranks = {a.shape[0] for a, _ in pairs.values()}
    alpha = float(settings["lora_alpha"])
    if settings.get("use_rslora"):  # PEFT scales by alpha/sqrt(r), llama.cpp by alpha/r: fold sqrt(r) into alpha
        if len(ranks) != 1:
            raise LlmctlError(
                "an rsLoRA adapter with several ranks cannot be written to GGUF",
                hint="llama.cpp has one alpha per adapter",
            )
        alpha *= math.sqrt(ranks.pop())
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[_ARCH_ENUM[arch]()])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name or Path(adapter_dir).name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = {}
    with torch.no_grad():
        for gguf_name, (lora_a, lora_b) in sorted(pairs.items()):
            for suffix, data in ((".lora_a", lora_a), (".lora_b", lora_b)):
                ttype = gguf.GGMLQuantizationType[qtype.upper()]
                array = data.contiguous().numpy()
                try:
                    packed = gguf.quants.quantize(array, ttype)
                except gguf.QuantError:  # a rank below the block size (32): f16, as convert_lora_to_gguf does
                    ttype = gguf.GGMLQuantizationType.F16
                    packed = gguf.quants.quantize(array, ttype)
                writer.add_tensor(gguf_name + suffix, packed, raw_dtype=ttype)
                types[gguf_name + suffix] = ttype.name
    _write_atomic(writer, out_path)
    return {
        "path": str(out_path),
        "arch": arch,
        "alpha": alpha,
        "pairs": len(pairs),
        "ranks": sorted(ranks or [0]),
        "tensor_types": types,
        "size": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _adapter_settings(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise LlmctlError(
            f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)",
            hint="give the folder a LoRA finetune saved",
        )
    settings = json.loads(path.read_text(encoding="utf-8"))
    kind = settings.get("peft_type", "LORA")
    problem = None
    if kind != "LORA":
        problem = f"it is a {kind} adapter, not LoRA"
    elif settings.get("use_dora"):
        problem = "it is a DoRA adapter (magnitude vectors llama.cpp does not apply)"
    elif settings.get("alpha_pattern"):
        problem = "it sets a different alpha per module (llama.cpp has one alpha per adapter)"
    elif settings.get("modules_to_save"):
        problem = f"it also trains whole modules ({', '.join(settings['modules_to_save'])})"
    if problem:
        raise LlmctlError(
            f"adapter {adapter_dir} cannot be written as a GGUF LoRA: {problem}",
            hint="merge it into the base model and export the merged model instead",
        )
    return settings


def _lora_pairs(adapter_dir: Path, arch: str, base_config) -> dict:
    """GGUF base-tensor name -> (lora_a, lora_b) as float32 torch tensors in llama.cpp's layout."""
    import gguf
    from safetensors.torch import load_file

    files = [adapter_dir / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise LlmctlError(f"{adapter_dir} has no adapter_model.safetensors", hint="save the adapter with safetensors")
    name_map = gguf.get_tensor_name_map(_ARCH_ENUM[arch](), base_config.num_hidden_layers)
    halves: dict[str, dict[str, object]] = {}
    for key, tensor in load_file(str(files[0])).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise LlmctlError(
                f"adapter tensor {key!r} is not a LoRA A/B matrix",
                hint="merge the adapter into the base model and export the merged model instead",
            )
        hf_name = key.removeprefix("base_model.model.").replace(".lora_A.", ".").replace(".lora_B.", ".")
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None or gguf_name.startswith(("token_embd", "output.")):
            raise LlmctlError(
                f"adapter tensor {key!r} adapts a weight llama.cpp LoRA cannot (or llmctl does not) map",
                hint="merge the adapter into the base model and export the merged model instead",
            )
        side = "a" if ".lora_A." in key else "b"
        data = tensor.float()
        if side == "b" and arch == "llama":
            data = _llama_tensor(hf_name, data, base_config)  # rotary row order for q/k, as the base weight
        halves.setdefault(gguf_name, {})[side] = data
    missing = [n for n, h in halves.items() if set(h) != {"a", "b"}]
    if missing or not halves:
        raise LlmctlError(
            f"adapter {adapter_dir} has no complete LoRA A/B pairs" + (f" ({missing[0]})" if missing else ""),
            hint="save the adapter again with PEFT",
        )
    return {n: (h["a"], h["b"]) for n, h in halves.items()}
