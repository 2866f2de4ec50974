"""`llmctl serve`: a real server process on a free loopback port, driven by the official `openai` client.

Most tests share one server on the tiny model (module scope); shutdown, disconnect and auth tests start their
own. Optional backends skip cleanly when their package is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import build_tiny_llama

openai = pytest.importorskip("openai")

START_TIMEOUT = 240  # seconds: the machine may be loaded; importing torch and loading the model comes first


class ServerProcess:
    """`llmctl serve ARGS` in a subprocess; `url` once it logs "listening on http://…"."""

    def __init__(self, args: list[str], home: Path, env: dict | None = None):
        full_env = {**os.environ, "LLMCTL_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
        code = "from llmctl.cli._entry import run; run()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--port", "0", *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"listening on (http://[\w.\[\]:]+)", line)
            if found:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> ServerProcess:
        self._ready.wait(START_TIMEOUT)
        assert self.url, "server did not start:\n" + "".join(self.lines[-30:])
        return self

    def client(self, api_key: str = "none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    """(status, parsed JSON or text) of a raw HTTP request."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


def metric(url: str, name: str) -> float:
    """The value of one Prometheus sample, e.g. 'llmctl_running_sequences{model="tiny"}' (0 when absent)."""
    _, text = http("GET", url + "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _register(home: Path, src: Path, name: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LLMCTL_HOME": str(home)}
    code = (
        f"from llmctl.models.importer import import_model; from llmctl.models.registry import Registry; "
        f"import_model(Registry(), {str(src)!r}, {name!r}, link=True)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def tiny_server(tmp_path_factory, model_dir: Path, *args: str) -> ServerProcess:
    """`llmctl serve --model tiny ARGS` over model_dir, registered in a home of its own (module fixtures)."""
    home = tmp_path_factory.mktemp("serve-home")
    _register(home, model_dir, "tiny")
    return ServerProcess(["--model", "tiny", *args], home).wait_ready()


@pytest.fixture(scope="module")
def served_home(tmp_path_factory, tiny_llama_dir) -> Path:
    home = tmp_path_factory.mktemp("serve-home")
    _register(home, tiny_llama_dir, "tiny")
    return home


@pytest.fixture(scope="module")
def server(served_home):
    srv = ServerProcess(["--model", "tiny", "--max-concurrency", "4"], served_home).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory) -> Path:
    """A bigger random LLaMA (6 layers, 4k context) that never picks eos greedily: long, slow answers."""
    import torch
    from transformers import AutoModelForCausalLM

    dest = tmp_path_factory.mktemp("slow-llama")
    build_tiny_llama(dest, hidden_size=256, intermediate_size=768, num_hidden_layers=6, max_position_embeddings=4096)
    model = AutoModelForCausalLM.from_pretrained(dest)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] = 0.0  # logit 0: below the largest of 383 random logits
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def _tiny_tokenizer(path: Path):
    from llmctl.models.loading import load_tokenizer

    return load_tokenizer(str(path))


# ---- the OpenAI endpoints ---------------------------------------------------------------------------------


