"""The `hf` backend: transformers models of any registry format, with continuous batching on torch models.

Torch models (hf, gguf, adapters, inc-woq, inc-int8, bnb) run llmctl's iteration-level batching loop: a new
sequence is prefilled alone (exactly as a single request would be), then joins the running batch, whose KV
cache is left-padded to a common length with an attention mask and per-row position ids; finished or aborted
rows leave the batch between steps. Each row samples with its own penalties and its own seeded
torch.Generator, so an answer does not depend on which other requests share its batch. Models that are not
torch modules with a KV cache (optimum-intel OpenVINO models, PEFT prompt/prefix tuning) run one sequence at
a time through `model.generate`.

Examples:
    backend = HfBackend(load_model("tiny", "float32", "cpu"), BackendOptions(max_batch=4))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llmctl.inference.backends.base import Backend, BackendOptions, HfCodec, Sequence, ThreadedOneAtATime, TokenOut
from llmctl.inference.sampling import pick_token, top_logprobs

log = logging.getLogger("llmctl.serve")


def model_context(config, default: int = 2048) -> int:
    """The context length a model config declares (llmctl.models.rope.positions), else `default`."""
    from llmctl.models.rope import positions

    return positions(config) or default


def steppable(model) -> bool:
    """Whether llmctl's batching loop can drive the model (a torch module taking a DynamicCache)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return False
    active = getattr(model, "active_peft_config", None)
    return not getattr(active, "is_prompt_learning", False)


def create(resolved, options: BackendOptions) -> Backend:
    """The hf backend for a resolved model: the batching loop where the model allows it, else generate."""
    from llmctl.models.loading import load_model

    loaded = load_model(
        resolved, dtype=options.dtype, device=options.device, adapter=options.adapter, rope=options.rope
    )
    backend = HfBackend(loaded, options) if steppable(loaded.model) else HfGenerateBackend(loaded, options)
    backend.info.update({"device": loaded.device, "dtype": str(loaded.dtype).replace("torch.", "")})
    return backend


@dataclass
class _Row:
    seq: Sequence
    last: int  # the newest token: the input of the next decode step
    length: int  # real tokens so far = the position id of `last`
    counts: Any  # (vocab,) float: how often each token occurs in the answer
    seen: Any  # (vocab,) bool: tokens in prompt or answer (repetition penalty)
    generator: Any
    constraint: Any = None  # llmctl.inference.structured.Constraint when the answer must fit a grammar


