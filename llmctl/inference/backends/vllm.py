"""The `vllm` backend: vLLM's engine on CUDA GPUs (continuous batching, paged attention, tensor parallelism).

Written against vLLM's documented engine API (`EngineArgs`, `LLMEngine.from_engine_args`, `add_request` with a
`{"prompt_token_ids": ...}` prompt, `step()`, `abort_request`); chosen only where CUDA and vllm are present.
It serves HF folders (and compressed-tensors/GPTQ checkpoints vLLM reads itself); `--tensor-parallel-size`
splits a model over GPUs. Token ids in, token ids out: text and stop sequences stay with llmctl's engine.

Examples:
    backend = create(resolve_model("smol-alpaca"), BackendOptions(tensor_parallel_size=2))
"""

from __future__ import annotations

from llmctl.errors import LlmctlError
from llmctl.inference.backends.base import Backend, BackendOptions, HfCodec, Sequence, TokenOut


def vllm_available() -> str | None:
    """Why vllm cannot run here (None when it can): it needs the package and a CUDA GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'llmctl[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is available"
    return None


def create(resolved, options: BackendOptions) -> Backend:
    """The vllm backend for an HF-folder registry model."""
    reason = vllm_available()
    if reason:
        raise LlmctlError(f"the vllm backend cannot run: {reason}", hint="use --backend hf, openvino or llamacpp")
    if resolved.format not in ("hf",):
        raise LlmctlError(
            f"vLLM serves HF model folders; {resolved.label} is {resolved.format!r}",
            hint="merge adapters first (`llmctl merge-lora`), or use --backend hf",
        )
    return VllmBackend(resolved.path, options)


class VllmBackend(Backend):
    """vLLM's LLMEngine stepped by llmctl's engine thread."""

    name = "vllm"
    logprobs = True

    def __init__(self, path: str, options: BackendOptions):
        from transformers import GenerationConfig
        from vllm import EngineArgs, LLMEngine

        from llmctl.models.formats.hf import load_tokenizer

        super().__init__()
        args = EngineArgs(
            model=path,
            tokenizer=path,
            trust_remote_code=False,
            seed=0,
            tensor_parallel_size=options.tensor_parallel_size,
            max_model_len=options.max_model_len,
            max_num_seqs=options.max_batch,
            dtype=options.dtype if options.dtype != "auto" else "auto",
        )
        self.engine = LLMEngine.from_engine_args(args)
        try:
            gen = GenerationConfig.from_pretrained(path)
        except OSError:
            gen = None
        self.codec = HfCodec(load_tokenizer(path), gen)
        self.max_model_len = self.engine.model_config.max_model_len
        self.max_batch = options.max_batch
        self.info.update({"device": "cuda", "tensor_parallel_size": options.tensor_parallel_size})
        self._seen: dict[int, int] = {}  # tokens of each running sequence already passed on
        self._top_k: dict[int, int] = {}

    def _sampling(self, seq: Sequence):
        from vllm import SamplingParams

        p = seq.params
        kwargs = dict(
            n=1,
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            stop_token_ids=sorted(self.codec.eos_ids),
            logprobs=p.logprobs,
            detokenize=False,
        )
        if p.top_k:
            kwargs["top_k"] = p.top_k
        return SamplingParams(**kwargs)

    def add(self, seq: Sequence) -> None:
        self.engine.add_request(str(seq.id), {"prompt_token_ids": list(seq.prompt_ids)}, self._sampling(seq))
        self._seen[seq.id] = 0
        self._top_k[seq.id] = seq.params.logprobs or 0

    def step(self) -> list[TokenOut]:
        outs = []
        for ro in self.engine.step():
            seq_id = int(ro.request_id)
            if seq_id not in self._seen:
                continue
            comp = ro.outputs[0]
            start = self._seen[seq_id]  # outputs are cumulative: take what is new since the last step
            for k, token in enumerate(comp.token_ids[start:], start=start):
                out = TokenOut(seq_id, int(token))
                if comp.logprobs and k < len(comp.logprobs):
                    ranked = comp.logprobs[k]
                    out.logprob = ranked[token].logprob if token in ranked else None
                    top = sorted(((t, lp.logprob) for t, lp in ranked.items()), key=lambda x: -x[1])
                    out.top = top[: self._top_k.get(seq_id, 0)]
                outs.append(out)
            self._seen[seq_id] = len(comp.token_ids)
            if ro.finished:
                self._seen.pop(seq_id, None)
                self._top_k.pop(seq_id, None)
                outs.append(TokenOut(seq_id, None, finished="length" if comp.finish_reason == "length" else "stop"))
        return outs

    def abort(self, seq_id: int) -> None:
        if self._seen.pop(seq_id, None) is not None:
            self.engine.abort_request([str(seq_id)])

    def close(self) -> None:
        for seq_id in list(self._seen):
            self.abort(seq_id)
