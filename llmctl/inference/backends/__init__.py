"""The one table of inference backends, what each needs, and the `auto` rule that picks one.

| backend  | runs                                   | batching            | needs                                  |
|----------|----------------------------------------|---------------------|----------------------------------------|
| hf       | every registry format (transformers)   | continuous (torch)  | core install                           |
| openvino | OpenVINO IR; others converted once     | continuous (GenAI)  | `llmctl[openvino]` (openvino-genai)    |
| llamacpp | GGUF files (llama.cpp)                 | one at a time       | `llmctl[llamacpp]` (compiles)          |
| vllm     | HF folders on CUDA GPUs                | continuous (vLLM)   | `llmctl[vllm]` and a CUDA GPU          |

`auto` picks the fastest backend that runs the model's own weights, so it never swaps them for a quantized
copy: vllm on a CUDA machine with vllm installed (HF folders); openvino for an OpenVINO entry; llamacpp for a
GGUF file or GGUF entry; openvino on the entry's fp32 IR for a full-precision registry entry (hf, or gguf
without llama.cpp) on CPU — see below; else hf. Quantized copies are asked for by name: `--backend openvino`
converts an HF entry once (int8 weights) and serves the child `NAME-ov-int8`, which `auto` then runs on
openvino when given by its name; `--backend llamacpp` runs the GGUF an entry was imported from. Why not
switch to those silently: 8-bit weights (OpenVINO int8) and 8-bit activations (llama.cpp Q4_1) both flip a
near tie on the default model (0.09 logits), which then answers "What is the capital of France?" with
"L'Étoile, …" instead of "The capital of France is Paris.". Measured on a 2-core AVX2 CPU, default model:
llama.cpp Q4_1 60–62 tokens/s, OpenVINO GenAI int8 41–51, transformers fp32 8–10 (shared/field-notes.md,
idle machine).

The fp32 IR (`NAME-ov-fp32`, a registry child made once by optimum-intel's export with the weights as they are,
run with fp32 inference and an fp32 KV cache) answers like transformers fp32 at about 2.5x its speed
(benchmarks/generate.py: 20/20 greedy texts equal). Making it costs ~20 s on 2 idle cores and a second copy of
the weights, more than a short command saves, so `auto` uses it when it is already cached and still valid (the
source entry unchanged), and makes it only for a `generate` whose work is at least AUTO_CONVERT_TOKENS new
tokens (prompts × answers × --max-new-tokens). The conversion says so on stderr once. `serve --backend auto`
keeps hf for such entries: its clients ask for what only hf answers (lm-eval's log-probs through `echo`,
`logit_bias`, JSON-schema output) and a server cannot switch backends per request; `serve --backend openvino
--openvino-bits 32` serves the IR on purpose (those requests then get a 400 naming `--backend hf`). The hf
backend also stays the default for what only it does in `generate` (beam search, --adapter, an explicit --dtype,
RoPE scaling), and `--backend hf` always runs transformers.

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


# New tokens a `generate` must ask for at most before `auto` converts an entry to its fp32 OpenVINO IR. The
# conversion (C s) buys 1/hf − 1/ov s per token. Default model, 2-core AMD EPYC, 2026-12-04
# (benchmarks/generate.py): idle C = 18.6 s, hf 13.7 tok/s, IR 33.7 → break-even ~430 tokens, plus ~6 s to build
# the pipeline on every run; loaded C = 187 s, hf ~1.2, IR ~6 → ~300. 2,048 keeps one-shot commands (the demo's,
# the tests') from paying a conversion they would not earn back, while a batch run earns it in its first run.
AUTO_CONVERT_TOKENS = 2048


def choose(
    resolved, device: str = "auto", hf_only: str | None = None, work_tokens: int = 0, fp32_ir: bool = True
) -> tuple[str, str]:
    """(backend, why) that `auto` picks for a resolved model on this machine (see the module docstring).

    hf_only names a setting only the hf backend has (e.g. beam search); then hf is the answer. work_tokens: the
    new tokens the command asks for at most, which decides whether an fp32 IR is made. fp32_ir=False (serve)
    never picks the fp32 IR: a server's clients ask for what only hf answers (log-probs, echo, logit_bias,
    structured output), and one server cannot switch backends per request.
    When this returns openvino for a model that is not an OpenVINO IR, run it with `openvino_bits` 32
    (`auto_options`).
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
    if fp32_ir and _fp32_ir_fits(resolved) and installed("openvino"):
        ov = _module("openvino")
        child = ov.child_name(resolved.name, ov.FULL)
        if ov.cached_conversion(resolved, ov.FULL) is not None:
            return "openvino", f"its fp32 OpenVINO IR {child} is cached (same weights; --backend hf: transformers)"
        if work_tokens >= AUTO_CONVERT_TOKENS:
            return "openvino", (
                f"up to {work_tokens} new tokens: worth its fp32 OpenVINO IR {child}, made once (same weights)"
            )
        return "hf", f"a short run (under {AUTO_CONVERT_TOKENS} new tokens): {child} is not made for it"
    return "hf", "no faster backend fits this model here"


def _fp32_ir_fits(resolved) -> bool:
    """Whether resolved is a registry entry whose own weights an fp32 OpenVINO IR can hold (hf or gguf)."""
    from llmctl.models import formats

    if resolved.entry is None or resolved.format not in formats.names():
        return False
    fmt = formats.get(resolved.format)
    return fmt.kind == "model" and fmt.full_precision_source and not fmt.quantized


def auto_options(name: str, resolved, options: BackendOptions) -> BackendOptions:
    """The options for the backend `auto` chose: openvino on a non-OpenVINO entry means its fp32 IR."""
    import dataclasses

    if name == "openvino" and resolved.format != "openvino":
        return dataclasses.replace(options, openvino_bits=_module("openvino").FULL)
    return options


def _cuda() -> bool:
    """Whether `auto` runs on a CUDA GPU here (the one device rule: llmctl.models.loading.pick_device)."""
    from llmctl.models.loading import pick_device

    return pick_device("auto").startswith("cuda")


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
