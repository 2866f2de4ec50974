"""Independent readers of exported models, for the parity check: code other than the writer reads the files.

GGUF: transformers' GGUF loader (llmctl/models/formats/gguf.py closes its known gaps from the file's keys) and, when
installed, llama-cpp-python; a GGUF LoRA adapter: its tensors read by gguf-py and added to the base as llama.cpp
adds them; compressed-tensors: transformers' compressed-tensors loader; GPTQ: transformers with gptqmodel, else
neural-compressor's HF loader; OpenVINO: the OpenVINO runtime (optimum-intel); hf: transformers.

Each reader returns (model, tokenizer, reader name); the model answers `generate(...)` and `(input_ids=...).logits`.

Examples:
    model, tok, name = gguf(Path("smol.Q8_0.gguf"), job)     # name == "transformers GGUF loader"
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from llmctl.errors import LlmctlError, first_line


def gguf(path: Path, job):
    from llmctl.models.formats.gguf import read

    if job.config["lora_gguf"]:
        return lora_gguf(path, job)
    model, tokenizer = read(Path(path))
    return model, tokenizer, "transformers GGUF loader"


def ollama(path: Path, job):
    from llmctl.export.ollama import GGUF_NAME

    return gguf(Path(path) / GGUF_NAME, job)


def hf(path: Path, job):
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.models.formats.hf import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=False)
    return model.eval(), load_tokenizer(str(path)), "transformers"


def compressed_tensors(path: Path, job):
    from llmctl.models.formats.compressed_tensors import read_transformers
    from llmctl.models.formats.hf import load_tokenizer

    return read_transformers(str(path)).eval(), load_tokenizer(str(path)), "transformers compressed-tensors loader"


def gptq(path: Path, job):
    import torch

    from llmctl.models.formats import gptq as layout
    from llmctl.models.formats.hf import load_tokenizer

    name = "transformers GPTQ loader" if layout._gptq_kernels() else "neural-compressor HF GPTQ loader"
    model = layout.read(str(path), torch.float32)
    return model.eval(), load_tokenizer(str(path)), name


def openvino(path: Path, job):
    from llmctl.models.formats.openvino import load

    model, tokenizer = load(str(path), None, "cpu")
    return model, tokenizer, "OpenVINO runtime"


def lora_gguf(path: Path, job):
    """The base model with the GGUF adapter's deltas added as llama.cpp adds them: W + (alpha/r)·B·A."""
    import gguf as ggufpy
    import torch

    from llmctl.export.gguf_writer import _ARCH_ENUM, _architecture
    from llmctl.models.formats.gguf import gguf_metadata

    base = job.base()
    model = base.model
    arch = _architecture(model.config)
    alpha = float(gguf_metadata(path)["adapter.lora.alpha"])
    name_map = ggufpy.get_tensor_name_map(_ARCH_ENUM[arch](), model.config.num_hidden_layers)
    hf_names = {name_map.get_name(k, try_suffixes=(".weight", ".bias")): k for k in model.state_dict()}
    tensors = {
        t.name: torch.from_numpy(ggufpy.quants.dequantize(t.data, t.tensor_type).copy())
        for t in ggufpy.GGUFReader(str(path)).tensors
    }
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in [n[: -len(".lora_a")] for n in tensors if n.endswith(".lora_a")]:
            a, b = tensors[f"{name}.lora_a"].float(), tensors[f"{name}.lora_b"].float()
            hf_name = hf_names.get(name)
            if hf_name is None:
                raise LlmctlError(
                    f"GGUF adapter tensor {name} names no weight of the base model",
                    hint="the adapter file does not fit its base",
                )
            delta = (alpha / a.shape[0]) * (b @ a)
            if arch == "llama":
                delta = _unpermute(hf_name, delta, model.config)
            if arch == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
                delta = delta.T
            params[hf_name].add_(delta.reshape(params[hf_name].shape))
    return model, base.tokenizer, "gguf-py (LoRA tensors applied as llama.cpp does)"


def _unpermute(hf_name: str, data, config):
    """Undo llama.cpp's rotary row order for q/k (the inverse of gguf_writer._permute)."""
    heads = config.num_attention_heads
    if hf_name.endswith("k_proj.weight"):
        heads = getattr(config, "num_key_value_heads", None) or heads
    elif not hf_name.endswith("q_proj.weight"):
        return data
    return data.reshape(heads, data.shape[0] // heads // 2, 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def llama_cpp(path: Path, n_ctx: int, positions: int):
    """llama-cpp-python on a GGUF file as (model, tokenizer) the parity check can drive; None when not installed.

    n_ctx is llama.cpp's context (a window plus a continuation); positions the model's learned length, which the
    check's windows must not pass: llama.cpp aborts the process (GGML_ASSERT in get_rows) on a position beyond a
    learned position table such as GPT-2's.
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False)
    except Exception as exc:  # llama.cpp reports load failures as ValueError/RuntimeError with its own text
        raise LlmctlError(
            f"llama.cpp cannot load {path} ({first_line(exc)})",
            hint="the file does not run in llama.cpp; report it with the file's architecture",
        ) from exc
    return _LlamaCpp(llm, min(n_ctx, positions)), _LlamaCppTokenizer(llm)


class _LlamaCppTokenizer:
    """llama.cpp's own tokenizer behind the one call the check makes (text → ids, no special tokens)."""

    def __init__(self, llm):
        self.llm = llm

    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens))}


class _LlamaCpp:
    """A llama.cpp model behind the two calls the parity check makes: logits of a sequence, greedy tokens."""

    def __init__(self, llm, n_ctx: int):
        self.llm = llm
        self.config = SimpleNamespace(max_position_embeddings=n_ctx)

    def _scores(self, ids: list[int]):
        import torch

        limit = self.config.max_position_embeddings
        if len(ids) > limit:  # never reaches llama.cpp: it would abort the whole process
            raise LlmctlError(
                f"the check's sequence of {len(ids)} tokens is longer than the model's {limit} positions",
                hint="lower --set check.seqlen or check.max_new_tokens",
            )
        self.llm.reset()
        self.llm.eval(ids)
        return torch.tensor(self.llm.scores[: len(ids)])

    def __call__(self, input_ids, attention_mask=None):
        import torch

        return SimpleNamespace(logits=torch.stack([self._scores(row.tolist()) for row in input_ids]))

    def generate(self, input_ids, attention_mask=None, generation_config=None):
        import torch

        ids = input_ids[0].tolist()
        eos = generation_config.eos_token_id
        for _ in range(generation_config.max_new_tokens):
            scores = self._scores(ids)[-1]
            if eos is not None:  # held back as min_new_tokens does on the transformers side
                scores[torch.tensor(eos if isinstance(eos, list) else [eos])] = -float("inf")
            ids.append(int(scores.argmax()))
        return torch.tensor([ids])