def test_models_health_and_metrics(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    status, body = http("GET", server.url + "/health")
    assert status == 200 and body == {"status": "ok", "models": ["tiny"]}
    status, text = http("GET", server.url + "/metrics")
    assert status == 200 and "llmctl_queue_depth" in text and "llmctl_time_to_first_token_seconds" in text


def test_chat_matches_generate_and_counts_usage(server, tiny_model, tiny_llama_dir):
    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import generate

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    resp = server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    choice = resp.choices[0]
    expected = generate(
        tiny_model,
        [{"id": 1, "messages": messages}],
        resolve_config("generate", explicit={"device": "cpu", "max_new_tokens": 10, "backend": "hf"}),
    )
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.items[0]["output"]
    tok = _tiny_tokenizer(tiny_llama_dir)
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert resp.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert resp.usage.completion_tokens == expected.items[0]["new_tokens"]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert choice.finish_reason == ("length" if resp.usage.completion_tokens == 10 else "stop")


def test_chat_streaming_equals_non_streaming(server):
    client = server.client()
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Tell me about Paris"}], max_tokens=16, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_streaming_and_n(server):
    client = server.client()
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0)
    full = client.completions.create(**kw)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
    assert streamed == full.choices[0].text
    sampled = dict(model="tiny", prompt="The", max_tokens=8, temperature=1.0, seed=3, n=3)
    a, b = client.completions.create(**sampled), client.completions.create(**sampled)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded: reproducible
    assert 3 <= a.usage.completion_tokens <= 3 * 8
    batch = client.completions.create(
        model="tiny", prompt=["The quick brown fox", "Paris"], max_tokens=12, temperature=0
    )
    assert batch.choices[0].text == full.choices[0].text and len(batch.choices) == 2


def test_stop_sequences(server):
    client = server.client()
    kw = dict(model="tiny", prompt="Language models predict", max_tokens=24, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = client.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == cut.text


def test_logprobs(server):
    resp = server.client().completions.create(model="tiny", prompt="The", max_tokens=4, temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    assert len(lp.token_logprobs) == resp.usage.completion_tokens
    assert all(len(top) == 2 for top in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    chat = server.client().chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 3 for c in content)


def test_greedy_answers_are_the_same_alone_or_together(server):
    client = server.client()
    prompts = [
        "The quick brown fox",
        "Paris",
        "Language models predict the next token from",
        "Question: Which gas",
        "Café, naïve",
        "Below is an instruction",
        "What is the capital",
        "accents are bytes",
    ]

    def ask(p):
        return client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def test_bad_requests_get_4xx_json_never_500(server):
    url = server.url
    client = server.client()
    status, body = http("POST", url + "/v1/completions", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = http("POST", url + "/v1/chat/completions", b"[1, 2]", {"Content-Type": "application/json"})
    assert status == 400 and "JSON object" in body["error"]["message"]
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="x", extra_body={"max_tokens": "ten"})
    assert exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="x", max_tokens=1000)  # the tiny model's context is 256
    assert exc.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="word " * 300, max_tokens=1)
    assert exc.value.body["code"] == "context_length_exceeded"
    status, body = http("POST", url + "/v1/completions", json.dumps({"prompt": "x" * (2 << 20)}).encode())
    assert status == 413 and "error" in body
    status, body = http("GET", url + "/v1/nothing-here")
    assert status == 404 and "error" in body
    status, body = http("GET", url + "/v1/completions")
    assert status == 405 and "error" in body
    assert client.completions.create(model="tiny", prompt="still alive", max_tokens=2).choices  # server still up
    _, text = http("GET", url + "/metrics")
    assert not re.search(r'llmctl_requests_total\{[^}]*status="5\d\d"', text)


JSON = {"Content-Type": "application/json"}
HOSTILE = [  # (endpoint, raw body, headers, status): well-formed requests with values no sampler can take
    ("completions", {"prompt": "x", "temperature": 1e-300}, JSON, 400),
    ("completions", {"prompt": "x", "temperature": 1e-40, "max_tokens": 2}, JSON, 400),
    ("completions", {"prompt": "x", "repetition_penalty": 1e-300}, JSON, 400),
    ("completions", {"prompt": "x", "repetition_penalty": 1e300}, JSON, 400),
    ("completions", {"prompt": "x", "seed": 1e30}, JSON, 400),
    ("completions", {"prompt": "x", "seed": -1}, JSON, 400),
    ("completions", {"prompt": "x", "seed": 2**64}, JSON, 400),
    ("completions", {"prompt": "x", "top_k": 2**64}, JSON, 400),
    ("completions", {"prompt": "x", "top_k": 100_000}, JSON, 400),  # over the tiny vocabulary
    ("completions", {"prompt": [10**6]}, JSON, 400),  # a token id past the embedding rows
    ("completions", b'{"prompt": "\\ud800 half a pair"}', JSON, 400),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', JSON, 400),
    ("completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", JSON, 400),
    ("completions", {"prompt": ["a", "b"], "n": 40, "max_tokens": 2}, JSON, 400),  # 80 sequences: over the cap
    ("completions", {"prompt": "x", "max_tokens": 2}, {"Content-Type": "text/plain"}, 415),  # a page's CSRF POST
    ("completions", {"prompt": "x", "max_tokens": 2}, {"Content-Type": "application/x-www-form-urlencoded"}, 415),
]


