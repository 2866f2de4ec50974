"""OpenAI's response objects: completions, chat completions, their stream chunks, logprobs and usage.

Examples:
    completion_object("cmpl-1", "tiny", choices, usage(3, 5))
    sse({"id": "x"})          # b'data: {"id": "x"}\\n\\n'
"""

from __future__ import annotations

import json
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(obj) -> bytes:
    """One server-sent event carrying obj as JSON (or the literal [DONE])."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def _head(rid: str, obj: str, model: str, created: int) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model}


def completion_object(rid: str, model: str, created: int, choices: list[dict], use: dict) -> dict:
    """A finished text completion."""
    return {**_head(rid, "text_completion", model, created), "choices": choices, "usage": use}


def completion_choice(index: int, text: str, finish: str | None, logprobs=None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion_chunk(rid: str, model: str, created: int, choice: dict) -> dict:
    return {**_head(rid, "text_completion", model, created), "choices": [choice]}


def chat_object(rid: str, model: str, created: int, choices: list[dict], use: dict) -> dict:
    """A finished chat completion."""
    return {**_head(rid, "chat.completion", model, created), "choices": choices, "usage": use}


def chat_choice(index: int, text: str, finish: str | None, logprobs=None) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": finish,
    }


def chat_chunk(
    rid: str, model: str, created: int, index: int, delta: dict, finish: str | None = None, logprobs=None
) -> dict:
    return {
        **_head(rid, "chat.completion.chunk", model, created),
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }


def usage_chunk(rid: str, obj: str, model: str, created: int, use: dict) -> dict:
    """The last chunk of a stream that asked for usage (stream_options.include_usage)."""
    return {**_head(rid, obj, model, created), "choices": [], "usage": use}


def completion_logprobs(entries: list, token_text, offset: int = 0) -> dict:
    """Completions' logprobs object from engine entries (token, logprob, [(alternative, logprob), ...])."""
    tokens, lps, tops, offsets = [], [], [], []
    for token, logprob, top in entries:
        text = token_text(token)
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        lps.append(logprob)
        tops.append({token_text(t): lp for t, lp in top})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def merge_completion_logprobs(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: a[k] + b[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def chat_logprobs(entries: list, token_text) -> list[dict]:
    """Chat's logprobs content list from engine entries."""

    def one(token, logprob):
        text = token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [{**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in top]} for token, logprob, top in entries]
