"""Hugging Face model folders and GGUF files: checks, loading, tokenizers, and the GGUF → safetensors conversion.

llmctl never runs code from a model folder: every `from_pretrained` passes `trust_remote_code=False`, and a
folder that asks for its own code (`auto_map` in config.json or tokenizer_config.json) is refused before
transformers could prompt for it.

Examples:
    check_folder(Path("my-model"))          # config.json readable, no custom code, weights not truncated
    model, tok = load("/m/tiny", torch.float32, "cpu")
    facts = gguf_to_hf(Path("m.Q4_K_M.gguf"), Path("out"))
"""

from __future__ import annotations

import json
from pathlib import Path

from llmctl.errors import LlmctlError, first_line

# Files whose `auto_map` would make transformers import Python from the folder.
_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "adapter_config.json", "processor_config.json")


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object from a model folder, or one error naming the file, what is wrong and what to do."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LlmctlError(f"{what} {path} is missing", hint="re-create or re-import the model") from exc
    except UnicodeDecodeError as exc:
        raise LlmctlError(
            f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start})",
            hint="the file is damaged; re-create or re-import the model",
        ) from exc
    except json.JSONDecodeError as exc:
        raise LlmctlError(
            f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno})",
            hint="the file is damaged; re-create or re-import the model",
        ) from exc
    except OSError as exc:
        raise LlmctlError(f"cannot read {what} {path} ({exc.strerror or first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise LlmctlError(f"{what} {path} is not a JSON object", hint="re-create or re-import the model")
    return data


def quant_method(path: Path) -> str | None:
    """config.json's `quantization_config.quant_method` of a folder (None without one, or when unreadable).

    Examples:
        quant_method(Path("models/smol-gptq4"))   # "compressed-tensors"
    """
    cfg = Path(path) / "config.json"
    if not Path(path).is_dir() or not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a damaged config.json is reported by the loader, not guessed at here
    q = data.get("quantization_config") if isinstance(data, dict) else None
    return q.get("quant_method") if isinstance(q, dict) else None


def refuse_remote_code(folder: Path) -> None:
    """Refuse a folder that asks transformers to import its own Python (`auto_map`): llmctl never runs it."""
    for name in _CODE_CONFIGS:
        path = Path(folder) / name
        if path.is_file() and "auto_map" in read_json(path, "config file"):
            raise LlmctlError(
                f"{path} asks to run the folder's own Python code (auto_map); llmctl never runs code "
                f"from a model folder",
                hint="use a model whose architecture transformers ships, or remove auto_map if the "
                "built-in class is meant",
            )


def check_folder(folder: Path) -> None:
    """A model folder llmctl will load: readable config.json, no custom code, weight files not truncated."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        read_json(folder / "config.json", "model config")
    refuse_remote_code(folder)
    check_weights(folder)


def check_weights(folder: Path) -> None:
    """Fail early and clearly on truncated or garbled safetensors files in a model folder."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            _check_safetensors_size(file)
            with safe_open(str(file), framework="pt") as fh:
                keys = list(fh.keys())
                if keys:
                    fh.get_slice(keys[-1])  # touches the header's offsets against the file
        except LlmctlError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise LlmctlError(
                f"weights file {file} is damaged ({first_line(exc)})",
                hint="re-create the model, or copy the file again",
            ) from exc


def _check_safetensors_size(file: Path) -> None:
    # A safetensors file is: 8-byte little-endian header length, JSON header, then the data.
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > size:
            raise LlmctlError(f"weights file {file} is truncated", hint="re-create the model")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LlmctlError(
                f"weights file {file} is damaged (its header is not valid JSON)",
                hint="re-create the model, or copy the file again",
            ) from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise LlmctlError(
            f"weights file {file} is truncated ({size} bytes, header needs {8 + n + end})",
            hint="re-create the model, or copy the file again",
        )


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one (its eos, else unk), so batches can be padded."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def load_tokenizer(path: str):
    """Load a tokenizer (no custom code) and make sure it can pad (pad = eos when the model has no pad token)."""
    from transformers import AutoTokenizer

    if Path(path).is_dir():
        refuse_remote_code(Path(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        raise LlmctlError(
            f"cannot load the tokenizer from {path} ({first_line(exc)})",
            hint="the folder needs tokenizer.json or tokenizer_config.json",
        ) from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def load(path: str, dtype, device: str, **kwargs):
    """(model, tokenizer) of an HF folder (or, with network allowed, a hub id) on device."""
    from transformers import AutoModelForCausalLM

    if Path(path).is_dir():
        check_folder(Path(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, **kwargs)
    except LlmctlError:
        raise
    except Exception as exc:
        raise LlmctlError(
            f"cannot load model from {path} ({first_line(exc)})",
            hint="the files may be incomplete or damaged; re-create or re-import the model",
        ) from exc
    return model.to(device), load_tokenizer(path)


def arch_summary(config) -> str:
    """The shape facts of a model config in one line (to name a mismatched base).

    Examples:
        arch_summary(model.config)   # "model_type=llama, hidden_size=576, num_hidden_layers=30, ..."
    """
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    return ", ".join(f"{k}={getattr(config, k, None)}" for k in keys if getattr(config, k, None) is not None)


def decoder_layers(model, required: bool = True):
    """The decoder blocks of a transformers model, through a PEFT wrapper: LLaMA-style `model.layers`, GPT-2's
    `transformer.h`, else the modules of the classes the model names in `_no_split_modules` (FSDP's sharding
    units). The one way llmctl finds them (compression cores, prune, TEQ, FSDP); with `required`, none is an error.

    Examples:
        len(decoder_layers(model))        # 30 for SmolLM2-135M
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner, tr = getattr(base, "model", None), getattr(base, "transformer", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner.layers
    if tr is not None and hasattr(tr, "h"):
        return tr.h
    names = set(getattr(base, "_no_split_modules", None) or [])
    found = [m for m in base.modules() if type(m).__name__ in names]
    if found or not required:
        return found
    raise LlmctlError(
        f"cannot find the decoder blocks of this {base.config.model_type} model",
        hint="supported: LLaMA-style (model.layers) and GPT-2-style (transformer.h) models",
    )


def fix_special_tokens(tokenizer, config) -> None:
    """Make the tokenizer's bos/eos/unk/pad strings agree with the model config's ids.

    GGUF tokenizer conversion can name the wrong strings (SmolLM2 came out with eos "<|im_start|>" while the
    model's config says id 2 "<|im_end|>"); the config's ids are what generation uses.
    """
    for attr in ("bos", "eos", "unk", "pad"):
        token_id = getattr(config, f"{attr}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{attr}_token", tokenizer.convert_ids_to_tokens(token_id))


def _read_gguf(path: Path, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # gguf-py parses the whole header (every vocabulary string) on each read, 2.4–3.3 s for SmolLM2's 49k tokens
    # on a 2-core Xeon; one config passed to both loaders makes it three reads instead of transformers' four.
    where, file = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(where, gguf_file=file, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=file, config=config, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            where, gguf_file=file, config=config, dtype=dtype, trust_remote_code=False
        )
    except Exception as exc:
        raise LlmctlError(
            f"cannot read GGUF file {path} ({first_line(exc)})",
            hint="the file may be truncated or not a GGUF model; download or copy it again",
        ) from exc
    fix_special_tokens(tokenizer, model.config)
    return model, tokenizer


def load_gguf(path: str, dtype, device: str):
    """(model, tokenizer) of a GGUF file, dequantized by transformers' own GGUF reader."""
    model, tokenizer = _read_gguf(Path(path), dtype)
    ensure_pad_token(tokenizer)
    return model.to(device), tokenizer


def gguf_to_hf(src: Path, dest: Path) -> dict:
    """Dequantize a GGUF file into a safetensors HF folder at dest; return facts for the registry entry."""
    import torch

    model, tokenizer = _read_gguf(Path(src), torch.float32)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {
        "source": str(src),
        "source_format": "gguf",
        "architecture": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
