"""The `openvino` backend: OpenVINO GenAI on CPU, on OpenVINO IR entries or on a cached conversion of any model.

One stream (`max_batch` 1) runs `LLMPipeline`; several run `ContinuousBatchingPipeline` (paged KV cache,
continuous batching, `step()`-driven like llmctl's engine). Both are fed token ids (`TokenizedInputs` /
`ov.Tensor`) and return token ids: tokenization, chat template and detokenization stay with the model's HF
tokenizer in Python. That is why no `openvino_tokenizer.xml`/`openvino_detokenizer.xml` is needed (converting
the default model's GGUF-derived detokenizer with openvino_tokenizers fails: "index '2' out of range").

A model that is not an OpenVINO IR (hf, gguf, an adapter, merged) is converted once with llmctl's OpenVINO
export (optimum-intel + NNCF int8 weights by default) and registered as `<name>-ov-int8` with the source as
parent; later runs, and `auto`, reuse it while the source entry is unchanged. `openvino_bits` 32 exports the
weights unchanged (fp32 IR, `<name>-ov-fp32`) and runs it with fp32 inference and an fp32 KV cache: the
OpenVINO CPU plugin would otherwise pick bf16 inference where the CPU has bf16 units and a u8 KV cache
(2026.4 defaults), which changes answers. That IR is what `auto` runs for full-precision HF entries on CPU.

Examples:
    backend = create(resolve_model("tiny"), BackendOptions(max_batch=4))   # converts tiny once
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.inference.backends.base import Backend, BackendOptions, HfCodec, Sequence, ThreadedOneAtATime, TokenOut
from llmctl.inference.sampling import SamplingParams
from llmctl.models import formats


def require_genai() -> None:
    try:
        import openvino_genai  # noqa: F401
    except ImportError as exc:
        raise LlmctlError(
            "the openvino backend needs openvino-genai, which is not installed",
            hint="pip install 'llmctl[openvino]' (openvino-genai==2026.4.1.0)",
        ) from exc


FULL = 32  # openvino_bits meaning "no weight compression": an fp32 IR with the source's weights

# CPU plugin settings that keep an fp32 IR computing in fp32 (its 2026.4 defaults on a CPU with bf16 units:
# bf16 inference, u8 KV cache, int8 dynamic quantization of activations in groups of 32)
FP32_PROPERTIES = {
    "INFERENCE_PRECISION_HINT": "f32",
    "KV_CACHE_PRECISION": "f32",
    "KEY_CACHE_PRECISION": "f32",
    "VALUE_CACHE_PRECISION": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
}


def child_name(name: str, bits: int) -> str:
    """The registry name of the OpenVINO conversion of entry `name` (`NAME-ov-int8`, `NAME-ov-fp32`)."""
    return f"{name}-ov-fp32" if bits == FULL else f"{name}-ov-int{bits}"


def cached_conversion(resolved, bits: int = 8):
    """The registry entry of a still valid OpenVINO conversion of resolved (None when there is none)."""
    from llmctl.models.registry import Registry

    if resolved.entry is None:
        return None
    entry = Registry().find(child_name(resolved.name, bits))
    if (
        entry is None
        or entry.format != "openvino"
        or entry.meta.get("converted_from") != resolved.name
        or entry.meta.get("source_created") != resolved.entry.created
        or entry.meta.get("bits", bits) != bits
        or not Path(entry.path).is_dir()
    ):
        return None
    return entry


def ir_folder(resolved, options: BackendOptions) -> str:
    """The OpenVINO IR folder to run: the entry itself, or its conversion (made once, then reused)."""
    if resolved.format == "openvino":
        return resolved.path
    bits = options.openvino_bits
    entry = None if options.force_convert else cached_conversion(resolved, bits)
    return entry.path if entry is not None else convert(resolved, bits, options.say).path


def convert(resolved, bits: int, say=None):
    """Export a registry model to OpenVINO IR (NNCF int8/int4 weights, or fp32 as is) and register it as its child."""
    from llmctl.models.loading import load_model
    from llmctl.models.registry import ModelEntry, Registry
    from llmctl.quantize.openvino import openvino_compress, openvino_export_fp32

    fmt = formats.get(resolved.format)
    if resolved.entry is None:
        raise LlmctlError(
            f"--backend openvino converts registry models once and keeps the result; {resolved.path} is a path",
            hint=f"import it first: llmctl models import {resolved.path} --name NAME",
        )
    if fmt.quantized:
        raise LlmctlError(
            f"{resolved.name} is already quantized ({resolved.format}); OpenVINO would convert its dequantized weights",
            hint="serve its full-precision parent with --backend openvino, or use --backend hf",
        )
    registry, name = Registry(), child_name(resolved.name, bits)
    old = registry.find(name)
    if old is not None and old.meta.get("converted_from") != resolved.name:
        raise LlmctlError(
            f"model {name!r} exists and is not the OpenVINO conversion of {resolved.name}",
            hint=f"rename or remove it (`llmctl models remove {name}`)",
        )
    reservation = registry.reserve(name, force=old is not None)  # a stale conversion of ours is replaced
    what = "fp32 weights, unchanged" if bits == FULL else f"{bits}-bit weights"
    (say or (lambda _m: None))(f"converting {resolved.name} to OpenVINO IR ({what}) once → {name}")
    loaded = load_model(resolved, dtype="float32", device="cpu")
    model = loaded.model.merge_and_unload() if hasattr(loaded.model, "merge_and_unload") else loaded.model
    cfg = {
        "bits": bits,
        "sym": True,
        "group_size": -1 if bits == 8 else 128,
        "openvino": {"ratio": 1.0, "awq": False, "scale_estimation": False},
    }
    with reservation.staging() as tmp:
        src = tmp.parent / f"{tmp.name}-src"
        try:
            model.save_pretrained(src, safe_serialization=True)
            loaded.tokenizer.save_pretrained(src)
            if bits == FULL:
                openvino_export_fp32(str(src), tmp)
            else:
                openvino_compress(str(src), tmp, cfg, None)
        finally:
            import shutil

            shutil.rmtree(src, ignore_errors=True)
        loaded.tokenizer.save_pretrained(tmp)
        meta = {
            "converted_from": resolved.name,
            "source_created": resolved.entry.created,
            "backend": "openvino",
            "algo": "none (fp32 weights)" if bits == FULL else "weight-compression",
            "bits": bits,
            "purpose": "OpenVINO GenAI serving (llmctl serve/generate --backend openvino)",
        }
        if bits != FULL:
            meta.update(group_size=cfg["group_size"], sym=True)
        entry = ModelEntry(
            name=name,
            format="openvino",
            path="",
            parents=[resolved.name],
            command=" ".join(["llmctl", *sys.argv[1:]]) + " (automatic OpenVINO conversion)",
            meta=meta,
        )
        return reservation.publish(entry, tmp)


def _codec_and_context(folder: str, options: BackendOptions) -> tuple[HfCodec, int]:
    from transformers import AutoConfig, GenerationConfig

    from llmctl.inference.backends.hf import model_context
    from llmctl.models.formats.hf import load_tokenizer

    gen = GenerationConfig.from_pretrained(folder) if (Path(folder) / "generation_config.json").is_file() else None
    codec = HfCodec(load_tokenizer(folder), gen)
    return codec, options.max_model_len or model_context(AutoConfig.from_pretrained(folder))


def generation_config(params: SamplingParams, eos_ids: frozenset):
    """An openvino_genai.GenerationConfig with the request's settings (eos handled by GenAI and the engine)."""
    import openvino_genai as ov_genai

    gc = ov_genai.GenerationConfig()
    gc.max_new_tokens = params.max_tokens
    if eos_ids:
        gc.eos_token_id = min(eos_ids)
        gc.stop_token_ids = set(eos_ids)
    gc.do_sample = not params.greedy
    if not params.greedy:
        gc.temperature, gc.top_p = params.temperature, params.top_p
        if params.top_k:
            gc.top_k = params.top_k
        gc.rng_seed = params.seed or 0
    gc.presence_penalty, gc.frequency_penalty = params.presence_penalty, params.frequency_penalty
    gc.repetition_penalty = params.repetition_penalty
    return gc