def test_hostile_requests_fail_alone_and_leave_a_greedy_answer_unchanged(server):
    """Each hostile request is a 4xx for itself; a greedy request decoding beside them gives its text alone."""
    client = server.client()

    def greedy():
        return client.completions.create(model="tiny", prompt="Paris is", max_tokens=48, temperature=0).choices[0].text

    alone = greedy()
    with ThreadPoolExecutor(4) as pool:
        normal = pool.submit(greedy)
        for endpoint, body, headers, want in HOSTILE:
            raw = body if isinstance(body, bytes) else json.dumps({"model": "tiny", **body}).encode()
            status, answer = http("POST", f"{server.url}/v1/{endpoint}", raw, headers)
            assert status == want, (body if not isinstance(body, bytes) else body[:60], status, answer)
            assert set(answer["error"]) == {"message", "type", "param", "code"}
        assert normal.result() == alone
    status, health = http("GET", server.url + "/health")
    assert status == 200 and health["status"] == "ok"
    _, text = http("GET", server.url + "/metrics")
    assert not re.search(r'llmctl_requests_total\{[^}]*status="5\d\d"', text)


def test_engine_admission_counts_prompt_tokens(tiny_model):
    """The queue holds at most max_queue_tokens prompt tokens: a long prompt waits its turn or gets a 503."""
    from llmctl.inference import backends
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine, QueueFull
    from llmctl.inference.sampling import SamplingParams
    from llmctl.models.resolve import resolve_model

    backend = backends.create("hf", resolve_model(tiny_model), BackendOptions(max_batch=1, device="cpu"))
    engine = Engine(backend, max_concurrency=1, max_queue=100, max_queue_tokens=30)  # not started: nothing admitted
    params = SamplingParams(max_tokens=2, temperature=0)
    engine.submit(list(range(5, 25)), params, 1, lambda c: None)  # 20 tokens waiting
    with pytest.raises(QueueFull, match="20 prompt tokens"):
        engine.submit(list(range(5, 20)), params, 1, lambda c: None)  # 15 more: over 30
    engine.submit(list(range(5, 15)), params, 1, lambda c: None)  # 10 more: exactly 30
    engine.stop()


def test_engine_fails_one_sequence_whose_sampling_raises_and_keeps_the_batch(tiny_model, monkeypatch):
    """A row whose sampling raises (a backend fault) ends that answer alone; the batch's greedy row is unchanged."""
    from llmctl.inference import backends
    from llmctl.inference.backends import hf
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine
    from llmctl.inference.sampling import SamplingParams
    from llmctl.models.resolve import resolve_model

    backend = backends.create("hf", resolve_model(tiny_model), BackendOptions(max_batch=2, device="cpu"))
    engine = Engine(backend, max_concurrency=2).start()

    def run(params_list):
        chunks = {i: [] for i in range(len(params_list))}
        open_answers, done = [len(params_list)], threading.Event()
        for i, params in enumerate(params_list):

            def sink(chunk, i=i):  # called on the engine's thread: never block here
                chunks[i].append(chunk)
                if chunk.finish_reason:
                    open_answers[0] -= 1
                    if open_answers[0] == 0:
                        done.set()

            engine.submit(backend.codec.encode("The capital"), params, 1, sink)
        assert done.wait(120)
        return chunks

    try:
        greedy = SamplingParams(max_tokens=12, temperature=0)
        (alone,) = run([greedy]).values()
        real = hf.pick_token

        def faulty(logits, params, *rest):
            if params.seed == 666 and params.temperature == 1.0:
                raise RuntimeError("probability tensor contains inf")
            return real(logits, params, *rest)

        monkeypatch.setattr(hf, "pick_token", faulty)
        together = run([greedy, SamplingParams(max_tokens=12, temperature=1.0, seed=666)])
        assert "".join(c.text for c in together[0]) == "".join(c.text for c in alone)
        assert together[0][-1].finish_reason in ("length", "stop") and together[0][-1].error is None
        assert together[1][-1].finish_reason == "error" and "inf" in together[1][-1].error
        assert engine.alive() and engine.running() == 0
    finally:
        engine.stop()


