"""What every backend is: a step-driven token generator over sequences of token ids, plus its text codec.

The engine owns requests, detokenization, stop sequences, max_tokens and eos; a backend only turns prompt ids
into next tokens. `step()` advances every sequence it runs by at least one token (continuous batching backends
admit new sequences between steps); `abort()` frees a sequence's slot at once.

Examples:
    backend.add(Sequence(id=1, prompt_ids=[1, 2, 3], params=SamplingParams(max_tokens=8, temperature=0)))
    for out in backend.step(): print(out.seq_id, out.token)
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from llmctl.inference.sampling import SamplingParams


@dataclass
class BackendOptions:
    """Settings a backend is built with (from `serve`/`generate` options).

    Examples:
        BackendOptions(max_batch=16, max_model_len=4096, threads=2)
    """

    max_batch: int = 16  # sequences decoded together at most
    max_model_len: int | None = None  # prompt + answer tokens at most; None = the model's own context
    threads: int = 0  # CPU threads; 0 = the library's default
    device: str = "auto"
    dtype: str = "auto"
    adapter: str | None = None
    rope: dict | None = None  # a run-time RoPE scaling override (the config's `rope` section; hf only)
    tensor_parallel_size: int = 1
    openvino_bits: int = 8  # weight bits of the OpenVINO IR made for a non-OpenVINO entry
    force_convert: bool = False
    say: object = None  # progress callback(str) for long set-up steps (conversion)


@dataclass
class Sequence:
    """One answer being generated: its id, prompt token ids and decoding settings (seed already resolved)."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class TokenOut:
    """One new token of a sequence; finished is "stop"/"length" when the backend ended it itself.

    error: set (with token None) when this sequence alone failed, e.g. its sampling raised; the engine ends that
    answer with the error and the batch's other sequences go on.
    """

    seq_id: int
    token: int | None
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    finished: str | None = None
    error: str | None = None


class Backend:
    """The interface every backend implements (see the module docstring).

    Attributes: name, codec (text ↔ ids, chat template, eos ids), max_model_len, max_batch, logprobs (whether
    it returns token log-probabilities), prompt_logprobs (whether it scores a prompt's own tokens, for
    `echo` with `logprobs`: then it has `score_prompt(ids, k)`), logit_bias (whether it applies OpenAI's
    `logit_bias`), structured (whether it enforces `SamplingParams.grammar`), info (facts for --stats and
    /v1/models).
    """

    name = "base"
    logprobs = False
    prompt_logprobs = False
    logit_bias = False
    structured = False

    def __init__(self):
        self.codec = None
        self.max_model_len = 0
        self.max_batch = 1
        self.info: dict = {}

    def add(self, seq: Sequence) -> None:
        raise NotImplementedError

    def step(self) -> list[TokenOut]:
        raise NotImplementedError

    def abort(self, seq_id: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HfCodec:
    """Text ↔ token ids, chat template and end tokens through an HF tokenizer.

    Examples:
        codec = HfCodec(tokenizer, model.generation_config)
        codec.decode(codec.encode("Hello"))   # "Hello"
    """

    def __init__(self, tokenizer, generation_config=None):
        self.tokenizer = tokenizer
        self.chat_template = getattr(tokenizer, "chat_template", None)
        eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(i) for i in ids)
        self.vocab_size = len(tokenizer)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, tools=None):
        extra = {"tools": tools} if tools else {}  # only templates that render tools are given them
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize, **extra
        )

    def encode(self, text: str) -> list[int]:
        # no BOS added: prompts are templated text (the template adds what the model expects), as in generate
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


class ThreadedOneAtATime(Backend):
    """A backend around a blocking `run(seq, on_token)` call: one sequence at a time, in a worker thread.

    on_token(token, logprob) returns False when the sequence was aborted, so `run` stops early. Used by
    libraries whose generation call blocks and streams through a callback (HF generate, OpenVINO LLMPipeline).
    """

    poll_seconds = 0.05

    def __init__(self):
        super().__init__()
        self.max_batch = 1
        self._current: Sequence | None = None
        self._aborted = threading.Event()
        self._out: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def run(self, seq: Sequence, on_token) -> str | None:
        """Generate seq, calling on_token(token, logprob) per token; return "length"/"stop" or None."""
        raise NotImplementedError

    def add(self, seq: Sequence) -> None:
        if self._current is not None:
            raise RuntimeError(f"{self.name} runs one sequence at a time")
        self._current, self._out = seq, queue.Queue()
        self._aborted.clear()
        self._thread = threading.Thread(
            target=self._work, args=(seq, self._out), daemon=True, name=f"llmctl-{self.name}"
        )
        self._thread.start()

    def _work(self, seq: Sequence, out: queue.Queue) -> None:
        def on_token(token: int, logprob: float | None = None) -> bool:
            out.put(("token", token, logprob))
            return not self._aborted.is_set()

        try:
            out.put(("end", self.run(seq, on_token), None))
        except BaseException as exc:  # re-raised in the engine's thread by step()
            out.put(("error", exc, None))

    def step(self) -> list[TokenOut]:
        seq = self._current
        if seq is None:
            return []
        items = []
        try:
            items.append(self._out.get(timeout=self.poll_seconds))
            while True:
                items.append(self._out.get_nowait())
        except queue.Empty:
            pass
        outs = []
        for kind, value, logprob in items:
            if kind == "token":
                outs.append(TokenOut(seq.id, value, logprob))
            elif kind == "error":
                self._finish()
                raise value
            else:
                outs.append(TokenOut(seq.id, None, finished=value or "stop"))
                self._finish()
        return outs

    def _finish(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._current, self._thread = None, None

    def abort(self, seq_id: int) -> None:
        if self._current is not None and self._current.id == seq_id:
            self._aborted.set()
            self._finish()

    def close(self) -> None:
        if self._current is not None:
            self.abort(self._current.id)
