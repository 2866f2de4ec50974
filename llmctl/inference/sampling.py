"""Decoding settings of one request with OpenAI's meaning, and the torch pieces that apply them to logits.

OpenAI semantics: temperature 0 is greedy; `frequency_penalty` subtracts penalty × count of each token in the
answer so far, `presence_penalty` subtracts once for every token already in the answer (both over generated
tokens only, as OpenAI documents); `repetition_penalty` is HF/CTRL's divide-by-p over prompt and answer.

Examples:
    params = SamplingParams(max_tokens=64, temperature=0.0, stop=["\\n\\n"])
    params.greedy                                    # True
    penalized = apply_penalties(logits, counts, 0.5, 0.5)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded.

    Examples:
        SamplingParams(max_tokens=16, temperature=0.7, top_p=0.9, seed=1)
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: int | None = None  # None = none; k = the chosen token's logprob and the k most likely
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, bias added to its logit), bias in ±100
    grammar: str | None = None  # llguidance grammar the answer must fit (response_format; llmctl.inference.structured)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def with_seed(self, index: int) -> SamplingParams:
        """The settings of the index-th of n answers: seeded seed + index, or a fresh random seed."""
        seed = self.seed + index if self.seed is not None else int.from_bytes(os.urandom(4), "little")
        return replace(self, seed=seed)


def from_generate_config(config: dict) -> SamplingParams:
    """SamplingParams for a resolved `llmctl generate` config.

    Examples:
        from_generate_config(resolve_config("generate")).greedy   # True
    """
    sample = bool(config["do_sample"]) and config["temperature"] > 0
    return SamplingParams(
        max_tokens=config["max_new_tokens"],
        temperature=config["temperature"] if sample else 0.0,
        top_p=config["top_p"],
        top_k=config["top_k"] or 0,
        seed=config["seed"],
        presence_penalty=config["presence_penalty"],
        frequency_penalty=config["frequency_penalty"],
        repetition_penalty=config["repetition_penalty"],
        stop=tuple(config["stop"] or ()),
    )


def apply_penalties(scores, counts, frequency: float, presence: float):
    """OpenAI frequency/presence penalties: scores − frequency·count − presence·[count > 0] (any leading dims).

    Examples:
        apply_penalties(torch.zeros(1, 5), torch.tensor([[0., 2., 0., 0., 0.]]), 0.5, 1.0)[0, 1]   # -2.0
    """
    if not frequency and not presence:
        return scores
    return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)


def penalty_processor(prompt_len: int, frequency: float, presence: float):
    """A transformers LogitsProcessor applying the OpenAI penalties over the tokens generated after prompt_len."""
    import torch
    from transformers import LogitsProcessor

    class FrequencyPresencePenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_len:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return apply_penalties(scores, counts, frequency, presence)

    return FrequencyPresencePenalty()


def apply_logit_bias(scores, bias: tuple[tuple[int, float], ...]):
    """scores (…, vocab) with each (token, bias) added to that token's logit (OpenAI's logit_bias; -100 bans it)."""
    if not bias:
        return scores
    import torch

    ids = torch.tensor([t for t, _ in bias], device=scores.device)
    values = torch.tensor([b for _, b in bias], dtype=scores.dtype, device=scores.device)
    out = scores.clone()
    out[..., ids] += values
    return out


def logit_bias_processor(bias: tuple[tuple[int, float], ...]):
    """apply_logit_bias as a transformers LogitsProcessor (the one-at-a-time generate path)."""
    from transformers import LogitsProcessor

    class LogitBias(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return apply_logit_bias(scores, bias)

    return LogitBias()


def pick_token(logits, params: SamplingParams, counts, seen, generator) -> int:
    """The next token of one sequence from its (vocab,) logits: penalties, then greedy or top-k/top-p sampling.

    counts: the (vocab,) float counts of generated tokens; seen: (vocab,) bool of prompt and answer tokens;
    generator: the sequence's own torch.Generator, so a seeded answer is the same alone or in a batch.
    """
    import torch
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    scores = logits.float()
    if params.repetition_penalty != 1.0:
        rp = params.repetition_penalty
        penalized = torch.where(scores > 0, scores / rp, scores * rp)
        scores = torch.where(seen, penalized, scores)
    scores = apply_penalties(scores, counts, params.frequency_penalty, params.presence_penalty)
    scores = apply_logit_bias(scores, params.logit_bias)
    if params.greedy:
        return int(torch.argmax(scores))
    scores = (scores / params.temperature).unsqueeze(0)
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)[0]
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logits, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of token and its k most likely alternatives (raw logits, before penalties)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logp, k) if k else None
    alts = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
    return float(logp[token]), alts
