"""GGUF models (format `gguf`): a .gguf file, or a registry/Ollama folder holding one, read back by transformers.

gguf-py's GGUFReader gives the keys and tensor types; transformers' GGUF loader reads the tensors, config and
tokenizer. transformers 4.57's loader has gaps that `read` closes from the file's own keys: it maps GPT-2's context
length to `n_ctx` (so `n_positions` stays 1024 and any other size fails to load), and for `llama` files it names
bos/eos the wrong way round and always prepends BOS. An export registered with `llmctl export --name` is a folder
with the .gguf file and the registry's marker; `gguf_file` finds the file.

Examples:
    meta = gguf_metadata(Path("m.gguf"))            # {"general.architecture": "llama", ...}
    model, tokenizer = read(Path("m.gguf"))         # a transformers model and tokenizer
    model, tokenizer = load("models/smol-q8", torch.float32, "cpu")
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError, first_line
from llmctl.models.formats import gguf_file  # noqa: F401  (re-exported)

_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")
_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
}


def gguf_metadata(path: Path, arrays: bool = False) -> dict:
    """The key/value metadata of a GGUF file; the big vocabulary arrays only when arrays=True.

    Examples:
        gguf_metadata(Path("m.gguf"))["tokenizer.ggml.pre"]   # "smollm"
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise LlmctlError(
            f"cannot read GGUF file {path} ({first_line(exc)})", hint="the file may be truncated or not a GGUF file"
        ) from exc
    out = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or (key in _BIG_ARRAYS and not arrays):
            continue
        out[key] = fld.contents()
    return out


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name (e.g. "Q8_0") of a GGUF file.

    Examples:
        gguf_tensor_types(Path("m.gguf"))["token_embd.weight"]   # "Q8_0"
    """
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def read(path: Path, dtype=None):
    """Load a GGUF file as a transformers (model, tokenizer), with the loader's gaps above closed.

    Examples:
        model, tok = read(Path("smol.Q8_0.gguf"))
    """
    import functools

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    path = gguf_file(Path(path))
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)  # transformers' tqdm bar over the tensors it dequantizes
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if arch == "gpt2":
            config.n_positions = meta.get("gpt2.context_length", config.n_positions)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, config=config, dtype=dtype or torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many types for files it cannot read
        raise LlmctlError(
            f"transformers cannot load GGUF file {path} ({first_line(exc)})",
            hint="the file may be damaged, or of an architecture transformers does not read",
        ) from exc
    finally:
        gguf_utils.tqdm = bar
    for role, key in _ID_KEYS.items():
        token_id = meta.get(key)
        if token_id is None:
            continue
        setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
        setattr(model.config, f"{role}_token_id", int(token_id))
        if model.generation_config is not None:
            setattr(model.generation_config, f"{role}_token_id", int(token_id))
    if hasattr(tokenizer, "add_bos_token") and "tokenizer.ggml.add_bos_token" in meta:
        tokenizer.add_bos_token = bool(meta["tokenizer.ggml.add_bos_token"])
    return model, tokenizer


def load(path: str, dtype, device: str):
    """(model, tokenizer) of a GGUF file or folder, dequantized by transformers' GGUF reader (see `read`)."""
    from llmctl.models.formats.hf import ensure_pad_token

    model, tokenizer = read(Path(path), dtype)
    ensure_pad_token(tokenizer)
    return model.to(device), tokenizer
