"""Benchmark `llmctl serve`: every backend against llama.cpp's own server, concurrency, and a load run.

1. Single stream: 128 new tokens, greedy, streamed chat completions (after one warm-up): tokens/s and time to
   first token of each llmctl backend, next to `python -m llama_cpp.server` on the same GGUF file and threads
   (when llama-cpp-python is installed). Each side's weights are named (GGUF Q4_1, OpenVINO int8, HF fp32).
2. Concurrency: 1 / 4 / 16 clients sending --requests requests each level: aggregate tokens/s, p50/p95 time to
   first token and per-token latency (per backend).
3. Load run (first backend): --load-requests mixed streaming/non-streaming requests, --malformed of them broken
   (bad JSON, wrong types, unknown model, too long) and --hostile of them well-formed but hostile (tiny
   temperatures and penalties, out-of-range seeds and top_k, lone surrogates, token ids past the vocabulary):
   server errors (5xx or dropped connections) must be 0, every good request a 200, every bad one a 4xx,
   and resident memory at the end ≤ 1.2x of that after the first 100.
Optional --perplexity FILE: token perplexity of each side's weights on the first --ppl-tokens tokens.

Prints one JSON document on stdout; progress on stderr. Take numbers on an idle machine only.

Examples:
    .venv/bin/python benchmarks/serve.py                                    # default model, every backend
    .venv/bin/python benchmarks/serve.py --backends hf --levels 1,4 --requests 8 --new-tokens 16 \\
        --load-requests 100 --no-llama-server                               # smoke run
    .venv/bin/python benchmarks/serve.py --model smol-alpaca --backends hf,openvino
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

PROMPT = "Write a long story about a robot who learns to paint. Describe each step in detail."
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain photosynthesis briefly.",
    "Give three tips for staying healthy.",
    "What is 12 times 7?",
    "Describe the water cycle.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- servers ------------------------------------------------------------------------------------------------


class Server:
    """A server subprocess; url once its log says where it listens."""

    def __init__(
        self, cmd: list[str], pattern: str, env: dict | None = None, port: int | None = None, cwd: str | None = None
    ):
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.url, self.lines, self._ready = None, [], threading.Event()
        self._pattern, self._port = re.compile(pattern), port
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            m = self._pattern.search(line)
            if m and not self.url:
                self.url = m.group(1) if m.groups() else f"http://127.0.0.1:{self._port}"
                self._ready.set()
        self._ready.set()

    def wait(self, timeout: float = 900) -> Server:
        self._ready.wait(timeout)
        if not self.url:
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-20:]))
        return self

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS")) / 1024

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def llmctl_server(model: str, backend: str, threads: int, concurrency: int, extra: tuple[str, ...] = ()) -> Server:
    cmd = [
        sys.executable,
        "-c",
        "from llmctl.cli.main import run; run()",
        "serve",
        "--model",
        model,
        "--backend",
        backend,
        "--port",
        "0",
        "--threads",
        str(threads),
        "--max-concurrency",
        str(concurrency),
        *extra,
    ]
    return Server(cmd, r"listening on (http://[\d.]+:\d+)").wait()


def llama_server(gguf: str, threads: int, n_ctx: int = 2048) -> Server:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        gguf,
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(n_ctx),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Server(cmd, r"Uvicorn running on", port=port).wait()


# ---- one request ------------------------------------------------------------------------------------------


def post(url: str, path: str, body: bytes, stream: bool) -> dict:
    """POST and read the whole answer: status, token count, arrival time of the first and last token."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    started = time.perf_counter()
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        first = last = None
        tokens = pieces = 0
        if stream and resp.status == 200:
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
                choices = obj.get("choices") or []
                piece = choices[0].get("delta", {}).get("content") if choices else None
                if piece or (choices and choices[0].get("text")):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces += 1
            tokens = tokens or pieces  # a server without stream usage: one token per chunk (llama_cpp.server)
            data = None
        else:
            data = resp.read()
            last = time.perf_counter()
            if resp.status == 200:
                tokens = json.loads(data)["usage"]["completion_tokens"]
        return {
            "status": resp.status,
            "tokens": tokens,
            "start": started,
            "first": first,
            "last": last,
            "end": time.perf_counter(),
        }
    except (OSError, http.client.HTTPException) as exc:
        return {
            "status": None,
            "error": repr(exc),
            "tokens": 0,
            "start": started,
            "first": None,
            "last": None,
            "end": time.perf_counter(),
        }
    finally:
        conn.close()


