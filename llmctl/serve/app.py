"""The HTTP app: OpenAI's /v1/models, /v1/completions, /v1/chat/completions, plus /health, /metrics and the chat page
at / with its /llmctl/v1/models/{model} (page.py).

Every request passes `Guard` first (guard.py: header size, Host, Bearer API key with a constant-time compare,
body size limit and read deadline, request metrics and one log line); bodies are parsed and validated by
`protocol`, then checked against the model and the server's limits (admission.py); answers come from each model's
`Engine` through an asyncio queue. A streaming client that goes away cancels its request (Starlette cancels the
stream, `SSEResponse` closes the job even before its first chunk; the engine frees the slots at its next step); a
non-streaming one is noticed by polling.

Examples:
    app = build_app([ServedModel("tiny", engine, resolved, "hf", "...")], ServeSettings(api_key="k"))
    uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmctl.inference.engine import Engine, QueueFull
from llmctl.inference.prompts import has_chat_template
from llmctl.inference.sampling import SamplingParams
from llmctl.serve import responses as R
from llmctl.serve import tools as T
from llmctl.serve.admission import check_budget, check_ids, read_json, sampling_params, templated_ids
from llmctl.serve.echo import echo_prefixes
from llmctl.serve.guard import Guard
from llmctl.serve.metrics import Metrics
from llmctl.serve.page import chat_page, model_info
from llmctl.serve.protocol import ApiError, ChatRequest, CompletionRequest, error_body, parse

log = logging.getLogger("llmctl.serve")


@dataclass
class ServedModel:
    """One model the server answers for: its name, engine and where it came from."""

    name: str
    engine: Engine
    resolved: object
    backend: str
    why: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ServeSettings:
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    default_max_tokens: int = 256
    max_sequences: int = 64  # prompts x n of one request
    max_request_tokens: int = 262144  # prompt + max_tokens over a request's sequences
    allowed_hosts: frozenset[str] | None = None  # Host names answered besides loopback ones; None = any (guard.py)
    max_header_bytes: int = 16384  # request line + headers; more is a 431
    read_timeout_s: float = 30.0  # seconds a request's body has to arrive; then a 408


class _Job:
    """The engine requests of one HTTP request (one per prompt, n answers each) and their chunk queue."""

    def __init__(self, served: ServedModel, prompts: list[list[int]], params: SamplingParams, n: int):
        self.served, self.n, self.prompts = served, n, prompts
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.open = len(prompts) * n
        self.requests = []
        self.closed = False
        try:
            for k, ids in enumerate(prompts):

                def sink(chunk, k=k):  # called from the engine's thread
                    loop.call_soon_threadsafe(self.queue.put_nowait, (k, chunk))

                self.requests.append(served.engine.submit(ids, params, n, sink))
        except QueueFull as exc:
            self.cancel()
            raise ApiError(503, f"the server is busy ({exc}); retry later", type="server_error") from None

    async def chunks(self, request: Request | None = None):
        """(choice index, Chunk) until every answer has finished; polls for a lost client when given one."""
        while self.open:
            if request is None:
                k, chunk = await self.queue.get()
            else:
                try:
                    k, chunk = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
            if chunk.finish_reason is not None:
                self.open -= 1
            yield k * self.n + chunk.index, chunk

    def cancel(self) -> None:
        for req in self.requests:
            self.served.engine.cancel(req)

    def close(self, metrics: Metrics) -> None:
        """Cancel what is still running and record the requests' metrics (once; later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        cancelled = self.open > 0
        if cancelled:
            self.cancel()
        for req, ids in zip(self.requests, self.prompts):
            metrics.finished(self.served.name, req, len(ids), cancelled)

    def usage(self, completion_tokens: int) -> dict:
        return R.usage(sum(len(p) for p in self.prompts), completion_tokens)


class SSEResponse(StreamingResponse):
    """A server-sent event stream whose generator is always closed and whose `on_close` always runs.

    The job is submitted before the response starts (so a full queue is still a 503). A client gone before the
    first chunk cancels the stream before its generator has started, and closing a generator that never started
    runs none of its code: `on_close` (the job's `close`) is what releases the job then.
    """

    def __init__(self, content, on_close):
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()