# ---- auth, shutdown, disconnects ------------------------------------------------------------------------


def test_api_key_and_two_models(served_home):
    srv = ServerProcess(
        [
            "--model",
            "tiny",
            "--model",
            "tiny",
            "--served-name",
            "a",
            "--served-name",
            "b",
            "--api-key-env",
            "LLMCTL_TEST_KEY",
        ],
        served_home,
        env={"LLMCTL_TEST_KEY": "s3cret"},
    )
    srv.wait_ready()
    try:
        with pytest.raises(openai.AuthenticationError):
            srv.client().models.list()
        with pytest.raises(openai.AuthenticationError):
            srv.client("wrong").completions.create(model="a", prompt="x", max_tokens=2)
        assert http("GET", srv.url + "/metrics")[0] == 401
        client = srv.client("s3cret")
        assert [m.id for m in client.models.list().data] == ["a", "b"]
        answers = [
            client.completions.create(model=m, prompt="The", max_tokens=6, temperature=0).choices[0].text
            for m in ("a", "b")
        ]
        assert answers[0] == answers[1]  # the same weights behind both names
    finally:
        assert srv.stop() == 0


def test_sigterm_finishes_in_flight_request_and_exits_0(tmp_path_factory, slow_model_dir):
    home = tmp_path_factory.mktemp("slow-home")
    _register(home, slow_model_dir, "slow")
    srv = ServerProcess(["--model", "slow", "--json-logs"], home).wait_ready()
    first = threading.Event()
    result: dict = {}

    def ask():
        text, usage, reasons = "", None, []
        stream = srv.client().completions.create(
            model="slow",
            prompt="The",
            max_tokens=300,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            first.set()
            if chunk.choices:
                text += chunk.choices[0].text
                reasons.append(chunk.choices[0].finish_reason)
            usage = chunk.usage or usage
        result.update(text=text, usage=usage, reason=[r for r in reasons if r])

    worker = threading.Thread(target=ask)
    worker.start()
    assert first.wait(120)
    srv.proc.send_signal(signal.SIGTERM)
    worker.join(180)
    assert srv.proc.wait(180) == 0
    assert result["reason"] == ["length"] and result["usage"].completion_tokens == 300
    with pytest.raises(OSError):
        socket.create_connection((srv.url.split("//")[1].split(":")[0], int(srv.url.rsplit(":", 1)[1])), timeout=5)
    events = [json.loads(line).get("event") for line in srv.lines if line.startswith("{")]
    assert "listening" in events and "stopped" in events


def test_client_disconnect_frees_its_slot(tmp_path_factory, slow_model_dir):
    home = tmp_path_factory.mktemp("slow-home2")
    _register(home, slow_model_dir, "slow")
    srv = ServerProcess(["--model", "slow", "--max-concurrency", "1"], home).wait_ready()
    try:
        stream = srv.client().completions.create(
            model="slow", prompt="The", max_tokens=3500, temperature=0, stream=True
        )
        next(iter(stream))
        assert metric(srv.url, 'llmctl_running_sequences{model="slow"}') == 1
        stream.close()
        deadline = time.time() + 60
        while time.time() < deadline and (
            metric(srv.url, 'llmctl_requests_cancelled_total{model="slow"}') < 1
            or metric(srv.url, 'llmctl_running_sequences{model="slow"}') > 0
        ):
            time.sleep(0.2)
        assert metric(srv.url, 'llmctl_requests_cancelled_total{model="slow"}') == 1
        assert metric(srv.url, 'llmctl_running_sequences{model="slow"}') == 0
        # the one slot is free again: a new request is answered at once, not after 3,500 tokens
        assert srv.client().completions.create(model="slow", prompt="x", max_tokens=2, temperature=0).choices
    finally:
        assert srv.stop() == 0


# ---- backends ---------------------------------------------------------------------------------------------


def test_backend_table_matches_schemas():
    from llmctl.inference.backends import CHOICES
    from llmctl.schemas.serve import BACKENDS

    assert tuple(BACKENDS) == CHOICES


def test_auto_backend_selection(tiny_model, tmp_path, monkeypatch):
    from llmctl.inference import backends
    from llmctl.inference.backends import llamacpp, openvino
    from llmctl.models.resolve import ResolvedModel, resolve_model

    resolved = resolve_model(tiny_model)
    monkeypatch.setattr(backends, "_cuda", lambda: False)
    monkeypatch.setattr(backends, "installed", lambda name: name == "hf")  # (with openvino: test_backend_default)
    assert backends.choose(resolved, "cpu") == ("hf", "no faster backend fits this model here")
    assert backends.choose(resolved, "cpu", hf_only="beam search")[0] == "hf"
    assert backends.choose(resolved, "mps")[0] == "hf"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    as_gguf = ResolvedModel(path=str(gguf), format="gguf")
    assert llamacpp.gguf_file_of(as_gguf) == gguf
    monkeypatch.setattr(backends, "installed", lambda name: name in ("hf", "llamacpp"))
    assert backends.choose(as_gguf, "cpu")[0] == "llamacpp"
    monkeypatch.setattr(backends, "installed", lambda name: name in ("hf", "openvino"))
    assert backends.choose(ResolvedModel(path=str(tmp_path), format="openvino"), "cpu")[0] == "openvino"
    assert backends.choose(as_gguf, "cpu")[0] == "hf"
    monkeypatch.setattr(openvino, "cached_conversion", lambda r, bits=8: object() if bits == 8 else None)
    assert backends.choose(resolved, "cpu")[0] == "hf"  # a cached int8 conversion is used only when named
    monkeypatch.setattr(backends, "installed", lambda name: True)
    monkeypatch.setattr(backends, "_cuda", lambda: True)
    monkeypatch.setattr(backends._module("vllm"), "vllm_available", lambda: None)
    assert backends.choose(resolved, "auto")[0] == "vllm"
    assert backends.choose(resolved, "cpu")[0] != "vllm"


def test_default_model_entry_points_at_its_gguf(tmp_path):
    from llmctl.inference.backends.llamacpp import gguf_file_of
    from llmctl.models.registry import ModelEntry
    from llmctl.models.resolve import ResolvedModel

    src = tmp_path / "x.Q4_1.gguf"
    src.write_bytes(b"GGUF")
    entry = ModelEntry(name="m", format="hf", path=str(tmp_path), meta={"source": str(src), "source_format": "gguf"})
    assert gguf_file_of(ResolvedModel(path=str(tmp_path), format="hf", name="m", entry=entry)) == src
    entry.meta = {"source": str(tmp_path / "folder")}
    assert gguf_file_of(ResolvedModel(path=str(tmp_path), format="hf", name="m", entry=entry)) is None


def test_missing_backend_package_is_one_clear_error(cli, tiny_model, monkeypatch):
    from llmctl.inference import backends

    monkeypatch.setattr(backends, "installed", lambda name: name == "hf")
    res = cli("generate", "--model", tiny_model, "--prompt", "Hi", "--backend", "llamacpp", "--max-new-tokens", "2")
    assert res.exit_code == 1
    assert res.stderr == (
        "Error: the llamacpp backend needs the llama_cpp package, which is not installed; "
        "pip install 'llmctl[llamacpp]'\n"
    )


def test_generate_stats_name_the_backend(cli, tiny_model):
    res = cli("generate", "--model", tiny_model, "--prompt", "Hi", "--max-new-tokens", "2", "--stats")
    assert res.exit_code == 0, res.stderr
    assert "backend hf" in res.stderr


def test_engine_cancel_frees_slot_and_stop_sequences(tiny_model):
    """The engine alone: a cancelled request leaves the batch at the next step; others are unaffected."""
    from llmctl.inference import backends
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine
    from llmctl.inference.sampling import SamplingParams
    from llmctl.models.resolve import resolve_model

    backend = backends.create("hf", resolve_model(tiny_model), BackendOptions(max_batch=2, device="cpu"))
    engine = Engine(backend, max_concurrency=2).start()
    try:
        got, done = [], threading.Event()
        first = engine.submit(
            backend.codec.encode("The"), SamplingParams(max_tokens=200, temperature=0), 1, lambda c: None
        )
        engine.cancel(first)

        def sink(chunk):
            got.append(chunk)
            if chunk.finish_reason:
                done.set()

        engine.submit(backend.codec.encode("Paris"), SamplingParams(max_tokens=5, temperature=0), 1, sink)
        assert done.wait(120)
        assert got[-1].finish_reason in ("length", "stop") and got[-1].completion_tokens <= 5
        deadline = time.time() + 30
        while engine.running() and time.time() < deadline:
            time.sleep(0.05)
        assert engine.running() == 0 and engine.queue_depth() == 0
    finally:
        engine.stop()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("openvino_genai"), reason="openvino-genai not installed")
