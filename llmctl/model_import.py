"""Bring a model into the registry: an HF folder, a PEFT adapter folder, a .gguf file or the default.

Examples:
    import_model(Registry(), "path/to/hf-dir", "my-model")
    import_model(Registry(), "model.Q4_K_M.gguf", "my-gguf")       # converted to safetensors once
    import_model(Registry(), "smollm2-135m-instruct", "smol")        # the built-in default
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.registry import ModelEntry, Registry, validate_name


def detect_format(path: Path) -> str:
    """What kind of model artifact a path holds: hf, peft-adapter, gguf, openvino, tokenizer.

    Examples:
        detect_format(Path("runs/lora"))  # "peft-adapter"
    """
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf"
        raise LlmctlError(f"{path} is not a model",
                          hint="give an HF model folder (with config.json), a PEFT adapter folder or a .gguf file")
    if not path.is_dir():
        raise LlmctlError(f"{path} does not exist", hint="check the path, or see `llmctl models list` for names")
    if (path / "llmctl-entry.json").is_file():
        return json.loads((path / "llmctl-entry.json").read_text())["format"]
    if (path / "adapter_config.json").is_file():
        return "peft-adapter"
    if (path / "openvino_model.xml").is_file():
        return "openvino"
    if (path / "config.json").is_file():
        return "hf"
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return "tokenizer"
    raise LlmctlError(f"{path} is not a model (no config.json, adapter_config.json or .gguf file in it)",
                      hint="give an HF model folder, a PEFT adapter folder or a .gguf file")


def check_weights(path: Path) -> None:
    """Fail early and clearly on truncated or garbled safetensors files in a model folder."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    for file in files:
        try:
            _check_safetensors_size(file)
            with safe_open(str(file), framework="pt") as fh:
                keys = list(fh.keys())
                if keys:
                    fh.get_slice(keys[-1])  # touches the header's offsets against the file
        except LlmctlError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise LlmctlError(f"weights file {file} is damaged ({str(exc).splitlines()[0]})",
                              hint="re-create the model, or copy the file again") from exc


def _check_safetensors_size(file: Path) -> None:
    # A safetensors file is: 8-byte little-endian header length, JSON header, then the data.
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise LlmctlError(f"weights file {file} is truncated", hint="re-create the model")
        n = int.from_bytes(head, "little")
        if n > size:
            raise LlmctlError(f"weights file {file} is truncated", hint="re-create the model")
        header = json.loads(fh.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise LlmctlError(f"weights file {file} is truncated ({size} bytes, header needs {8 + n + end})",
                          hint="re-create the model, or copy the file again")


def convert_gguf(src: Path, dest: Path) -> dict:
    """Dequantize a GGUF file into a safetensors HF folder at dest; return facts for the entry."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except Exception as exc:
        raise LlmctlError(f"cannot read GGUF file {src} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                          hint="the file may be truncated or not a GGUF model; download or copy it again") from exc
    _fix_special_tokens(tokenizer, model.config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"source": str(src), "source_format": "gguf", "architecture": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters())}


def _fix_special_tokens(tokenizer, config) -> None:
    # GGUF tokenizer conversion can name the wrong strings for bos/eos (SmolLM2 came out with
    # eos "<|im_start|>" while the model's config says id 2 "<|im_end|>"). The config's ids are
    # what generation uses, so make the tokenizer agree with them.
    for attr in ("bos", "eos", "unk", "pad"):
        token_id = getattr(config, f"{attr}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{attr}_token", tokenizer.convert_ids_to_tokens(token_id))


def import_model(registry: Registry, src: str, name: str | None = None, link: bool = False,
                 force: bool = False, command: str | None = None) -> ModelEntry:
    """Register a model from src under name; copy (or with link=True, reference) its files.

    Examples:
        import_model(Registry(), "./my-hf-model", "mine")
    """
    from llmctl.default_model import ALIASES, DEFAULT_MODEL_NAME, gguf_path

    command = command or " ".join(["llmctl", *sys.argv[1:]])
    builtin = src in ALIASES and not Path(src).exists()
    path = gguf_path() if builtin else Path(src).expanduser().resolve()
    if name is None:
        name = DEFAULT_MODEL_NAME if builtin else _derive_name(path)
    validate_name(name)
    fmt = detect_format(path)
    if registry.find(name) is not None and not force:
        raise LlmctlError(f"model {name!r} already exists in the registry",
                          hint="pick another --name or pass --force to replace it")
    meta: dict = {"source": str(path)}
    parents: list[str] = []
    if fmt == "peft-adapter":
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base and registry.find(base) is not None:
            parents = [base]
        meta["base_model"] = base
    if fmt == "gguf":
        with registry.new_model_dir(name, force=force) as tmp:
            meta.update(convert_gguf(path, tmp))
            entry = ModelEntry(name=name, format="hf", path="", command=command, meta=meta)
            return registry.add(entry, staged=tmp, force=force)
    if fmt in ("hf", "peft-adapter"):
        check_weights(path)
    if link:
        entry = ModelEntry(name=name, format=fmt, path=str(path), parents=parents, command=command,
                           meta=meta, managed=False)
        return registry.add(entry, force=force)
    with registry.new_model_dir(name, force=force) as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        entry = ModelEntry(name=name, format=fmt, path="", parents=parents, command=command, meta=meta)
        return registry.add(entry, staged=tmp, force=force)


def _derive_name(path: Path) -> str:
    import re

    stem = path.stem if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.").lower()[:128]
    return name or "model"