class Server:
    """The routes' state: served models, settings and metrics."""

    def __init__(self, models: list[ServedModel], settings: ServeSettings):
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.metrics = Metrics({m.name: m.engine for m in models})

    def pick(self, name: str | None) -> ServedModel:
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; served here: {', '.join(self.models)}",
                param="model",
                code="model_not_found",
            )
        return self.models[name]

    # ---- routes --------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """200 while every model's engine runs; 503 naming the models whose engine thread has ended."""
        dead = [name for name, m in self.models.items() if not m.engine.alive()]
        if dead:
            body = {"status": "unavailable", "models": list(self.models), "failed": dead}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "models": list(self.models)})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def model_card(self, m: ServedModel) -> dict:
        r = m.resolved
        return {
            "id": m.name,
            "object": "model",
            "created": m.created,
            "owned_by": "llmctl",
            "root": r.label,
            "parent": r.parents[0] if r.parents else None,
            "format": r.format,
            "backend": m.backend,
            "max_model_len": m.engine.backend.max_model_len,
        }

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.model_card(m) for m in self.models.values()]})

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(self.model_card(self.pick(request.path_params["model"])))

    async def completions(self, request: Request) -> Response:
        req = parse(CompletionRequest, await read_json(request, self.settings.max_request_bytes))
        served = self.pick(req.model)
        codec = served.engine.backend.codec
        raw = req.prompts()
        # tokenizing a 1 MiB body takes a while: off the event loop, so other requests are served meanwhile
        prompts = await asyncio.to_thread(
            lambda: [codec.encode(p) if isinstance(p, str) else check_ids(p, codec) for p in raw]
        )
        if any(not p for p in prompts):
            raise ApiError(400, "a prompt is empty", param="prompt")
        max_tokens = 1 if req.max_tokens == 0 else req.max_tokens
        params = sampling_params(served, self.settings, req, max(len(p) for p in prompts), max_tokens, req.logprobs)
        check_budget(self.settings, prompts, req.n, params.max_tokens)
        echoed = await echo_prefixes(served, req, prompts, raw) if req.echo else None
        rid, created = R.new_id("cmpl"), int(time.time())
        if req.max_tokens == 0:  # echo alone: the prompts scored, nothing generated
            choices = [R.completion_choice(i, t, "length", lp) for i, (t, lp) in enumerate(echoed)]
            return JSONResponse(R.completion_object(rid, served.name, created, choices, R.usage(len(prompts[0]), 0)))
        job = _Job(served, prompts, params, req.n)
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return SSEResponse(
                self._stream_completion(job, req, rid, created, include, echoed), lambda: job.close(self.metrics)
            )
        texts, finish, lps, tokens = defaultdict(str), {}, {}, 0
        for i, (text, lp) in enumerate(echoed or []):  # echo: the prompt in front (n is 1 with echo)
            texts[i], lps[i] = text, lp
        try:
            async for idx, c in job.chunks(request):
                if c.error:
                    raise ApiError(500, c.error, type="server_error")
                if req.logprobs is not None and c.logprobs:
                    lps[idx] = R.merge_completion_logprobs(
                        lps.get(idx), R.completion_logprobs(c.logprobs, codec.token_text, len(texts[idx]))
                    )
                texts[idx] += c.text
                if c.finish_reason:
                    finish[idx], tokens = c.finish_reason, tokens + c.completion_tokens
        finally:
            job.close(self.metrics)
        choices = [R.completion_choice(i, texts[i], finish.get(i), lps.get(i)) for i in range(len(prompts) * req.n)]
        return JSONResponse(R.completion_object(rid, served.name, created, choices, job.usage(tokens)))

    async def _stream_completion(self, job: _Job, req, rid: str, created: int, include_usage: bool, echoed=None):
        codec, name, tokens = job.served.engine.backend.codec, job.served.name, 0
        for i, (text, lp) in enumerate(echoed or []):  # echo: each prompt first, then its answer
            yield R.sse(R.completion_chunk(rid, name, created, R.completion_choice(i, text, None, lp)))
        try:
            async for idx, c in job.chunks():
                if c.error:
                    yield R.sse(error_body(c.error, "server_error"))
                    return
                lp = R.completion_logprobs(c.logprobs, codec.token_text) if req.logprobs is not None else None
                tokens += c.completion_tokens if c.finish_reason else 0
                choice = R.completion_choice(idx, c.text, c.finish_reason, lp)
                yield R.sse(R.completion_chunk(rid, name, created, choice))
            if include_usage:
                yield R.sse(R.usage_chunk(rid, "text_completion", name, created, job.usage(tokens)))
            yield R.sse("[DONE]")
        finally:
            job.close(self.metrics)

    async def chat(self, request: Request) -> Response:
        req = parse(ChatRequest, await read_json(request, self.settings.max_request_bytes))
        served = self.pick(req.model)
        codec = served.engine.backend.codec
        if not has_chat_template(codec):
            raise ApiError(
                400, f"the model {served.name!r} has no chat template; use /v1/completions", param="messages"
            )
        T.check_request(req)
        messages, tools_arg = T.prompt_messages(req, T.supports_tools(codec))
        ids = await asyncio.to_thread(templated_ids, codec, messages, tools_arg)  # off the event loop
        k = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling_params(served, self.settings, req, len(ids), req.max_completion_tokens or req.max_tokens, k)
        check_budget(self.settings, [ids], req.n, params.max_tokens)
        forced = T.forced_grammar(req)
        if forced is not None:
            if not served.engine.backend.structured:
                raise ApiError(
                    400, f"the {served.backend} backend cannot force a tool call; serve with --backend hf",
                    param="tool_choice",
                )  # fmt: skip
            params = replace(params, grammar=forced)
        job = _Job(served, [ids], params, req.n)
        rid, created = R.new_id("chatcmpl"), int(time.time())
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return SSEResponse(self._stream_chat(job, req, rid, created, include), lambda: job.close(self.metrics))
        texts, finish, lps, tokens = defaultdict(str), {}, defaultdict(list), 0
        try:
            async for idx, c in job.chunks(request):
                if c.error:
                    raise ApiError(500, c.error, type="server_error")
                texts[idx] += c.text
                if req.logprobs:
                    lps[idx] += R.chat_logprobs(c.logprobs, codec.token_text)
                if c.finish_reason:
                    finish[idx], tokens = c.finish_reason, tokens + c.completion_tokens
        finally:
            job.close(self.metrics)
        choices = [
            T.with_tool_calls(
                req, R.chat_choice(i, texts[i], finish.get(i), {"content": lps[i]} if req.logprobs else None)
            )
            for i in range(req.n)
        ]
        return JSONResponse(R.chat_object(rid, served.name, created, choices, job.usage(tokens)))

    async def _stream_chat(self, job: _Job, req, rid: str, created: int, include_usage: bool):
        codec, name, tokens = job.served.engine.backend.codec, job.served.name, 0
        try:
            for i in range(req.n):
                yield R.sse(R.chat_chunk(rid, name, created, i, {"role": "assistant", "content": ""}))
            held = defaultdict(str)  # with tools: an answer is held back until it is known to be calls or text
            async for idx, c in job.chunks():
                if c.error:
                    yield R.sse(error_body(c.error, "server_error"))
                    return
                lp = {"content": R.chat_logprobs(c.logprobs, codec.token_text)} if req.logprobs else None
                if T.active(req):
                    held[idx] += c.text
                elif c.text or lp:
                    yield R.sse(R.chat_chunk(rid, name, created, idx, {"content": c.text}, logprobs=lp))
                if c.finish_reason:
                    tokens += c.completion_tokens
                    finish = c.finish_reason
                    if T.active(req):
                        message = T.with_tool_calls(req, R.chat_choice(idx, held.pop(idx, ""), finish))
                        finish, delta = message["finish_reason"], T.tool_delta(message["message"])
                        yield R.sse(R.chat_chunk(rid, name, created, idx, delta))
                    yield R.sse(R.chat_chunk(rid, name, created, idx, {}, finish))
            if include_usage:
                yield R.sse(R.usage_chunk(rid, "chat.completion.chunk", name, created, job.usage(tokens)))
            yield R.sse("[DONE]")
        finally:
            job.close(self.metrics)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed here"}
    return JSONResponse(
        error_body(message.get(exc.status_code, str(exc.detail)), "invalid_request_error"), status_code=exc.status_code
    )


async def _gone(request: Request, exc: ClientDisconnect) -> Response:
    """The client left before its body was read: nobody to answer; 499 (nginx's "client closed request") in the
    metrics and the log, not a 500 with a traceback."""
    return Response(status_code=499)


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("request %s %s failed", request.method, request.url.path)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


def build_app(models: list[ServedModel], settings: ServeSettings):
    """The ASGI app serving models (Guard around the Starlette routes)."""
    server = Server(models, settings)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.get_model, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/", chat_page, methods=["GET"]),  # the chat page (page.py)
        Route("/llmctl/v1/models/{model:path}", functools.partial(model_info, server), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            ClientDisconnect: _gone,
            Exception: _crash,
        },
    )
    guarded = Guard(app, settings, server.metrics)
    guarded.server = server
    return guarded