def chat_body(model: str, text: str, max_tokens: int, stream: bool) -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


# ---- measurements -----------------------------------------------------------------------------------------


def single_stream(url: str, model: str, new_tokens: int, repeats: int) -> dict:
    post(url, "/v1/chat/completions", chat_body(model, "Hi", 8, True), True)  # warm-up
    best = None
    for _ in range(repeats):
        r = post(url, "/v1/chat/completions", chat_body(model, PROMPT, new_tokens, True), True)
        if r["status"] != 200 or not r["first"]:
            raise RuntimeError(f"single-stream request failed: {r}")
        row = {
            "tokens": r["tokens"],
            "ttft_ms": round(1000 * (r["first"] - r["start"]), 1),
            "tokens_per_s": round(r["tokens"] / (r["end"] - r["start"]), 2),
            "decode_tokens_per_s": round((r["tokens"] - 1) / (r["last"] - r["first"]), 2)
            if r["tokens"] > 1 and r["last"] > r["first"]
            else None,
        }
        if best is None or row["tokens_per_s"] > best["tokens_per_s"]:
            best = row
    return best


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


def concurrency(url: str, model: str, clients: int, requests: int, new_tokens: int) -> dict:
    bodies = [chat_body(model, QUESTIONS[i % len(QUESTIONS)] + f" (#{i})", new_tokens, True) for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: post(url, "/v1/chat/completions", b, True), bodies))
    wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200 and r["first"]]
    ttft = [r["first"] - r["start"] for r in ok]
    per_token = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1 and r["last"] > r["first"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients,
        "requests": requests,
        "ok": len(ok),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "aggregate_tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "per_token_p50_s": pct(per_token, 0.5),
        "per_token_p95_s": pct(per_token, 0.95),
    }


def malformed(model: str, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(5)
    if kind == 0:
        return "/v1/chat/completions", b'{"messages": [ {"role": "user", "content": "broken'
    if kind == 1:
        return "/v1/completions", json.dumps({"model": model, "prompt": "x", "max_tokens": "ten"}).encode()
    if kind == 2:
        return "/v1/chat/completions", json.dumps({"model": "no-such-model", "messages": []}).encode()
    if kind == 3:
        return "/v1/completions", json.dumps({"model": model, "prompt": "x", "max_tokens": 10**7}).encode()
    return "/v1/chat/completions", json.dumps({"model": model, "messages": "hello"}).encode()


def hostile(model: str, rng: random.Random) -> tuple[str, bytes]:
    """Well-formed requests whose values no sampler can take (issue 29): each must be a 4xx for itself alone."""
    base = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    kind = rng.randrange(6)
    if kind == 0:
        return "/v1/chat/completions", json.dumps({**base, "temperature": 1e-300}).encode()
    if kind == 1:
        return "/v1/chat/completions", json.dumps({**base, "repetition_penalty": 1e-300}).encode()
    if kind == 2:
        return "/v1/chat/completions", json.dumps({**base, "seed": -1}).encode()
    if kind == 3:
        return "/v1/chat/completions", json.dumps({**base, "top_k": 2**64}).encode()
    if kind == 4:
        return "/v1/completions", b'{"model": "' + model.encode() + b'", "prompt": "\\ud800", "max_tokens": 4}'
    return "/v1/completions", json.dumps({"model": model, "prompt": [10**9], "max_tokens": 4}).encode()


def load_run(
    server: Server, model: str, total: int, bad_share: float, clients: int, new_tokens: int, hostile_share=0.0
) -> dict:
    rng = random.Random(0)
    jobs = []
    for i in range(total):
        roll = rng.random()
        if roll < bad_share:
            jobs.append(("bad", *malformed(model, rng), False))
        elif roll < bad_share + hostile_share:
            jobs.append(("hostile", *hostile(model, rng), False))
        else:
            stream = rng.random() < 0.5
            jobs.append(
                ("good", "/v1/chat/completions", chat_body(model, QUESTIONS[i % 8], new_tokens, stream), stream)
            )
    rss = {}

    def run(i_job):
        i, (kind, path, body, stream) = i_job
        r = post(server.url, path, body, stream)
        if i == 100:
            rss["after_100"] = server.rss_mb()
        return kind, r

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, enumerate(jobs)))
    rss["end"] = server.rss_mb()
    server_errors = sum(1 for _, r in results if r["status"] is None or r["status"] >= 500)
    bad = [r for kind, r in results if kind == "bad"]
    mean = [r for kind, r in results if kind == "hostile"]
    good = [r for kind, r in results if kind == "good"]
    return {
        "requests": total,
        "malformed": len(bad),
        "hostile": len(mean),
        "server_errors": server_errors,
        "malformed_answered_4xx": sum(1 for r in bad if r["status"] and 400 <= r["status"] < 500),
        "hostile_answered_4xx": sum(1 for r in mean if r["status"] and 400 <= r["status"] < 500),
        "good": len(good),
        "good_ok": sum(1 for r in good if r["status"] == 200),
        "good_failed": sum(1 for r in good if r["status"] != 200),
        "rss_mb": rss,
        "rss_ratio": round(rss["end"] / rss["after_100"], 3) if rss.get("after_100") else None,
    }


