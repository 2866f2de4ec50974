"""The engine: a queue of requests, one worker thread stepping a backend, text and stop handling per answer.

Requests are queued and admitted while the backend has free slots (up to `max_concurrency` sequences); a
backend with continuous batching takes new sequences between decode steps. The engine, not the backend,
turns tokens into text (incremental detokenization that never sends half a UTF-8 character), ends answers at
eos, `max_tokens` or a stop sequence (never sending the start of one), and frees a cancelled request's slots
at the next step. Consumers get `Chunk` events through a callback called from the worker thread.

Examples:
    engine = Engine(backend, max_concurrency=16); engine.start()
    req = engine.submit(prompt_ids, params, n=1, sink=print)
    engine.cancel(req); engine.stop()
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmctl.inference.backends.base import Backend, Sequence, TokenOut
from llmctl.inference.prompts import stop_holdback, trim_at_stop
from llmctl.inference.sampling import SamplingParams

log = logging.getLogger("llmctl.serve")


class QueueFull(Exception):
    """The engine's queue is full; the caller should answer 503 / retry later."""


@dataclass
class Chunk:
    """New text of one answer (index among the request's n); finish_reason set on its last chunk.

    logprobs: (token, logprob, [(alternative, logprob), ...]) per new token when the request asked for them.
    """

    index: int
    text: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    """A submitted request: prompt, settings, n answers, and timing facts for metrics."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    n: int
    sink: Callable[[Chunk], None]
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    finished: float | None = None
    cancelled: bool = False
    open_answers: int = 0
    completion_tokens: int = 0


@dataclass
class _Answer:
    request: Request
    index: int
    seq: Sequence
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    logprobs: list = field(default_factory=list)  # not yet sent
    new_tokens: list[int] = field(default_factory=list)  # not yet sent


class Engine:
    """Queue + worker thread over one backend (see the module docstring)."""

    def __init__(self, backend: Backend, max_concurrency: int = 16, max_queue: int = 1024, max_queue_tokens=None):
        self.backend = backend
        self.max_concurrency = max(1, min(max_concurrency, backend.max_batch))
        self.max_queue = max_queue
        # admission counts prompt tokens too: 1,000 queued 4k-token prompts are not 1,000 one-token ones
        self.max_queue_tokens = max_queue_tokens
        self._waiting_tokens = 0
        self._waiting: collections.deque[_Answer] = collections.deque()
        self._running: dict[int, _Answer] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- the caller's side (any thread) ----------------------------------------------------------------------

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"llmctl-engine-{self.backend.name}")
        self._thread.start()
        return self

    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int, sink: Callable[[Chunk], None]) -> Request:
        """Queue a request for n answers; chunks go to sink (called from the worker thread)."""
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + n > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} sequences are already waiting")
            tokens = n * len(prompt_ids)
            if self.max_queue_tokens is not None and self._waiting_tokens + tokens > self.max_queue_tokens:
                raise QueueFull(f"{self._waiting_tokens} prompt tokens are already waiting")
            self._waiting_tokens += tokens
            req = Request(next(self._ids), list(prompt_ids), params, n, sink, open_answers=n)
            for index in range(n):
                seq = Sequence(next(self._ids), req.prompt_ids, params.with_seed(index))
                self._waiting.append(_Answer(req, index, seq))
            self._wake.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Stop a request's answers (a client went away); its slots are freed at the next step."""
        with self._lock:
            req.cancelled = True
            self._wake.notify()

    def warm_up(self, timeout: float = 600.0) -> None:
        """Answer one 1-token request and wait for it: one-time work (kernel compilation, INC weight-only
        layers unpacking on their first forward: ~15 s on the default model) happens before the first client."""
        done = threading.Event()
        codec = self.backend.codec
        token = min(codec.eos_ids) if codec.eos_ids else 0
        self.submit(
            [token],
            SamplingParams(max_tokens=1, temperature=0.0),
            1,
            lambda chunk: done.set() if chunk.finish_reason else None,
        )
        done.wait(timeout)

    def queue_depth(self) -> int:
        return len(self._waiting)

    def running(self) -> int:
        return len(self._running)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish: refuse new work, end the worker (in-flight answers are cut) and free the backend."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self.backend.close()

    # ---- the worker thread ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        """Step the backend until stopped. Nothing a request does ends this thread: a request's failure in
        add/step/delivery ends that request's answers (or, for a failed batched step, the running ones)."""
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                self._step(admitted)
            except Exception as exc:  # a bug between steps: end what was running, keep serving
                log.exception("engine step on backend %s failed", self.backend.name)
                self._fail_running(f"{type(exc).__name__}: {exc}")
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._waiting_tokens = 0
        for answer in waiting:
            self._emit(answer, Chunk(answer.index, "", finish_reason="error", error="the server stopped"))
        self._fail_running("the server stopped before this answer was finished")

    def _step(self, admitted: list[_Answer]) -> None:
        for answer in admitted:
            try:
                self.backend.add(answer.seq)
            except Exception as exc:  # e.g. a value this backend cannot take: that answer alone fails
                log.exception("backend %s refused a sequence", self.backend.name)
                self._fail(answer, f"{type(exc).__name__}: {exc}")
        self._drop_cancelled()
        if not self._running:
            return
        try:
            outs = self.backend.step()
        except Exception as exc:  # a failed batched step ends the answers it was working on, not the server
            log.exception("backend %s step failed", self.backend.name)
            self._fail_running(f"{type(exc).__name__}: {exc}")
            return
        if not outs:
            time.sleep(0.001)  # a backend waiting on its own worker: do not spin
        self._deliver(outs)

    def alive(self) -> bool:
        """Whether the worker thread runs (False before start and after it ended)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def _admit(self) -> list[_Answer]:
        admitted = []
        while self._waiting and len(self._running) < self.max_concurrency:
            answer = self._waiting.popleft()
            self._waiting_tokens -= len(answer.seq.prompt_ids)
            if answer.request.cancelled:
                continue
            self._running[answer.seq.id] = answer
            admitted.append(answer)
        return admitted

    def _drop_cancelled(self) -> None:
        for seq_id, answer in list(self._running.items()):
            if answer.request.cancelled:
                self._abort(seq_id)
                del self._running[seq_id]

    def _abort(self, seq_id: int) -> None:
        try:
            self.backend.abort(seq_id)
        except Exception:  # freeing a slot must not stop the engine; the backend logs its own state
            log.exception("backend %s could not abort sequence %s", self.backend.name, seq_id)

    def _fail(self, answer: _Answer, message: str) -> None:
        """End one answer with an error (its request sees a server error); the others go on."""
        self._running.pop(answer.seq.id, None)
        self._abort(answer.seq.id)
        self._emit(answer, Chunk(answer.index, "", finish_reason="error", error=message))

    def _fail_running(self, message: str) -> None:
        for answer in list(self._running.values()):
            self._fail(answer, message)

    def _deliver(self, outs: list[TokenOut]) -> None:
        touched: dict[int, _Answer] = {}
        ended: dict[int, str] = {}
        for out in outs:
            answer = self._running.get(out.seq_id)
            if answer is None or out.seq_id in ended:
                continue
            if out.error is not None:
                self._fail(answer, out.error)
                touched.pop(out.seq_id, None)
                continue
            touched[out.seq_id] = answer
            if out.token is not None:
                if answer.request.first_token is None:
                    answer.request.first_token = time.perf_counter()
                answer.ids.append(out.token)
                answer.new_tokens.append(out.token)
                if out.logprob is not None:
                    answer.logprobs.append((out.token, out.logprob, out.top))
                if out.token in self.backend.codec.eos_ids:
                    ended[out.seq_id] = "stop"
                elif len(answer.ids) >= answer.seq.params.max_tokens:
                    ended[out.seq_id] = "length"
            if out.finished and out.seq_id not in ended:
                ended[out.seq_id] = out.finished
        for seq_id, answer in touched.items():
            self._advance_text(answer, ended.get(seq_id))

    def _advance_text(self, answer: _Answer, finish: str | None) -> None:
        codec, stops = self.backend.codec, list(answer.seq.params.stop)
        ids = [t for t in answer.ids if t not in codec.eos_ids]
        text = codec.decode(ids)
        if stops:
            text, found = trim_at_stop(text, stops)
            if found:
                finish = "stop"
        if finish is None:
            if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                return
            safe = len(text) - stop_holdback(stops) if stops else len(text)
            if safe <= answer.sent and not answer.logprobs:
                return
            piece = text[answer.sent : max(safe, answer.sent)]
        else:
            piece = text[answer.sent :]
            self._running.pop(answer.seq.id, None)
            self._abort(answer.seq.id)
        answer.sent += len(piece)
        chunk = Chunk(answer.index, piece, answer.new_tokens, answer.logprobs, finish, len(answer.ids))
        answer.new_tokens, answer.logprobs = [], []
        self._emit(answer, chunk)

    def _emit(self, answer: _Answer, chunk: Chunk) -> None:
        req = answer.request
        if chunk.finish_reason is not None:
            req.open_answers -= 1
            req.completion_tokens += chunk.completion_tokens
            if req.open_answers == 0:
                req.finished = time.perf_counter()
        if req.cancelled:
            return
        try:
            req.sink(chunk)
        except Exception:  # a consumer's failure must not stop the engine
            log.exception("delivering a chunk failed")