class HfBackend(Backend):
    """Continuous batching over a torch causal LM (see the module docstring)."""

    name = "hf"
    logprobs = True
    prompt_logprobs = True
    logit_bias = True
    structured = True

    def __init__(self, loaded, options: BackendOptions):
        super().__init__()
        self.model, self.device = loaded.model, loaded.device
        self.codec = HfCodec(loaded.tokenizer, getattr(self.model, "generation_config", None))
        self.max_model_len = options.max_model_len or model_context(self.model.config)
        self.max_batch = options.max_batch
        self._pending: list[Sequence] = []
        self._ll_tokenizer = None  # llguidance's tokenizer, for structured output (made on first use)
        self._rows: list[_Row] = []
        self._cache = None  # DynamicCache of the running batch, rows in self._rows order
        self._mask = None  # (rows, cached length) long: 0 on left padding
        self._keep_arg = True  # whether forward takes logits_to_keep

    def add(self, seq: Sequence) -> None:
        self._pending.append(seq)

    def step(self) -> list[TokenOut]:
        import torch

        with torch.inference_mode():
            if self._pending:  # one prefill per step, so running rows keep decoding between arrivals
                return [self._prefill(self._pending.pop(0))]
            return self._decode() if self._rows else []

    def _forward(self, **kwargs):
        if self._keep_arg:
            try:
                return self.model(**kwargs, use_cache=True, logits_to_keep=1)
            except TypeError:
                self._keep_arg = False
        return self.model(**kwargs, use_cache=True)

    def _prefill(self, seq: Sequence) -> TokenOut:
        import torch
        from transformers import DynamicCache

        ids = torch.tensor([seq.prompt_ids], device=self.device)
        out = self._forward(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache())
        logits = out.logits[0, -1]
        seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=self.device)
        seen[ids[0]] = True
        generator = torch.Generator(device=self.device).manual_seed(seq.params.seed or 0)
        row = _Row(seq, 0, len(seq.prompt_ids), torch.zeros(logits.shape[-1], device=self.device), seen, generator)
        if seq.params.grammar is not None:
            result = self._constrain(row, seq.params.grammar, logits.shape[-1])
            if result is not None:
                return result
        result = self._sample(row, logits)
        self._join(row, out.past_key_values)
        return result

    def _join(self, row: _Row, cache) -> None:
        import torch

        mask = torch.ones(1, row.length, dtype=torch.long, device=self.device)
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, mask, [row]
            return
        width = max(self._mask.shape[1], row.length)
        old, new = _kv(self._cache), _kv(cache)
        merged = [
            (
                torch.cat([_left_pad(ok, width), _left_pad(nk, width)]),
                torch.cat([_left_pad(ov, width), _left_pad(nv, width)]),
            )
            for (ok, ov), (nk, nv) in zip(old, new)
        ]
        _set_kv(self._cache, merged)
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self._rows.append(row)

    def _decode(self) -> list[TokenOut]:
        import torch

        ids = torch.tensor([[r.last] for r in self._rows], device=self.device)
        positions = torch.tensor([[r.length] for r in self._rows], device=self.device)
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=torch.long, device=self.device)], dim=1)
        cache_position = torch.tensor([self._mask.shape[1]], device=self.device)
        out = self._forward(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._cache,
            cache_position=cache_position,
        )
        self._cache, self._mask = out.past_key_values, mask
        results = []
        for i, row in enumerate(self._rows):
            row.length += 1
            results.append(self._sample(row, out.logits[i, -1]))
        return results

    def _sample(self, row: _Row, logits) -> TokenOut:
        """The row's next token; a failure of this row's sampling fails this row alone (the engine aborts it)."""
        try:
            return self._sample_row(row, logits)
        except Exception as exc:  # the other rows of the batch were sampled (or will be) on their own
            log.exception("sampling sequence %s failed", row.seq.id)
            return TokenOut(row.seq.id, None, error=f"sampling failed: {type(exc).__name__}: {exc}")

    def _constrain(self, row: _Row, grammar: str, vocab: int) -> TokenOut | None:
        """Give the row its grammar matcher; a grammar that fails to start fails this sequence alone."""
        from llmctl.inference.structured import Constraint, ll_tokenizer

        try:
            if self._ll_tokenizer is None:  # built once per backend: a pass over the vocabulary
                self._ll_tokenizer = ll_tokenizer(self.codec.tokenizer, vocab)
            row.constraint = Constraint(self._ll_tokenizer, grammar, vocab)
        except Exception as exc:
            return TokenOut(row.seq.id, None, error=f"structured output failed to start: {exc}")
        return None

    def _sample_row(self, row: _Row, logits) -> TokenOut:
        params = row.seq.params
        masked = row.constraint.mask(logits) if row.constraint is not None else logits
        token = pick_token(masked, params, row.counts, row.seen, row.generator)
        row.counts[token] += 1
        row.seen[token] = True
        row.last = token
        finished = None
        if row.constraint is not None:
            row.constraint.accept(token)
            if row.constraint.done and token not in self.codec.eos_ids:
                finished = "stop"  # the JSON is complete: its end-of-sequence need not be sampled
        result = TokenOut(row.seq.id, token, finished=finished)
        if params.logprobs is not None:
            result.logprob, result.top = top_logprobs(logits, token, params.logprobs)
        return result

    def score_prompt(self, ids: list[int], k: int) -> list[tuple[int, float | None, list[tuple[int, float]]]]:
        """Each prompt token's log-probability given the tokens before it, and the k likeliest there.

        The first token has no context (None, as OpenAI's `echo` gives). One forward over the whole prompt,
        without a cache, beside the engine's batch (a torch module's forward keeps no state between calls, so
        the batch's answers are the same with or without it; tested). This is what lm-eval's
        `local-completions` model reads for log-likelihood tasks (`echo` + `logprobs`, max_tokens 1).

        Examples:
            backend.score_prompt(codec.encode("The capital of France is Paris"), 1)[-1]   # (id, -1.2, [(id, -1.2)])
        """
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            logits = self.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0, :-1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            chosen = logp.gather(1, x[0, 1:, None]).squeeze(1).tolist()
            top = torch.topk(logp, k, dim=-1) if k else None
        alts = [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())] if top is not None else None
        return [(ids[0], None, [])] + [
            (token, lp, alts[i] if alts is not None else []) for i, (token, lp) in enumerate(zip(ids[1:], chosen))
        ]

    def abort(self, seq_id: int) -> None:
        self._pending = [s for s in self._pending if s.id != seq_id]
        keep = [i for i, r in enumerate(self._rows) if r.seq.id != seq_id]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = None
            return
        self._mask = self._mask[keep]
        start = int((self._mask.sum(0) > 0).nonzero()[0])  # columns that are padding in every row left go
        self._mask = self._mask[:, start:]
        _set_kv(self._cache, [(k[keep][:, :, start:], v[keep][:, :, start:]) for k, v in _kv(self._cache)])

    def close(self) -> None:
        self._pending, self._rows, self._cache, self._mask = [], [], None, None


