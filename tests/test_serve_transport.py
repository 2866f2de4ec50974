"""`llmctl serve` below the routes: Host check (DNS rebinding), API key on /metrics, header size, read deadlines,
connection limit, streams cut before their first chunk, and the engine watchdog.

Servers run as real processes on a free loopback port (helpers from test_serve); raw sockets send what no HTTP
client would (a stalled body, half a header block, a 12 KB header in pieces). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_serve import JSON, ServerProcess, _register, http, metric, served_home, slow_model_dir  # noqa: F401

KEY = {"Authorization": "Bearer s3cret"}
READ_TIMEOUT = 3.0  # --set read_timeout_s of the `guarded` server: seconds for headers, then for a body
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def guarded(served_home):  # noqa: F811
    srv = ServerProcess(
        [
            "--model",
            "tiny",
            "--allowed-host",
            "myapp.test",
            "--api-key-env",
            "LLMCTL_TEST_KEY",
            "--set",
            f"read_timeout_s={READ_TIMEOUT}",
            "--set",
            "max_header_bytes=8192",  # below h11's own default (16 KiB): shows the setting reaches h11
            "--set",
            f"max_connections={MAX_CONNECTIONS}",
            "--set",
            "keep_alive_s=1",
        ],
        served_home,
        env={"LLMCTL_TEST_KEY": "s3cret"},
    ).wait_ready()
    yield srv
    assert srv.stop() == 0  # the watchdog leaves a normal shutdown alone


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rsplit(":", 1)
    return host, int(port)


def _read_until_closed(sock: socket.socket, wait: float) -> tuple[bytes, bool]:
    """(bytes received, whether the server closed the connection) within `wait` seconds."""
    data, deadline = b"", time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            part = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not part:
            return data, True
        data += part
    return data, False


def _status(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def _body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def _request(path: str, host: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer s3cret\r\n{extra}\r\n".encode()


# ---- Host header (DNS rebinding) and the API key -------------------------------------------------------------


def test_loopback_server_answers_only_loopback_and_allowed_hosts(guarded):
    port = _address(guarded.url)[1]
    for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LocalHost.:{port}", f"[::1]:{port}", "127.8.9.10"):
        status, body = http("GET", guarded.url + "/v1/models", headers={**KEY, "Host": host})
        assert status == 200, (host, body)
    for host in ("myapp.test", "MYAPP.test:443"):  # --allowed-host, any port
        assert http("GET", guarded.url + "/v1/models", headers={**KEY, "Host": host})[0] == 200, host
    for host in (
        "evil.example",
        f"evil.example:{port}",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "0.0.0.0",  # reaches loopback from a browser on Linux and macOS, and no page can be sure it is the user's
        "192.168.1.20",
        "[::2]",
        "myapp.test.evil.example",
    ):
        for path in ("/v1/models", "/metrics", "/health"):
            status, body = http("GET", guarded.url + path, headers={**KEY, "Host": host})
            assert status == 403, (host, path, status)
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["code"] == "host_not_allowed" and "--allowed-host" in body["error"]["message"]
    # refused before the key is looked at: a rebinding page learns nothing from 401 vs 200
    assert http("GET", guarded.url + "/v1/models", headers={"Host": "evil.example"})[0] == 403
    status, body = http(
        "POST", guarded.url + "/v1/completions", b'{"prompt": "x", "max_tokens": 2}', {**KEY, **JSON, "Host": "evil"}
    )
    assert status == 403


def test_metrics_follow_the_api_key(guarded):
    assert http("GET", guarded.url + "/metrics")[0] == 401
    assert http("GET", guarded.url + "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    status, text = http("GET", guarded.url + "/metrics", headers=KEY)
    assert status == 200 and "llmctl_requests_total" in text


def test_host_policy_and_guard_when_bound_elsewhere():
    """Bound to a non-loopback address the Host check applies only with --allowed-host (the Guard alone)."""
    from llmctl.serve.app import ServeSettings
    from llmctl.serve.guard import Guard, host_name, host_policy
    from llmctl.serve.metrics import Metrics

    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost.:80") == "localhost" and host_name("::1") == "::1"
    assert host_name("[::1]junk") == "[::1]junk"
    assert host_policy("0.0.0.0", []) is None and host_policy("192.168.1.5", []) is None
    assert host_policy("0.0.0.0", ["LLM.lan:8000"]) == {"llm.lan"}
    assert host_policy("127.0.0.1", []) == frozenset() and host_policy("::1", ["a.test"]) == {"a.test"}

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def status_for(policy, host: str) -> int:
        guard = Guard(inner, ServeSettings(allowed_hosts=policy), Metrics({}))
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/health", "headers": [(b"host", host.encode())]}
        asyncio.run(guard(scope, receive, send))
        return sent[0]["status"]

    assert status_for(host_policy("0.0.0.0", []), "anything.example") == 200
    elsewhere = host_policy("0.0.0.0", ["llm.lan"])
    assert [status_for(elsewhere, h) for h in ("llm.lan:8000", "127.0.0.1:8000", "evil.example")] == [200, 200, 403]


def test_cli_allowed_host_values(cli, tiny_model):
    res = cli("serve", "--allowed-host", "ok.lan", "--allowed-host", "*", "--model", tiny_model)
    assert (res.exit_code, res.stderr) == (
        2,
        "Error: --allowed-host *: must be host names or IP addresses, e.g. myserver.lan\n",
    )
    res = cli("serve", "--allowed-host", "http://x.lan/", "--model", tiny_model)
    assert res.exit_code == 2 and res.stderr.startswith("Error: --allowed-host http://x.lan/: must be")
    res = cli("serve", "--allowed-host", "llm.lan", "--allowed-host", "[fe80::1]:80", "--dry-run")
    assert res.exit_code == 0 and "- llm.lan\n" in res.stdout and "[fe80::1]:80" in res.stdout
    res = cli("serve", "--set", "max_connections=0", "--dry-run")
    assert res.exit_code == 2 and res.stderr.startswith("Error: --set max_connections=0: must be at least 1")


def test_uvicorn_settings_follow_the_config():
    from llmctl.config.profiles import resolve_config
    from llmctl.serve.service import uvicorn_config

    config = resolve_config("serve", explicit={"max_concurrency": 16})
    uv = uvicorn_config(object(), config, n_models=2)
    assert uv.limit_concurrency == 4 * 16 * 2 + 64  # one per running sequence, room for waiting/idle/health ones
    assert uv.h11_max_incomplete_event_size == 16384 and uv.timeout_keep_alive == 5.0
    assert uv.http.__name__ == "DeadlineH11Protocol"  # h11 even where httptools is installed
    config = resolve_config("serve", explicit={"max_connections": 10})
    assert uvicorn_config(object(), config, n_models=1).limit_concurrency == 10


# ---- transport limits -----------------------------------------------------------------------------------------


def test_large_headers_are_refused(guarded):
    address = _address(guarded.url)
    with socket.create_connection(address, timeout=30) as sock:  # within the limit: answered
        sock.sendall(_request("/health", "127.0.0.1", "X-Pad: " + "a" * 6000 + "\r\nConnection: close\r\n"))
        response, _ = _read_until_closed(sock, 30)
    assert _status(response) == 200
    with socket.create_connection(address, timeout=30) as sock:  # whole, in one write: the guard's 431
        sock.sendall(_request("/health", "127.0.0.1", "X-Big: " + "a" * 65536 + "\r\n"))
        response, _ = _read_until_closed(sock, 30)
    assert _status(response) == 431, response[:200]
    assert _body(response)["error"]["code"] == "request_header_fields_too_large"
    with socket.create_connection(address, timeout=30) as sock:  # in pieces: h11 stops it past 8 KiB
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nX-Big: ")
        try:
            for _ in range(12):  # 12 KB, 1 KB at a time, never the end of the header block
                sock.sendall(b"a" * 1024)
                time.sleep(0.05)
            response, closed = _read_until_closed(sock, 10)
        except (BrokenPipeError, ConnectionResetError):
            response, closed = b"", True
        took = time.monotonic() - started
    assert closed, "a 12 KB header block was still being read"
    assert _status(response) in (None, 400), response[:200]
    assert took < READ_TIMEOUT - 1, "closed by the header read deadline, not by the size limit"


def test_stalled_body_gets_408_and_the_connection_closes(guarded):
    with socket.create_connection(_address(guarded.url), timeout=30) as sock:
        started = time.monotonic()
        head = _request("/v1/completions", "127.0.0.1", "Content-Type: application/json\r\nContent-Length: 1000\r\n")
        sock.sendall(head.replace(b"GET ", b"POST ", 1) + b'{"prompt": ')  # 11 of 1,000 bytes, then silence
        response, closed = _read_until_closed(sock, READ_TIMEOUT + 20)
        waited = time.monotonic() - started
    assert _status(response) == 408, response[:300]
    assert _body(response)["error"]["code"] == "request_timeout" and closed
    assert READ_TIMEOUT - 0.5 <= waited <= READ_TIMEOUT + 15
    assert http("GET", guarded.url + "/health", headers=KEY)[0] == 200


def test_stalled_headers_and_idle_connections_are_cut(guarded):
    address = _address(guarded.url)
    with socket.create_connection(address, timeout=30) as silent, socket.create_connection(address) as half:
        started = time.monotonic()
        half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a header block, then silence
        for sock in (silent, half):
            response, closed = _read_until_closed(sock, READ_TIMEOUT + 20)
            assert closed and response == b""
        assert time.monotonic() - started >= READ_TIMEOUT - 0.5
    with socket.create_connection(address, timeout=30) as sock:  # keep-alive: closed after keep_alive_s (1 s)
        sock.sendall(_request("/health", "127.0.0.1"))
        started = time.monotonic()
        response, closed = _read_until_closed(sock, 15)
    assert _status(response) == 200 and closed and time.monotonic() - started < 4  # not uvicorn's default 5 s


def test_connection_limit_answers_503_then_recovers(guarded):
    address = _address(guarded.url)
    idle = [socket.create_connection(address, timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)  # accepted by the server (they are cut after READ_TIMEOUT s of silence)
        status, _ = http("GET", guarded.url + "/health", headers=KEY)
        assert status == 503
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and http("GET", guarded.url + "/health", headers=KEY)[0] != 200:
        time.sleep(0.2)
    assert http("GET", guarded.url + "/health", headers=KEY)[0] == 200


# ---- streams cut early ----------------------------------------------------------------------------------------


def test_streams_cut_before_or_at_their_first_chunk_are_cancelled(tmp_path_factory, slow_model_dir):  # noqa: F811
    home = tmp_path_factory.mktemp("slow-transport")
    _register(home, slow_model_dir, "slow")
    srv = ServerProcess(["--model", "slow", "--max-concurrency", "20"], home).wait_ready()
    address = _address(srv.url)
    running = 'llmctl_running_sequences{model="slow"}'

    def stream_request(i: int) -> bytes:
        endpoint, body = (
            ("completions", {"prompt": "The", "max_tokens": 3500})
            if i % 2
            else ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3500})
        )
        raw = json.dumps({"model": "slow", "temperature": 0, "stream": True, **body}).encode()
        head = f"POST /v1/{endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        return head.encode() + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw

    def cut_at_first_chunk(i: int) -> bool:
        with socket.create_connection(address, timeout=120) as sock:
            sock.sendall(stream_request(i))
            data, deadline = b"", time.monotonic() + 120
            while b"data: " not in data and time.monotonic() < deadline:
                part = sock.recv(4096)
                if not part:
                    return False
                data += part
            return b"data: " in data

    try:
        for i in range(10):  # cut right after sending the request
            with socket.create_connection(address, timeout=30) as sock:
                sock.sendall(stream_request(i))
        threads = []
        results: list[bool] = []
        for i in range(10):  # cut after the first chunk
            t = threading.Thread(target=lambda i=i: results.append(cut_at_first_chunk(i)))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(150)
        assert results == [True] * 10
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
            metric(srv.url, running) > 0 or metric(srv.url, 'llmctl_queue_depth{model="slow"}') > 0
        ):
            time.sleep(0.2)
        assert metric(srv.url, running) == 0 and metric(srv.url, 'llmctl_queue_depth{model="slow"}') == 0
        _, text = http("GET", srv.url + "/metrics")
        assert 'status="500"' not in text  # a client gone before its body was read is no server error
    finally:
        assert srv.stop() == 0


def test_stream_gone_before_its_generator_starts_is_cancelled(tiny_model):
    """In process: the client is gone at once and the server's send waits (flow control, or a server that hands
    messages over a queue): Starlette's cancellation lands in sending the response start, before the stream's
    generator ran a line (so its `finally` never runs); the job must be released all the same. A client gone
    before its body was read is counted as 499, not as a server error."""
    from llmctl.inference import backends
    from llmctl.inference.backends.base import BackendOptions
    from llmctl.inference.engine import Engine
    from llmctl.models.resolve import resolve_model
    from llmctl.serve.app import ServedModel, ServeSettings, build_app

    resolved = resolve_model(tiny_model)
    engine = Engine(backends.create("hf", resolved, BackendOptions(max_batch=2, device="cpu")), 2).start()
    app = build_app([ServedModel("tiny", engine, resolved, "hf")], ServeSettings())
    body = json.dumps({"prompt": "The", "max_tokens": 200, "temperature": 0, "stream": True}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        await asyncio.sleep(0)

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    try:
        asyncio.run(app(scope, receive, send))
        text = app.server.metrics.render()[0].decode()
        assert 'llmctl_requests_cancelled_total{model="tiny"} 1.0' in text
        deadline = time.monotonic() + 30
        while (engine.running() or engine.queue_depth()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.running() == 0 and engine.queue_depth() == 0
        messages.clear()  # gone before its body was read: nobody to answer, and no server error either
        asyncio.run(app(scope, receive, send))
        text = app.server.metrics.render()[0].decode()
        assert 'endpoint="/v1/completions",status="499"} 1.0' in text and 'status="500"' not in text
    finally:
        engine.stop()


# ---- the engine watchdog --------------------------------------------------------------------------------------

# Runs in the server process before the CLI: the engine's worker thread ends (an exception no `except Exception`
# catches) when it admits the prompt [5, 6, 7, 8, 9], as a backend crashing the thread would.
_DIE_AT_PROMPT = """
import llmctl.inference.engine as engine

