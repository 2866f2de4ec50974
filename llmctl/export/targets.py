"""The one table of export targets: what `llmctl export --format F` writes, from what, read back by what.

Each target names its writer and its parity reader as "module:function" (imported only when used, so the table
costs no torch import and the `export` schema can take its choices from it), the registry formats it exports
from, the registry format `--name` gives the result, and whether the output is one file or a folder. GGUF's
output types live here too (with their file size per weight), as do the default perplexity gates.

Examples:
    get("gguf").sources                 # ("hf", "gguf", "peft-adapter", "inc-woq", "compressed-tensors", "gptq")
    valid_type("hf", "bf16")            # True
    default_max_ppl_increase("gguf", "q8_0", None)   # 0.01
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.config.dtypes import EXPORT_FLOAT_TYPES
from llmctl.errors import LlmctlError

# The one list of GGUF output types, with their file size in bytes per weight (ggml block size and bytes:
# q8_0 34 B per 32 weights, q5_0 22, q4_1 20, q4_0 18) for the free-disk check.
GGUF_BYTES_PER_WEIGHT = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
}
GGUF_TYPES = tuple(GGUF_BYTES_PER_WEIGHT)
FLOAT_TYPES = tuple(EXPORT_FLOAT_TYPES)  # `--format hf --type`: the safetensors dtype (llmctl.config.dtypes)
OPENVINO_BITS = (4, 8)

# Registry formats a float export takes: adapters are merged on the fly, quantized weight-only entries
# dequantized to float32 (AWQ/TEQ scales are already folded into their weights) before the writer quantizes.
FLOAT_SOURCES = ("hf", "gguf", "peft-adapter", "inc-woq", "compressed-tensors", "gptq")
# Registry formats holding integer codes, scales and zero points that other layouts take without re-quantizing.
QUANTIZED_SOURCES = ("inc-woq", "compressed-tensors", "gptq")

# Default `--max-ppl-increase` (relative perplexity increase on the check text) by output type: float types allow
# numerical noise only, q8_0 the 1 %, and the 4-bit types what their grid costs a small model, with
# headroom; a broken export (a wrong tensor layout, a wrong vocabulary) raises perplexity many times over.
# Measured on the default model (SmolLM2-135M; its weights come from a Q4_1 file, so other 4-bit grids round them
# twice) with llmctl's check text, perplexity 13.63: f32 0.0 %, f16 -0.02 %, bf16 +0.03 %, q8_0 -1.0 %,
# q5_0 +16.8 %, q4_1 0.0 % (its own grid: the shipped file byte for byte), q4_0 +55.9 %, OpenVINO int8 +1.2 %,
# int4 (g128) +61.3 %; compressed-tensors and GPTQ repacks 0.0 %.
_GATES = {
    "f32": 0.001,
    "f16": 0.002,
    "bf16": 0.01,
    "q8_0": 0.01,
    "q5_0": 0.35,
    "q4_1": 0.75,
    "q4_0": 0.75,
    "int8": 0.03,
    "int4": 0.75,
    "repack": 0.001,
}


@dataclass(frozen=True)
class Target:
    """One export target.

    Examples:
        Target("hf", "safetensors folder", writer="llmctl.export.writers:hf", reader="llmctl.export.readers:hf",
               sources=FLOAT_SOURCES, registry_format="hf", output="folder", types=FLOAT_TYPES, default_type="f32")
    """

    name: str
    summary: str
    writer: str  # "module:function(job) -> facts"
    reader: str  # "module:function(path, job) -> (model, tokenizer)": an independent reader for the parity check
    sources: tuple[str, ...]
    registry_format: str
    output: str  # "file" or "folder"
    types: tuple[str, ...] = ()
    default_type: str | None = None
    bits: tuple[int, ...] = ()
    default_bits: int | None = None


_TABLE = (
    Target(
        "gguf",
        "GGUF file for llama.cpp (and Ollama, LM Studio)",
        "llmctl.export.writers:gguf",
        "llmctl.export.readers:gguf",
        FLOAT_SOURCES,
        "gguf",
        "file",
        GGUF_TYPES,
        "q8_0",
    ),
    Target(
        "ollama",
        "Ollama folder: model.gguf + Modelfile (TEMPLATE, stops, num_ctx)",
        "llmctl.export.writers:ollama",
        "llmctl.export.readers:ollama",
        FLOAT_SOURCES,
        "gguf",
        "folder",
        GGUF_TYPES,
        "q8_0",
    ),
    Target(
        "compressed-tensors",
        "compressed-tensors pack-quantized folder (vLLM, transformers)",
        "llmctl.export.writers:compressed_tensors",
        "llmctl.export.readers:compressed_tensors",
        QUANTIZED_SOURCES,
        "compressed-tensors",
        "folder",
    ),
    Target(
        "gptq",
        "HF GPTQ folder (AutoGPTQ/GPTQModel layout: vLLM, transformers with gptqmodel)",
        "llmctl.export.writers:gptq",
        "llmctl.export.readers:gptq",
        QUANTIZED_SOURCES,
        "gptq",
        "folder",
    ),
    Target(
        "openvino",
        "OpenVINO IR folder with NNCF int4/int8 weights (OpenVINO, optimum-intel)",
        "llmctl.export.writers:openvino",
        "llmctl.export.readers:openvino",
        FLOAT_SOURCES,
        "openvino",
        "folder",
        bits=OPENVINO_BITS,
        default_bits=8,
    ),
    Target(
        "hf",
        "plain safetensors folder (adapters merged, quantized weights dequantized)",
        "llmctl.export.writers:hf",
        "llmctl.export.readers:hf",
        FLOAT_SOURCES,
        "hf",
        "folder",
        FLOAT_TYPES,
        "f32",
    ),
)
TARGETS: dict[str, Target] = {t.name: t for t in _TABLE}


def get(name: str) -> Target:
    """The target called `name`; an unknown one is an error listing the known ones."""
    target = TARGETS.get(name)
    if target is None:
        raise LlmctlError(f"unknown export format {name!r}", hint=f"use one of: {', '.join(TARGETS)}")
    return target


def valid_type(fmt: str, qtype: str | None) -> bool:
    """Whether --type fits --format (null always does: the target's default)."""
    target = TARGETS.get(fmt)
    return qtype is None or (target is not None and qtype in target.types)


def valid_bits(fmt: str, bits: int | None) -> bool:
    """Whether --bits fits --format (null always does)."""
    target = TARGETS.get(fmt)
    return bits is None or (target is not None and bits in target.bits)


def types_table() -> str:
    """Which --type and --bits each format takes, for messages."""
    parts = []
    for t in _TABLE:
        takes = (f"--type {'|'.join(t.types)}" if t.types else "") + (
            f"--bits {'|'.join(map(str, t.bits))}" if t.bits else ""
        )
        parts.append(f"{t.name}: {takes or 'neither'}")
    return "; ".join(parts)


def gates_text() -> str:
    """The default gates in words, for the schema's help."""
    return ", ".join(f"{'compressed-tensors/gptq' if k == 'repack' else k} {v:g}" for k, v in _GATES.items())


def default_max_ppl_increase(fmt: str, qtype: str | None, bits: int | None) -> float:
    """The perplexity gate when --max-ppl-increase is not given (see _GATES)."""
    if fmt in ("compressed-tensors", "gptq"):
        return _GATES["repack"]
    if fmt == "openvino":
        return _GATES["int4" if bits == 4 else "int8"]
    return _GATES[qtype or get(fmt).default_type]