# The batch cache's tensors. transformers 4.57's DynamicCache keeps one DynamicLayer per decoder layer with
# `keys`/`values` of shape (batch, kv heads, length, head dim); these two helpers are the only code that
# touches that layout.
def _kv(cache) -> list:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _set_kv(cache, tensors: list) -> None:
    for layer, (k, v) in zip(cache.layers, tensors):
        layer.keys, layer.values = k, v


def _left_pad(t, width: int, dim: int = -2):
    """Zero-pad tensor t on the left of dim up to width."""
    import torch

    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


class HfGenerateBackend(ThreadedOneAtATime):
    """One sequence at a time through `model.generate` (models the batching loop cannot drive)."""

    name = "hf"
    logit_bias = True

    def __init__(self, loaded, options: BackendOptions):
        super().__init__()
        self.model, self.device = loaded.model, loaded.device
        self.codec = HfCodec(loaded.tokenizer, getattr(self.model, "generation_config", None))
        config = getattr(self.model, "config", None)
        self.max_model_len = options.max_model_len or model_context(config)
        self.info["mode"] = "generate (one sequence at a time)"

    def run(self, seq: Sequence, on_token) -> str | None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from llmctl.inference.sampling import logit_bias_processor, penalty_processor

        p = seq.params
        state = {"prompt": True, "stop": False}

        class Tokens(BaseStreamer):
            def put(self, value):
                if state["prompt"]:  # generate hands the prompt over first
                    state["prompt"] = False
                    return
                for token in value.reshape(-1).tolist():
                    state["stop"] = state["stop"] or not on_token(int(token))

            def end(self):
                pass

        class Aborted(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), state["stop"], dtype=torch.bool, device=input_ids.device)

        gen = GenerationConfig(
            max_new_tokens=p.max_tokens,
            do_sample=not p.greedy,
            repetition_penalty=p.repetition_penalty,
            eos_token_id=sorted(self.codec.eos_ids),
            pad_token_id=self.codec.tokenizer.pad_token_id,
        )
        if not p.greedy:
            gen.temperature, gen.top_p, gen.top_k = p.temperature, p.top_p, p.top_k or None
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        torch.manual_seed(p.seed or 0)
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=gen,
                streamer=Tokens(),
                stopping_criteria=StoppingCriteriaList([Aborted()]),
                logits_processor=LogitsProcessorList(
                    [
                        penalty_processor(ids.shape[1], p.frequency_penalty, p.presence_penalty),
                        logit_bias_processor(p.logit_bias),
                    ]
                ),
            )
        return None
