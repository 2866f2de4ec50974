"""The one table of model formats: what each is, how it is recognised on disk, whether it is quantized, how it loads.

Every registry entry and every `--model PATH` has a format from this table; registry, loading, import, quantize,
merge, export and serve read it, and no other list of formats exists. Each format's file layout (load, and save
for the formats llmctl writes) lives in its own module `llmctl/models/formats/<module>.py`; loaders are named here as
"module:function" and imported only when used, so reading the table costs no torch import.

Every folder llmctl publishes carries a marker, `llmctl-entry.json`: the format and the whole registry entry
(name, parents, command, profile, metrics, meta), so `llmctl models doctor` can rebuild the index from the folders.

Examples:
    get("inc-woq").quantized                     # True
    detect(Path("runs/lora"))                     # "peft-adapter"
    names(quantized=True)                         # ("inc-woq", "inc-int8", "openvino", "bnb", ...)
    model, tokenizer = get("hf").load("/m/tiny", torch.float32, "cpu")
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError, first_line
from llmctl.paths import ENTRY_MARKER as MARKER  # the one spelling; paths' --force rule reads it too


@dataclass(frozen=True)
class Format:
    """One model format: its name in the registry, what it is, and what llmctl can do with it.

    Examples:
        Format("hf", "Hugging Face folder", loader="llmctl.models.formats.hf:load", detect=_has("config.json"))
    """

    name: str
    summary: str
    kind: str = "model"  # model, adapter (loads on top of a base), tokenizer or data
    loader: str | None = None  # "module:function(path, dtype, device) -> (model, tokenizer)" for kind model
    detect: Callable[[Path], bool] | None = None  # recognises an unmarked folder or file
    quantized: bool = False  # compressed weights: not a source for quantize, prune, finetune or merge
    full_precision_source: bool = False  # a whole model that quantize/prune/finetune/merge take as input
    cpu_only: bool = False  # its kernels run on CPU only

    def load(self, path: str, dtype: Any, device: str):
        """(model, tokenizer) of the model at `path` in this format."""
        if self.kind != "model":
            raise LlmctlError(
                f"{path} is a {self.name!r} entry ({self.summary}), not a language model",
                hint=f"give a model in one of: {', '.join(names(loadable=True))}",
            )
        if self.cpu_only and device != "cpu":
            raise LlmctlError(
                f"{path} is a {self.name!r} model ({self.summary}), which runs on CPU only", hint="use --device cpu"
            )
        module, func = self.loader.split(":")
        return getattr(importlib.import_module(module), func)(path, dtype, device)


def _has(*files: str) -> Callable[[Path], bool]:
    return lambda path: path.is_dir() and any((path / f).is_file() for f in files)


def _is_gguf(path: Path) -> bool:
    """A .gguf file, or a folder holding exactly one .gguf file and no config.json (a registry or Ollama folder)."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and not (path / "config.json").is_file() and len(list(path.glob("*.gguf"))) == 1