def test_openvino_backend_serves_and_batches(served_home):
    srv = ServerProcess(["--model", "tiny", "--backend", "openvino", "--max-concurrency", "4"], served_home)
    srv.wait_ready()
    try:
        client = srv.client()
        prompts = ["The quick brown fox", "Paris", "Language models", "Question: Which gas"]

        def ask(p):
            return client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0).choices[0].text

        alone = [ask(p) for p in prompts]
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(ask, prompts)) == alone
        card = client.models.list().data[0]
        assert card.model_extra["backend"] == "openvino"
        streamed = "".join(
            c.choices[0].text
            for c in client.completions.create(
                model="tiny", prompt=prompts[0], max_tokens=12, temperature=0, stream=True
            )
        )
        assert streamed == alone[0]
    finally:
        assert srv.stop() == 0
    from llmctl.models.registry import Registry

    child = Registry(served_home).get("tiny-ov-int8")  # converted once, with lineage
    assert child.format == "openvino" and child.parents == ["tiny"] and child.meta["converted_from"] == "tiny"


def test_vllm_backend_skips_without_cuda():
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU")
    from llmctl.inference.backends.vllm import vllm_available

    assert vllm_available() is None


# ---- CLI input errors -------------------------------------------------------------------------------------


def test_cli_bad_input(cli, tiny_model, monkeypatch):
    monkeypatch.delenv("LLMCTL_NO_SUCH_KEY", raising=False)
    res = cli("serve", "--model", tiny_model, "--api-key-env", "LLMCTL_NO_SUCH_KEY")
    assert res.exit_code == 2
    assert res.stderr == (
        "Error: --api-key-env LLMCTL_NO_SUCH_KEY: the environment variable LLMCTL_NO_SUCH_KEY is "
        "not set or empty; export LLMCTL_NO_SUCH_KEY=<key> before starting the server\n"
    )
    res = cli("serve", "--model", tiny_model, "--served-name", "a", "--served-name", "b", "--port", "0")
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: 2 --served-name for 1 --model")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        res = cli("serve", "--model", tiny_model, "--port", port)
        assert res.exit_code == 1 and res.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}")
    finally:
        busy.close()
    res = cli("serve", "--model", "no-such-model", "--port", "0")
    assert res.exit_code == 1 and res.stderr.startswith("Error: no model named 'no-such-model'")
    res = cli("serve", "--backend", "fastest")
    assert (res.exit_code, res.stderr) == (
        2,
        "Error: --backend fastest: must be one of auto, hf, openvino, llamacpp, vllm\n",
    )