def full_precision(resolved, options: BackendOptions) -> bool:
    """Whether the IR run for resolved holds uncompressed weights (then it runs with FP32_PROPERTIES)."""
    if resolved.format != "openvino":
        return options.openvino_bits == FULL
    return resolved.entry is not None and resolved.entry.meta.get("bits") == FULL


def _properties(options: BackendOptions, fp32: bool = False) -> dict:
    props = dict(FP32_PROPERTIES) if fp32 else {}
    if options.threads:
        props["INFERENCE_NUM_THREADS"] = options.threads
    return props


def create(resolved, options: BackendOptions) -> Backend:
    """The openvino backend for a resolved model (converted once when it is not an OpenVINO IR)."""
    require_genai()
    if options.device not in ("auto", "cpu"):
        raise LlmctlError(f"the openvino backend runs on CPU here, not {options.device!r}", hint="use --device cpu")
    folder, fp32 = ir_folder(resolved, options), full_precision(resolved, options)
    kind = OpenVinoBatching if options.max_batch > 1 else OpenVinoOneStream
    backend = kind(folder, options, fp32)
    backend.info.update({"device": "cpu", "ir": folder, "pipeline": kind.pipeline})
    if fp32:
        backend.info["precision"] = "fp32 (the source's weights)"
    return backend