def gguf_file(path: Path) -> Path:
    """The .gguf file of a `gguf` model: the path itself, or the one .gguf file inside its folder.

    Examples:
        gguf_file(Path("models/smol-q8"))   # Path("models/smol-q8/smol-q8.Q8_0.gguf")
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        if len(files) != 1:
            raise LlmctlError(
                f"{path} holds {len(files)} .gguf files; a GGUF model folder holds exactly one",
                hint="give the .gguf file itself",
            )
        return files[0]
    return path


def _quant_method(name: str) -> Callable[[Path], bool]:
    def detect(path: Path) -> bool:
        from llmctl.models.formats.hf import quant_method

        return quant_method(path) == name

    return detect


def _is_token_data(path: Path) -> bool:
    return path.is_dir() and (path / "index.json").is_file() and any(path.glob("*-00000.bin"))


# The table, in detection order: the first whose `detect` matches an unmarked path names its format.
_TABLE = (
    Format(
        "gguf",
        "GGUF file, or a folder with one (llama.cpp, Ollama)",
        loader="llmctl.models.formats.gguf:load",
        detect=_is_gguf,
        full_precision_source=True,
    ),
    Format(
        "peft-adapter",
        "PEFT adapter (LoRA, DoRA, QLoRA, prompt/prefix tuning) over a base model",
        kind="adapter",
        detect=_has("adapter_config.json"),
    ),
    Format(
        "openvino",
        "OpenVINO IR folder (NNCF weight compression), run by OpenVINO",
        loader="llmctl.models.formats.openvino:load",
        detect=_has("openvino_model.xml"),
        quantized=True,
        cpu_only=True,
    ),
    Format(
        "inc-woq",
        "neural-compressor weight-only folder (qconfig.json + quantized weights)",
        loader="llmctl.models.formats.inc:load",
        detect=_has("qconfig.json"),
        quantized=True,
    ),
    Format(
        "inc-int8",
        "int8 W8A8 weights (torch dynamic-quantized Linear), CPU kernels",
        loader="llmctl.models.formats.int8:load",
        detect=_has("int8_weights.safetensors"),
        quantized=True,
        cpu_only=True,
    ),
    Format(
        "compressed-tensors",
        "compressed-tensors pack-quantized folder (transformers, vLLM), decompressed at load",
        loader="llmctl.models.formats.compressed_tensors:load",
        detect=_quant_method("compressed-tensors"),
        quantized=True,
    ),
    Format(
        "gptq",
        "HF GPTQ folder (AutoGPTQ/GPTQModel layout: transformers, vLLM)",
        loader="llmctl.models.formats.gptq:load",
        detect=_quant_method("gptq"),
        quantized=True,
    ),
    Format(
        "bnb",
        "Hugging Face folder quantized by bitsandbytes when loaded",
        loader="llmctl.models.formats.bnb:load",
        quantized=True,
    ),
    Format(
        "hf",
        "Hugging Face model folder (config.json + safetensors)",
        loader="llmctl.models.formats.hf:load",
        detect=_has("config.json"),
        full_precision_source=True,
    ),
    Format(
        "tokenizer",
        "Hugging Face tokenizer folder",
        kind="tokenizer",
        detect=_has("tokenizer.json", "tokenizer_config.json"),
    ),
    Format(
        "data",
        "tokenized data dir (index.json + token shards, from `llmctl tokenize encode`)",
        kind="data",
        detect=_is_token_data,
    ),
)
FORMATS: dict[str, Format] = {f.name: f for f in _TABLE}


def names(*, quantized: bool | None = None, loadable: bool | None = None) -> tuple[str, ...]:
    """Format names, optionally only the (non-)quantized ones or those that do (not) load as a language model.

    Examples:
        names(quantized=True)   # ("openvino", "inc-woq", "inc-int8", "bnb")
    """
    return tuple(
        f.name
        for f in _TABLE
        if (quantized is None or f.quantized == quantized)
        and (loadable is None or (f.kind in ("model", "adapter")) == loadable)
    )


def get(name: str) -> Format:
    """The format called `name`; an unknown name is an error listing the known ones."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise LlmctlError(f"unknown model format {name!r}", hint=f"known formats: {', '.join(FORMATS)}")
    return fmt


# ---- the entry marker ----------------------------------------------------------------------------------------


def read_marker(folder: Path) -> dict | None:
    """The folder's `llmctl-entry.json` as a dict (None when absent); a damaged one is an error naming it."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlmctlError(
            f"entry marker {path} is damaged ({first_line(exc)})",
            hint="run `llmctl models doctor --fix`, or re-create the model",
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("format"), str):
        raise LlmctlError(
            f'entry marker {path} has no "format"', hint="run `llmctl models doctor --fix`, or re-create the model"
        )
    return data


def write_marker(folder: Path, fmt: str, entry: dict | None = None, **facts) -> Path:
    """Write `llmctl-entry.json` (format, format facts and the registry entry) atomically into folder.

    Examples:
        write_marker(tmp, "bnb", entry.to_json(), bnb_config={"load_in_4bit": True})
    """
    get(fmt)
    path = Path(folder) / MARKER
    data = {"format": fmt, **facts}
    if entry is not None:
        data["entry"] = entry
    fd, tmp = tempfile.mkstemp(prefix=f".{MARKER}.tmp-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.replace(tmp, path)
    return path


# ---- detection and loading ------------------------------------------------------------------------------------


def detect(path: Path) -> str:
    """The format of a folder or file on disk: its marker's, else the first table entry that recognises it.

    Examples:
        detect(Path("my-model"))    # "hf"
    """
    path = Path(path)
    if not path.exists():
        raise LlmctlError(f"{path} does not exist", hint="check the path, or see `llmctl models list` for names")
    if path.is_dir():
        marker = read_marker(path)
        if marker is not None:
            return get(marker["format"]).name
    for fmt in _TABLE:
        if fmt.detect is not None and fmt.detect(path):
            return fmt.name
    if path.is_file():
        raise LlmctlError(
            f"{path} is not a model",
            hint="give an HF model folder (with config.json), a PEFT adapter folder or a .gguf file",
        )
    raise LlmctlError(
        f"{path} is not a model (no config.json, adapter_config.json or .gguf file in it)",
        hint="give an HF model folder, a PEFT adapter folder or a .gguf file",
    )