# ---- perplexity of each side's weights ----------------------------------------------------------------------


def perplexities(model: str, backends: list[str], gguf: str | None, path: str, tokens: int) -> dict:
    from llmctl.evaluate.perplexity import perplexity
    from llmctl.inference.backends.openvino import cached_conversion
    from llmctl.models.loading import load_model
    from llmctl.models.resolve import resolve_model

    text = open(path, encoding="utf-8").read()
    resolved = resolve_model(model)
    out = {}
    loaded = load_model(resolved, dtype="float32", device="cpu")
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    text = loaded.tokenizer.decode(ids)
    out["hf fp32"] = perplexity(loaded.model, loaded.tokenizer, text, seqlen=512, stride=512)
    ov = cached_conversion(resolved)
    if "openvino" in backends and ov is not None:
        ovl = load_model(ov.path, dtype="float32", device="cpu")
        out[f"openvino int{ov.meta.get('bits')}"] = perplexity(ovl.model, ovl.tokenizer, text, seqlen=512, stride=512)
    if gguf:
        out["llama.cpp " + os.path.basename(gguf)] = llama_perplexity(gguf, ids)
    return out


def llama_perplexity(gguf: str, ids: list[int], window: int = 512) -> float:
    """Token perplexity through llama.cpp on the same token ids (non-overlapping windows)."""
    import math

    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=window, logits_all=True, verbose=False)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll += float((logz - logits[np.arange(len(chunk) - 1), chunk[1:]]).sum())
        count += len(chunk) - 1
    return math.exp(nll / count)


