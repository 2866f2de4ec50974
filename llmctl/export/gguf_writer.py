"""Write a transformers causal LM (LLaMA family or GPT-2) as a GGUF file that llama.cpp and Ollama run.

Glue around gguf-py (the `gguf` package): its GGUFWriter, its tensor-name map and its numpy quantizers. Facts
(tensor layouts, which tensors stay f32, which type the output tensor gets) follow llama.cpp's
convert_hf_to_gguf.py for f32/f16/bf16/q8_0 and llama-quantize (src/llama-quant.cpp) for q4_0/q4_1/q5_0.

Examples:
    facts = write_gguf(model, tokenizer, Path("smol.Q8_0.gguf"), "q8_0")
    write_gguf(Path("models/smol"), None, Path("smol.f16.gguf"), "f16", force=True)   # an HF folder
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.export.gguf_tokenizer import gguf_vocab
from llmctl.export.targets import GGUF_BYTES_PER_WEIGHT, GGUF_TYPES  # noqa: F401  (re-exported)
from llmctl.paths import check_output_path

# The one list of GGUF output types (with their bytes per weight) is the export targets table's.
_BYTES_PER_WEIGHT = GGUF_BYTES_PER_WEIGHT
# llama-quantize gives the output tensor (or the tied token embedding) Q6_K in 4/5-bit files, Q8_0 when its rows
# are not a multiple of 256; gguf-py has no Q6_K quantizer, so llmctl always uses Q8_0 there (larger, as accurate).
_LOW_BIT = ("q4_0", "q4_1", "q5_0")
SUPPORTED_ARCHITECTURES = ("llama", "gpt2")
# Buffers, not weights (convert_hf_to_gguf drops the same).
_SKIP_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def write_gguf(
    model,
    tokenizer,
    out_path: Path,
    qtype: str,
    *,
    name: str | None = None,
    force: bool = False,
    chat_template: str | None = None,
    add_bos: bool | None = None,
) -> dict:
    """Write model + tokenizer as a GGUF file of type qtype (one of GGUF_TYPES); return facts about it.

    model is a loaded transformers model or an HF folder (then tokenizer may be None: read from the folder).
    chat_template replaces the tokenizer's own (e.g. the template a finetune was trained with); add_bos sets
    `tokenizer.ggml.add_bos_token` (default: whether the tokenizer prepends BOS when encoding). The file is
    written beside out_path under a temp name and renamed when complete.

    Examples:
        write_gguf(model, tok, Path("m.Q4_0.gguf"), "q4_0")["tensor_types"]   # {"Q4_0": 154, "F32": 61, ...}
    """
    start = time.perf_counter()
    qtype = _check_type(qtype)
    out_path = check_output_path(Path(out_path), force=force, what="output", folder=False)
    model, tokenizer = _load(model, tokenizer)
    config = model.config
    arch = _architecture(config)
    n_weights = sum(p.numel() for p in model.parameters())
    check_output_path(
        out_path, force=force, what="output", need_bytes=int(n_weights * _BYTES_PER_WEIGHT[qtype]), folder=False
    )
    vocab = gguf_vocab(tokenizer, vocab_size=config.vocab_size, chat_template=chat_template, config=config)
    if add_bos is not None:
        vocab.add_bos = add_bos

    import gguf

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[_ARCH_ENUM[arch]()])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or Path(str(getattr(config, "_name_or_path", "") or arch)).name or arch)
    _HPARAMS[arch](config, writer)
    writer.add_file_type(_file_type(qtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(writer)
    types, fallbacks = _add_tensors(writer, model, arch, qtype)
    _write_atomic(writer, out_path)
    return {
        "path": str(out_path),
        "qtype": qtype,
        "arch": arch,
        "tensors": sum(types.values()),
        "tensor_types": dict(types),
        "fallback_f16": fallbacks,
        "size": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
        "pre_tokenizer": vocab.pre,
        "vocab_size": len(vocab.tokens),
        "chat_template": bool(vocab.chat_template),
        "add_bos": vocab.add_bos,
    }


def _check_type(qtype: str) -> str:
    key = str(qtype).lower()
    if key not in _BYTES_PER_WEIGHT:
        raise LlmctlError(f"unknown GGUF type {qtype!r}", hint=f"use one of: {', '.join(GGUF_TYPES)}")
    return key


def _file_type(qtype: str) -> int:
    import gguf

    return gguf.LlamaFileType.ALL_F32 if qtype == "f32" else gguf.LlamaFileType[f"MOSTLY_{qtype.upper()}"]


def _load(model, tokenizer):
    if not isinstance(model, (str, Path)):
        if tokenizer is None:
            raise LlmctlError("no tokenizer given for the model", hint="pass the model's tokenizer")
        return model, tokenizer
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmctl.errors import first_line

    path = Path(model)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types for unreadable folders
        raise LlmctlError(
            f"cannot load model folder {path} ({first_line(exc)})",
            hint="give an HF model folder with config.json, weights and a tokenizer",
        ) from exc
    return loaded, tokenizer


def _architecture(config) -> str:
    return check_architecture(getattr(config, "model_type", None))


def check_architecture(arch: str | None) -> str:
    """arch when llmctl's GGUF converter knows it, else an error naming it and the supported ones.

    Examples:
        check_architecture("llama")   # "llama"
    """
    if arch not in SUPPORTED_ARCHITECTURES:
        raise LlmctlError(
            f"architecture {arch!r} cannot be exported to GGUF",
            hint=f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}",
        )
    return arch


def _llama_hparams(config, writer) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:  # only then does llama.cpp need them (default: n_embd / n_head)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _rope_scaling(config, writer)


def _rope_scaling(config, writer) -> None:
    """RoPE scaling keys as convert_hf_to_gguf writes them; llama3 scaling goes into a rope_freqs tensor instead."""
    import gguf

    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", "llama3"):
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(
            int(scaling.get("original_max_position_embeddings") or config.max_position_embeddings)
        )
        if "beta_fast" in scaling:
            writer.add_rope_scaling_yarn_beta_fast(float(scaling["beta_fast"]))
        if "beta_slow" in scaling:
            writer.add_rope_scaling_yarn_beta_slow(float(scaling["beta_slow"]))
    else:
        raise LlmctlError(
            f"RoPE scaling {kind!r} cannot be written to a GGUF LLaMA model",
            hint="supported RoPE scalings: linear, yarn, llama3 (or none)",
        )


def _llama_rope_freqs(config):
    """llama3 RoPE scaling as llama.cpp's rope_freqs tensor: default inverse frequencies / scaled ones."""
    scaling = getattr(config, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    default = ROPE_INIT_FUNCTIONS["default"](config, "cpu")[0]
    scaled = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0]
    return (default / scaled).float()


