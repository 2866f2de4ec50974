"""What a request must pass before it reaches an engine; each refusal is an `ApiError` (OpenAI's error shape, a 4xx).

`protocol` checks a body on its own (types, ranges, unknown keys). The checks here need the request itself, the
served model or the server's settings: the body's media type, size and JSON (415, 413, 400; read_json), prompt
token ids against the vocabulary, the chat template, the prompt and max_tokens against the model's length, what
the backend can do (logit_bias, logprobs, response_format) and one request's share of the server (prompts x n and
their tokens; check_budget). `served` is an app.ServedModel, `settings` an app.ServeSettings.

Examples:
    req = parse(CompletionRequest, await read_json(request, settings.max_request_bytes))
    params = sampling_params(served, settings, req, prompt_len=12, max_tokens=64, logprobs=None)
    check_budget(settings, prompts, req.n, params.max_tokens)
"""

from __future__ import annotations

import json

from starlette.requests import Request

from llmctl.inference.sampling import SamplingParams
from llmctl.serve.protocol import ApiError, lone_surrogate


async def read_json(request: Request, limit: int):
    """The request body as JSON; over `limit` bytes is a 413, malformed JSON a 400, another media type a 415.

    Only application/json (or a +json type) is read: a web page can send text/plain, form data or an untyped
    body to 127.0.0.1 without the browser asking the server first (a CORS "simple request"), and a server that
    read those as JSON would run any page's request (CSRF).
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            f"the request body must be JSON with the header Content-Type: application/json (got {media or 'none'})",
            code="unsupported_media_type",
        )
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes")
        parts.append(part)
    try:
        data = json.loads(b"".join(parts))
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, or an int of > 4,300 digits
        raise ApiError(400, f"the request body is not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    where = lone_surrogate(data)
    if where:
        raise ApiError(400, f"{where}: holds a lone UTF-16 surrogate, which is not text", param=where.split(".")[0])
    return data


def check_ids(ids: list[int], codec) -> list[int]:
    """A prompt given as token ids, each in the model's vocabulary (else a 400)."""
    if any(t < 0 or t >= codec.vocab_size for t in ids):
        raise ApiError(400, f"prompt token ids must be in [0, {codec.vocab_size})", param="prompt")
    return ids


def templated_ids(codec, messages: list[dict], tools) -> list[int]:
    """The chat prompt's token ids through the model's chat template; a template that refuses is a 400."""
    try:
        text = codec.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, tools=tools)
    except Exception as exc:  # the template itself refuses (e.g. roles that do not alternate)
        raise ApiError(400, f"the model's chat template refused these messages ({exc})", param="messages") from None
    return codec.encode(text)


def check_budget(settings, prompts: list[list[int]], n: int, max_tokens: int) -> None:
    """One request's share of the server: prompts x n and their tokens (prompt + max_tokens) are capped."""
    sequences = len(prompts) * n
    if sequences > settings.max_sequences:
        raise ApiError(400, f"{sequences} sequences (prompts x n) asked; at most {settings.max_sequences}", param="n")
    tokens = n * sum(len(p) + max_tokens for p in prompts)
    if tokens > settings.max_request_tokens:
        raise ApiError(
            400,
            f"the request asks for {tokens} tokens (prompts + max_tokens, times n); "
            f"at most {settings.max_request_tokens} (max_request_tokens)",
            param="max_tokens",
        )


def sampling_params(
    served, settings, req, prompt_len: int, max_tokens: int | None, logprobs: int | None
) -> SamplingParams:
    """The request's SamplingParams; prompts or max_tokens beyond the model's length are a 400."""
    limit = served.engine.backend.max_model_len
    if prompt_len >= limit or (max_tokens is not None and prompt_len + max_tokens > limit):
        asked = f" + max_tokens {max_tokens}" if max_tokens is not None else ""
        raise ApiError(
            400,
            f"the prompt has {prompt_len} tokens{asked}; this model's maximum length is {limit} "
            f"tokens (--max-model-len)",
            param="max_tokens" if max_tokens else "messages",
            code="context_length_exceeded",
        )
    vocab = served.engine.backend.codec.vocab_size
    if req.top_k and req.top_k > vocab:
        raise ApiError(400, f"top_k: must be at most the vocabulary size {vocab}, got {req.top_k}", param="top_k")
    bias = req.biases(vocab)
    if bias and not served.engine.backend.logit_bias:
        raise ApiError(
            400,
            f"the {served.backend} backend does not apply logit_bias; serve with --backend hf",
            param="logit_bias",
        )
    grammar = response_grammar(served, req.response_format)
    if logprobs is not None and not served.engine.backend.logprobs:
        raise ApiError(
            400, f"the {served.backend} backend does not return logprobs; serve with --backend hf", param="logprobs"
        )
    return SamplingParams(
        max_tokens=max_tokens or min(settings.default_max_tokens, limit - prompt_len),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        stop=tuple(req.stops()),
        logprobs=logprobs,
        logit_bias=bias,
        grammar=grammar,
    )


def response_grammar(served, fmt) -> str | None:
    """The grammar a response_format asks for (None for text); a 400 for a schema or backend that cannot."""
    if fmt is None or fmt.type == "text":
        return None
    if not served.engine.backend.structured:
        raise ApiError(
            400,
            f"the {served.backend} backend does not enforce response_format {fmt.type!r}; serve with --backend hf",
            param="response_format",
        )
    from llmctl.inference.structured import json_grammar

    try:
        return json_grammar(fmt.schema())
    except ValueError as exc:
        raise ApiError(400, f"response_format: {exc}", param="response_format") from None
