"""`echo` on /v1/completions: the prompt in front of each answer and, with `logprobs`, its tokens' log-probabilities.

That is how lm-eval's `local-completions` model computes log-likelihoods (multiple-choice tasks such as
HellaSwag): it sends the context and continuation as token ids with `echo: true, logprobs: 1, max_tokens: 1`
and sums `token_logprobs[ctxlen:-1]`. OpenAI's shape: the first prompt token has no log-probability (null)
and an empty top list ({} in `top_logprobs`); `max_tokens: 0` with `echo` scores the prompt and generates
nothing. Scoring runs the backend's `score_prompt` in a worker thread (one prompt at a time per model, which
bounds its memory: the whole prompt's logits), beside the engine's batch, whose answers it does not change.

Examples:
    prefixes = await echo_prefixes(served, req, prompt_ids, req.prompts())   # [(text, logprobs or None), ...]
"""

from __future__ import annotations

import asyncio

from llmctl.serve import responses as R
from llmctl.serve.protocol import ApiError

_SCORING: dict[int, asyncio.Lock] = {}  # one scoring pass at a time per served model (id of its engine)


async def echo_prefixes(served, req, prompt_ids: list[list[int]], raw: list) -> list[tuple[str, dict | None]]:
    """Per prompt: the text echoed in front of its answers, and its completions-logprobs object (or None)."""
    backend = served.engine.backend
    codec = backend.codec
    texts = [p if isinstance(p, str) else codec.decode(ids) for p, ids in zip(raw, prompt_ids)]
    if req.logprobs is None:
        return [(text, None) for text in texts]
    if not backend.prompt_logprobs:
        raise ApiError(
            400,
            f"the {served.backend} backend does not score prompt tokens (echo with logprobs); serve with --backend hf",
            param="echo",
        )
    lock = _SCORING.setdefault(id(served.engine), asyncio.Lock())
    out = []
    for text, ids in zip(texts, prompt_ids):
        async with lock:
            entries = await asyncio.to_thread(backend.score_prompt, ids, req.logprobs)
        out.append((text, _with_null_first(R.completion_logprobs(entries, codec.token_text))))
    return out


def _with_null_first(lp: dict) -> dict:
    """OpenAI gives the first prompt token no alternatives: null, not an empty object."""
    if lp["top_logprobs"]:
        lp["top_logprobs"][0] = None
    return lp