class EngineThreadDies(BaseException):
    pass

_step = engine.Engine._step

def step(self, admitted):
    if any(a.request.prompt_ids == [5, 6, 7, 8, 9] for a in admitted):
        raise EngineThreadDies("test: the engine thread ends")
    return _step(self, admitted)

engine.Engine._step = step
from llmctl.cli._entry import run
run()
"""


class PatchedServerProcess(ServerProcess):
    """ServerProcess whose process runs `code` (which then starts the CLI) instead of the CLI alone."""

    def __init__(self, args: list[str], home, code: str):
        env = {**os.environ, "LLMCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--port", "0", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines, self.url, self._ready = [], None, threading.Event()
        threading.Thread(target=self._read, daemon=True).start()


def test_dead_engine_thread_ends_the_process_with_exit_1(served_home):  # noqa: F811
    srv = PatchedServerProcess(
        ["--model", "tiny", "--set", "shutdown_grace_s=2"], served_home, _DIE_AT_PROMPT
    ).wait_ready()
    try:
        assert http("GET", srv.url + "/health")[0] == 200
        with socket.create_connection(_address(srv.url), timeout=30) as sock:  # the request that kills the thread
            raw = json.dumps({"prompt": [5, 6, 7, 8, 9], "max_tokens": 4}).encode()
            head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            sock.sendall(head.encode() + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
            code = srv.proc.wait(60)  # grace 2 s, the watchdog looks each second
    except subprocess.TimeoutExpired:
        pytest.fail("the server kept running with a dead engine:\n" + "".join(srv.lines[-20:]))
    finally:
        srv.stop()
    time.sleep(0.2)  # the reader thread takes the last lines
    assert code == 1, "".join(srv.lines[-20:])
    assert any(line.startswith("Error: the engine of tiny stopped while serving") for line in srv.lines), srv.lines[-5:]