def _llama_tensor(hf_name: str, data, config):
    """llama.cpp's rotary layout: q/k rows of each head reordered from HF's halves to interleaved pairs."""
    heads = config.num_attention_heads
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(data, heads)
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(data, getattr(config, "num_key_value_heads", None) or heads)
    return data


def _permute(data, heads: int):
    # convert_hf_to_gguf LlamaModel.permute: (heads, 2, rows/heads/2, ...) with axes 1 and 2 swapped
    return data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def _gpt2_hparams(config, writer) -> None:
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(getattr(config, "n_inner", None) or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(float(config.layer_norm_epsilon))


def _gpt2_tensor(hf_name: str, data, config):
    # GPT-2's Conv1D stores weights as (in, out); GGUF wants (out, in) like a Linear layer.
    if hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        return data.transpose(0, 1)
    return data


def _gguf_arch(name: str):
    import gguf

    return lambda: getattr(gguf.MODEL_ARCH, name)


_ARCH_ENUM = {"llama": _gguf_arch("LLAMA"), "gpt2": _gguf_arch("GPT2")}
_HPARAMS = {"llama": _llama_hparams, "gpt2": _gpt2_hparams}
_TRANSFORM = {"llama": _llama_tensor, "gpt2": _gpt2_tensor}


def _is_tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None:
        return True
    return bool(getattr(model.config, "tie_word_embeddings", False)) or out.weight.data_ptr() == inp.weight.data_ptr()


def _add_tensors(writer, model, arch: str, qtype: str) -> tuple[Counter, list[str]]:
    """Map, transform, type and quantize every weight into the writer; return type counts and f16 fallbacks."""
    import gguf
    import torch

    config = model.config
    tied = _is_tied(model)
    output_name = "token_embd.weight" if tied else "output.weight"  # what llama.cpp uses as the output layer
    name_map = gguf.get_tensor_name_map(_ARCH_ENUM[arch](), config.num_hidden_layers)
    types: Counter = Counter()
    fallbacks: list[str] = []
    tensors = []
    if arch == "llama" and (freqs := _llama_rope_freqs(config)) is not None:
        tensors.append(("rope_freqs.weight", freqs))
    with torch.no_grad():
        for hf_name, tensor in model.state_dict().items():
            if hf_name.endswith(_SKIP_SUFFIXES) or (tied and hf_name == "lm_head.weight"):
                continue
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise LlmctlError(
                    f"tensor {hf_name!r} of this {arch} model has no GGUF name",
                    hint="export a plain float model (merge adapters, dequantize first)",
                )
            tensors.append((gguf_name, _TRANSFORM[arch](hf_name, tensor.detach().float().cpu(), config)))
        for gguf_name, data in tensors:
            array = data.contiguous().numpy()
            ttype = _tensor_type(gguf_name, array.ndim, qtype, output_name)
            try:
                packed = gguf.quants.quantize(array, ttype)
            except gguf.QuantError:  # rows not a multiple of the block size: f16, as convert_hf_to_gguf does
                ttype = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(array, ttype)
                fallbacks.append(gguf_name)
            writer.add_tensor(gguf_name, packed, raw_dtype=ttype)
            types[ttype.name] += 1
    return types, fallbacks


def _tensor_type(gguf_name: str, ndim: int, qtype: str, output_name: str):
    """The ggml type of one tensor in a file of type qtype (llama.cpp's rules, see the module docstring)."""
    import gguf

    q = gguf.GGMLQuantizationType
    # 1-D tensors, norms, biases and position embeddings stay f32 (convert_hf_to_gguf and llama-quantize agree)
    if (
        ndim <= 1
        or gguf_name.endswith("_norm.weight")
        or not gguf_name.endswith(".weight")
        or gguf_name.startswith(("position_embd.", "rope_freqs."))
    ):
        return q.F32
    if qtype in _LOW_BIT and gguf_name == output_name:
        return q.Q8_0
    return q[qtype.upper()]


def _write_atomic(writer, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent)
    os.close(fd)
    try:
        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the finished file gets the usual permissions
        os.replace(tmp, out_path)
    except OSError as exc:
        raise LlmctlError(
            f"cannot write {out_path} ({exc.strerror or exc})", hint="check free disk space and permissions"
        ) from exc
    finally:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