class OpenVinoBatching(Backend):
    """ContinuousBatchingPipeline: sequences join and leave between `step()`s."""

    name = "openvino"
    pipeline = "ContinuousBatchingPipeline"

    def __init__(self, folder: str, options: BackendOptions, fp32: bool = False):
        import openvino_genai as ov_genai

        super().__init__()
        self.codec, self.max_model_len = _codec_and_context(folder, options)
        self.max_batch = options.max_batch
        scheduler = ov_genai.SchedulerConfig()
        scheduler.max_num_seqs = options.max_batch  # cache_size 0: GenAI grows the paged KV cache as needed
        self.pipe = ov_genai.ContinuousBatchingPipeline(folder, scheduler, "CPU", _properties(options, fp32))
        self._handles: dict = {}

    def add(self, seq: Sequence) -> None:
        import numpy as np
        import openvino as ov

        ids = ov.Tensor(np.array([seq.prompt_ids], dtype=np.int64))
        self._handles[seq.id] = self.pipe.add_request(seq.id, ids, generation_config(seq.params, self.codec.eos_ids))

    def step(self) -> list[TokenOut]:
        import openvino_genai as ov_genai

        if not self._handles:
            return []
        self.pipe.step()
        outs = []
        reasons = {ov_genai.GenerationFinishReason.STOP: "stop", ov_genai.GenerationFinishReason.LENGTH: "length"}
        for seq_id, handle in list(self._handles.items()):
            if handle.can_read():
                for result in handle.read().values():
                    outs.extend(TokenOut(seq_id, int(t)) for t in result.generated_ids)
                    if result.finish_reason in reasons:
                        outs.append(TokenOut(seq_id, None, finished=reasons[result.finish_reason]))
            if handle.get_status() != ov_genai.GenerationStatus.RUNNING:
                self._handles.pop(seq_id, None)
        return outs

    def abort(self, seq_id: int) -> None:
        handle = self._handles.pop(seq_id, None)
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        for seq_id in list(self._handles):
            self.abort(seq_id)


class OpenVinoOneStream(ThreadedOneAtATime):
    """LLMPipeline, one sequence at a time, tokens through a StreamerBase."""

    name = "openvino"
    pipeline = "LLMPipeline"

    def __init__(self, folder: str, options: BackendOptions, fp32: bool = False):
        import openvino_genai as ov_genai

        super().__init__()
        self.codec, self.max_model_len = _codec_and_context(folder, options)
        self.pipe = ov_genai.LLMPipeline(folder, "CPU", **_properties(options, fp32))

    def run(self, seq: Sequence, on_token) -> str | None:
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        class Tokens(ov_genai.StreamerBase):
            def write(self, token):
                tokens = token if isinstance(token, (list, tuple)) else [token]
                alive = all(on_token(int(t)) for t in tokens)
                return ov_genai.StreamingStatus.RUNNING if alive else ov_genai.StreamingStatus.CANCEL

            def end(self):
                pass

        ids = np.array([seq.prompt_ids], dtype=np.int64)
        inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        self.pipe.generate(inputs, generation_config(seq.params, self.codec.eos_ids), Tokens())
        return None