# ---- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--backends", default=None, help="comma list; default: every backend installed here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--conc-tokens", type=int, default=64, help="new tokens per request in the concurrency runs")
    ap.add_argument("--load-requests", type=int, default=2000)
    ap.add_argument("--malformed", type=float, default=0.05)
    ap.add_argument("--hostile", type=float, default=0.02, help="share of well-formed hostile requests (issue 29)")
    ap.add_argument("--no-llama-server", action="store_true")
    ap.add_argument("--perplexity", default=None, help="text file (e.g. wikitext-2 wiki.test.raw)")
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--home", default=None, help="LLMCTL_HOME (reuses conversions made there)")
    args = ap.parse_args()
    os.environ["LLMCTL_HOME"] = args.home or os.environ.get("LLMCTL_HOME") or tempfile.mkdtemp(prefix="llmctl-bench-")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from llmctl.inference import backends as table
    from llmctl.inference.backends.llamacpp import gguf_file_of
    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(args.model)
    names = (
        args.backends.split(",") if args.backends else [b for b in table.BACKENDS if table.installed(b) and b != "vllm"]
    )
    gguf = gguf_file_of(resolved)
    levels = [int(x) for x in args.levels.split(",") if x]
    out: dict = {
        "settings": vars(args),
        "model": args.model,
        "gguf": str(gguf) if gguf else None,
        "single_stream": {},
        "concurrency": {},
        "load": None,
    }
    for i, name in enumerate(names):
        say(f"llmctl serve --backend {name}")
        srv = llmctl_server(args.model, name, args.threads, max(levels))
        try:
            card = json.loads(http_get(srv.url + "/v1/models"))["data"][0]
            out["single_stream"][name] = {
                "weights": weights_of(name, resolved, gguf),
                **single_stream(srv.url, card["id"], args.new_tokens, args.repeats),
            }
            say(f"  single stream: {out['single_stream'][name]}")
            out["concurrency"][name] = [
                concurrency(srv.url, card["id"], c, args.requests, args.conc_tokens) for c in levels
            ]
            say(f"  concurrency: {out['concurrency'][name]}")
            if i == 0 and args.load_requests:
                out["load"] = {
                    "backend": name,
                    **load_run(srv, card["id"], args.load_requests, args.malformed, max(levels), 16, args.hostile),
                }
                say(f"  load: {out['load']}")
        finally:
            out.setdefault("exit_codes", {})[name] = srv.stop()
    if gguf and not args.no_llama_server and table.installed("llamacpp"):
        say("llama_cpp.server on the same GGUF")
        srv = llama_server(str(gguf), args.threads)
        try:
            model_id = json.loads(http_get(srv.url + "/v1/models"))["data"][0]["id"]
            out["single_stream"]["llama_cpp.server"] = {
                "weights": f"GGUF {gguf.name}",
                **single_stream(srv.url, model_id, args.new_tokens, args.repeats),
            }
            out["concurrency"]["llama_cpp.server"] = [
                concurrency(srv.url, model_id, c, args.requests, args.conc_tokens) for c in levels
            ]
        finally:
            srv.stop()
    ss = out["single_stream"]
    if "llama_cpp.server" in ss:
        best = max((n for n in ss if n != "llama_cpp.server"), key=lambda n: ss[n]["tokens_per_s"], default=None)
        if best and ss["llama_cpp.server"]["tokens_per_s"]:
            ratio = ss[best]["tokens_per_s"] / ss["llama_cpp.server"]["tokens_per_s"]
            out["best_vs_llama_cpp_server"] = {"backend": best, "ratio": round(ratio, 3)}
    if "hf" in ss:
        out["best_vs_hf"] = round(max(v["tokens_per_s"] for v in ss.values()) / ss["hf"]["tokens_per_s"], 3)
    for name, rows in out["concurrency"].items():
        by = {r["clients"]: r["aggregate_tokens_per_s"] for r in rows}
        if 1 in by and max(levels) in by and by[1]:
            out.setdefault("concurrency_scaling", {})[name] = round(by[max(levels)] / by[1], 2)
    if args.perplexity:
        say("perplexity of each side's weights")
        out["perplexity"] = perplexities(
            args.model, names, str(gguf) if gguf else None, args.perplexity, args.ppl_tokens
        )
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


def http_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read().decode()


def weights_of(backend: str, resolved, gguf) -> str:
    if backend == "llamacpp":
        return f"GGUF {gguf.name}" if gguf else "GGUF"
    if backend == "openvino":
        return "OpenVINO IR" if resolved.format == "openvino" else "OpenVINO int8 (converted once)"
    return f"{resolved.format} (dtype auto: fp32 on CPU)"


if __name__ == "__main__":
    main()