def test_cli_dry_run(cli):
    res = cli("serve", "--port", "9000", "--backend", "hf", "--dry-run")
    assert res.exit_code == 0
    assert "port: 9000" in res.stdout and "backend: hf" in res.stdout and "host: 127.0.0.1" in res.stdout


# ---- the real default model --------------------------------------------------------------------------------


@pytest.mark.default_model
def test_default_model_answers_over_http(default_model, llmctl_home):
    srv = ServerProcess(["--model", default_model, "--backend", "hf"], llmctl_home).wait_ready()
    try:
        resp = srv.client().chat.completions.create(
            model=default_model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=20,
            temperature=0,
        )
        assert "Paris" in resp.choices[0].message.content
    finally:
        assert srv.stop() == 0


@pytest.mark.default_model
def test_default_model_on_llamacpp_matches_llama_cpp_itself(default_model, llmctl_home):
    """The llamacpp backend answers exactly as llama-cpp-python's own chat completion on the same GGUF.

    (Not "Paris": at the first token llama.cpp's Q4_1 kernels, which quantize activations to 8 bits, rank
    "L'" 0.09 logits above "The", where the dequantized fp32 model ranks them the other way.)
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    from llmctl.models.default import gguf_path

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    llm = llama_cpp.Llama(model_path=str(gguf_path()), n_ctx=512, n_threads=1, verbose=False)
    expected = llm.create_chat_completion(messages=messages, temperature=0, max_tokens=20)
    srv = ServerProcess(["--model", default_model, "--backend", "llamacpp"], llmctl_home).wait_ready()
    try:
        client = srv.client()
        kw = {"model": default_model, "messages": messages, "max_tokens": 20, "temperature": 0}
        resp = client.chat.completions.create(**kw)
        assert resp.choices[0].message.content == expected["choices"][0]["message"]["content"]
        assert resp.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
        assert client.models.list().data[0].model_extra["backend"] == "llamacpp"
        streamed = "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices
        )
        assert streamed == resp.choices[0].message.content
    finally:
        assert srv.stop() == 0


def test_generate_one_shot_engine_path_matches_hf_generate(tiny_model):
    """`generate` on a non-hf backend goes through the engine; on the hf backend both paths must agree."""
    from llmctl.config.profiles import resolve_config
    from llmctl.inference.generate import generate, generate_on_backend
    from llmctl.models.resolve import resolve_model

    items = [{"id": 1, "prompt": "The quick brown fox"}, {"id": 2, "prompt": "Paris"}]
    config = resolve_config(
        "generate", explicit={"device": "cpu", "max_new_tokens": 12, "chat": False, "backend": "hf", "stop": ["zz"]}
    )
    via_generate = generate(tiny_model, items, config)
    via_engine = generate_on_backend("hf", "test", resolve_model(tiny_model), items, config)
    assert [r["output"] for r in via_engine.items] == [r["output"] for r in via_generate.items]
    assert [r["new_tokens"] for r in via_engine.items] == [r["new_tokens"] for r in via_generate.items]
    assert via_engine.stats["backend"] == "hf" and via_generate.stats["backend"] == "hf"
