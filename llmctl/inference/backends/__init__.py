"""The one table of inference backends, what each needs, and the `auto` rule that picks one.

| backend  | runs                                   | batching            | needs                                  |
|----------|----------------------------------------|---------------------|----------------------------------------|
| hf       | every registry format (transformers)   | continuous (torch)  | core install                           |
| openvino | OpenVINO IR; others converted once     | continuous (GenAI)  | `llmctl[openvino]` (openvino-genai)    |
| llamacpp | GGUF files (llama.cpp)                 | one at a time       | `llmctl[llamacpp]` (compiles)          |
| vllm     | HF folders on CUDA GPUs                | continuous (vLLM)   | `llmctl[vllm]` and a CUDA GPU          |

`auto` picks the fastest backend for the format the model is in, so it never swaps the weights for a converted
or quantized copy and never writes to the registry: vllm on a CUDA machine with vllm installed (HF folders); openvino
for an OpenVINO entry; llamacpp for a GGUF file or GGUF entry; else hf. Another representation is asked for
by name: `--backend openvino` converts an HF entry once (int8 weights) and serves the child `NAME-ov-int8`,
which `auto` then runs on openvino when given by its name; `--backend llamacpp` runs the GGUF an entry was
imported from. Why not switch silently: 8-bit weights (OpenVINO int8) and 8-bit activations (llama.cpp Q4_1)
both flip a near tie on the default model (0.09 logits), which then answers "What is the capital of France?"
with "L'Étoile, …" instead of "The capital of France is Paris.". Measured on a 2-core AVX2 CPU, default
model: llama.cpp Q4_1 60–62 tokens/s, OpenVINO GenAI int8 41–51, transformers fp32 8–10
(shared/field-notes.md, idle machine).

Examples:
    name, why = choose(resolve_model("model.Q4_K_M.gguf"))   # ("llamacpp", "the model is a GGUF file")
    backend = create(name, resolved, BackendOptions(max_batch=16))
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from llmctl.errors import LlmctlError
from llmctl.inference.backends.base import Backend, BackendOptions


@dataclass(frozen=True)
class BackendSpec:
    """One backend: where it lives, the package it needs and how to install it."""

    name: str
    summary: str
    module: str
    package: str | None  # importable module the backend needs beyond the core install
    install: str


_TABLE = (
    BackendSpec("hf", "transformers, any registry format (the reference)", "llmctl.inference.backends.hf", None, ""),
    BackendSpec(
        "openvino",
        "OpenVINO GenAI on CPU (OpenVINO IR; other models converted once)",
        "llmctl.inference.backends.openvino",
        "openvino_genai",
        "pip install 'llmctl[openvino]'",
    ),
    BackendSpec(
        "llamacpp",
        "llama.cpp on a GGUF file (llama-cpp-python)",
        "llmctl.inference.backends.llamacpp",
        "llama_cpp",
        "pip install 'llmctl[llamacpp]'",
    ),
    BackendSpec("vllm", "vLLM on CUDA GPUs", "llmctl.inference.backends.vllm", "vllm", "pip install 'llmctl[vllm]'"),
)
BACKENDS: dict[str, BackendSpec] = {b.name: b for b in _TABLE}
CHOICES = ("auto", *BACKENDS)


def installed(name: str) -> bool:
    """Whether the backend's package is importable here (without importing it)."""
    spec = BACKENDS[name]
    return spec.package is None or importlib.util.find_spec(spec.package) is not None


def _module(name: str):
    return importlib.import_module(BACKENDS[name].module)


def check_name(name: str) -> str:
    if name not in CHOICES:
        raise LlmctlError(f"unknown backend {name!r}", hint=f"use one of: {', '.join(CHOICES)}")
    return name


def choose(resolved, device: str = "auto", hf_only: str | None = None) -> tuple[str, str]:
    """(backend, why) that `auto` picks for a resolved model on this machine (see the module docstring).

    hf_only names a setting only the hf backend has (e.g. beam search); then hf is the answer.
    """
    if hf_only:
        return "hf", f"{hf_only} needs the hf backend"
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        return "hf", f"device {device} runs through transformers"
    if str(device).startswith("cuda") or (device == "auto" and _cuda()):
        if installed("vllm") and resolved.format == "hf" and _module("vllm").vllm_available() is None:
            return "vllm", "a CUDA GPU and vllm are present"
        return "hf", "a CUDA GPU is present and the other CPU backends would not use it"
    if resolved.format == "openvino" and installed("openvino"):
        return "openvino", "the model is an OpenVINO IR"
    if resolved.format == "gguf" and installed("llamacpp") and _module("llamacpp").gguf_file_of(resolved):
        return "llamacpp", "the model is a GGUF file"
    return "hf", "no faster backend fits this model here"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def create(name: str, resolved, options: BackendOptions) -> Backend:
    """Build backend `name` for a resolved model; a backend whose package is missing is a clear error.

    Examples:
        create("hf", resolve_model("tiny"), BackendOptions(max_batch=4, device="cpu"))
    """
    check_name(name)
    if name == "auto":
        raise ValueError("resolve 'auto' with choose() first")
    spec = BACKENDS[name]
    if name != "hf" and (options.rope or {}).get("scaling"):
        raise LlmctlError(
            f"RoPE scaling at load time runs on the hf backend only, not {name}", hint="use --backend hf (or auto)"
        )
    if not installed(name):
        raise LlmctlError(
            f"the {name} backend needs the {spec.package} package, which is not installed", hint=spec.install
        )
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    backend = _module(name).create(resolved, options)
    backend.info.setdefault("backend", name)
    return backend
