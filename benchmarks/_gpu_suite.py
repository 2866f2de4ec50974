"""The driver of benchmarks/gpu_suite.sh: every GPU figure of issue 27 in one run, one JSON.

Steps (each a separate llmctl process, as a user runs it; a failing step is recorded and the next one runs):
gpu name, set-up (model, prompts, tokenized data), `generate` batch 1 and 32 with `--backend hf`, the same
through plain transformers with a static KV cache compiled with CUDA graphs (torch.compile reduce-overhead:
the reference for what hf could reach), `--backend vllm`, `serve --backend vllm` under 1 and 64 concurrent
clients, LoRA and QLoRA `finetune` tokens/s and MFU, `pretrain --profile gpt2-124m` MFU, GPTQ 4-bit `quantize`
time. MFU = tokens/s x (6 N + 12 L H T) / the GPU's dense bf16 peak (N parameters, L layers, H width, T
sequence length: the formula `pretrain` logs, llmctl/pretrain/loop.py), with the peak from the same table.

`--dry-run` runs every step's CPU part with tiny settings (same commands, `--device cpu`, a few tokens/steps);
vllm steps are reported as skipped when vllm cannot run, and their client code is then checked against
`serve --backend hf` (recorded under `cpu_check`).

Examples:
    bash benchmarks/gpu_suite.sh                          # on a CUDA machine: bench-out/gpu_suite.json
    bash benchmarks/gpu_suite.sh --dry-run --model tiny --out /tmp/suite.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate import PROMPTS  # noqa: E402 (the prompts of benchmarks/generate.py)
from startup import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LLMCTL = str(Path(sys.executable).parent / "llmctl")

# per mode: the GPU settings (sized so the whole suite takes <= 8 minutes on an H100/H200) and the dry run's
GPU = dict(device="cuda", dtype="bfloat16", new_tokens=128, ft_steps=30, ft_batch=8, ft_seq=512, pt_steps=30,
           pt_accum=2, pt_overrides=[], calib=(32, 512), text_bytes=None, serve_requests={1: 16, 64: 256},
           serve_tokens=128, serve_wait_s=420, compile=True)  # fmt: skip
DRY = dict(device="cpu", dtype="float32", new_tokens=4, ft_steps=2, ft_batch=1, ft_seq=64, pt_steps=3, pt_accum=1,
           pt_overrides=["model.num_layers=1", "model.hidden_size=64", "model.num_heads=2",
                         "model.intermediate_size=128", "train.seq_len=64", "train.batch_size=2",
                         "train.compile=false"],
           calib=(2, 64), text_bytes=200_000, serve_requests={1: 2, 64: 4}, serve_tokens=4, serve_wait_s=240,
           compile=False)  # fmt: skip
SERVE_CLIENTS = (1, 64)  # concurrent clients, one level after the other on one server

# plain transformers, static KV cache; on CUDA its decoding step compiled with CUDA graphs; argv: model
# folder, batch sizes (comma list), new tokens, device, dtype, compile (0/1), prompts (JSON); prints JSON
STATIC_CACHE = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, sizes, new, device, dtype, comp, prompts = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], \\
    int(sys.argv[3]), sys.argv[4], getattr(torch, sys.argv[5]), sys.argv[6] == "1", json.loads(sys.argv[7])
tok = AutoTokenizer.from_pretrained(path)
tok.pad_token = tok.pad_token or tok.eos_token
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
model.generation_config.cache_implementation = "static"
# on CUDA, generate() compiles the decoding step itself when the cache is static (CompileConfig: fullgraph,
# mode reduce-overhead = CUDA graphs); on CPU it does not compile
model.generation_config.disable_compile = not comp
def run(enc, bs):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=new,
                             min_new_tokens=new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, (out.shape[1] - enc["input_ids"].shape[1]) * bs
result = {"compiled": comp, "new_tokens": new}
for bs in sizes:
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in (prompts * bs)[:bs]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    warm, _ = run(enc, bs)  # compiles and captures the graphs for this shape
    secs, tokens = run(enc, bs)
    result[f"b{bs}"] = {"tokens_per_s": round(tokens / secs, 1), "first_run_seconds": round(warm, 2)}
print(json.dumps(result))
"""


class StepError(Exception):
    """A step failed: the message goes into the JSON."""


class Suite:
    """Runs the steps in order within a time budget and collects their results."""

    def __init__(self, args):
        self.args, self.s = args, DRY if args.dry_run else GPU
        self.work = Path(tempfile.mkdtemp(prefix="llmctl-gpu-suite-"))
        self.env = {**os.environ, "LLMCTL_HOME": os.environ.get("LLMCTL_HOME") or str(self.work / "home")}
        self.t0 = time.perf_counter()
        self.steps: dict[str, dict] = {}
        self.vllm_missing = _vllm_missing(self.env)

    def llmctl(self, *args: str, timeout: float, json_out: bool = True) -> dict | str:
        """Run `llmctl ARGS` (with --json unless told not); its parsed JSON, or StepError with stderr's tail."""
        cmd = [LLMCTL, *args, *(["--json"] if json_out else [])]
        try:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise StepError(f"timed out after {timeout:.0f} s: llmctl {' '.join(args[:2])}") from exc
        if proc.returncode != 0:
            raise StepError(f"llmctl {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
        return json.loads(proc.stdout) if json_out else proc.stdout

    def run(self, name: str, fn, limit_s: float, needs_vllm: bool = False, cpu_check=None) -> None:
        left = self.args.budget - (time.perf_counter() - self.t0)
        if needs_vllm and self.vllm_missing:
            row = {"status": "skipped", "reason": self.vllm_missing}
            if cpu_check is not None:  # the step's own client/parsing code, against the hf backend
                row["cpu_check"] = self._attempt(cpu_check, min(limit_s, left))
        elif left < 10:
            row = {"status": "skipped", "reason": f"the suite's {self.args.budget:.0f} s budget is spent"}
        else:
            row = self._attempt(fn, min(limit_s, left))
        self.steps[name] = row
        sys.stderr.write(f"[gpu_suite] {name}: {row['status']} {json.dumps(row)[:300]}\n")

    def _attempt(self, fn, limit_s: float) -> dict:
        start = time.perf_counter()
        try:
            row = {"status": "ok", **fn(limit_s)}
        except (StepError, OSError, ValueError, KeyError) as exc:
            row = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:800]}
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row

    # ---- the steps ----------------------------------------------------------------------------------------------

    def gpu(self, limit_s: float) -> dict:
        row = {"host_cpu": cpu_name(), "cores": os.cpu_count()}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=name,memory.total,driver_version"
            out = subprocess.run([smi, q, "--format=csv,noheader"], capture_output=True, text=True, timeout=limit_s)
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            row.update(name=gpus[0].split(",")[0].strip() if gpus else None, nvidia_smi=gpus)
        else:
            row.update(name=None, nvidia_smi=[])
        if not self.args.dry_run and not row["name"]:
            raise StepError("no GPU: nvidia-smi is missing or lists none (use --dry-run on a CPU machine)")
        return row

    def setup(self, limit_s: float) -> dict:
        model = self.args.model
        try:
            shown = self.llmctl("models", "show", model, timeout=limit_s)
        except StepError:
            self.llmctl("models", "import", model, timeout=limit_s)  # the default model: converted from its GGUF
            shown = self.llmctl("models", "show", model, timeout=limit_s)
        self.model_path = Path(shown["path"])
        self.prompts = self.work / "prompts.jsonl"
        self.prompts.write_text("".join(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)]}) + "\n" for i in range(32)))
        text = DATA / "tinyshakespeare" / "input.txt"
        if self.s["text_bytes"]:
            short = self.work / "shakespeare.txt"
            short.write_bytes(text.read_bytes()[: self.s["text_bytes"]])
            text = short
        self.data = self.work / "shakespeare-tokens"
        self.llmctl("tokenize", "encode", "--tokenizer", model, "--input", str(text), "--output", str(self.data),
                    "--name", "gpu-suite-text", "--val-fraction", "0.1", "--force", timeout=limit_s)  # fmt: skip
        return {"model": model, "model_path": str(self.model_path), "params": _param_count(self.model_path)}

    def generate(self, backend: str, batch: int):
        def step(limit_s: float) -> dict:
            source = ["--prompt", PROMPTS[0]] if batch == 1 else ["--input", str(self.prompts)]
            res = self.llmctl("generate", "--model", self.args.model, *source, "--backend", backend,
                              "--batch-size", str(batch), "--max-new-tokens", str(self.s["new_tokens"]),
                              "--device", self.s["device"], "--dtype", self.s["dtype"], timeout=limit_s)  # fmt: skip
            stats = res["stats"]
            return {k: stats.get(k) for k in ("tokens_per_s", "new_tokens", "prompts", "seconds", "backend", "device")}

        return step

    def static_cache(self):
        def step(limit_s: float) -> dict:
            argv = [str(self.model_path), "1,32", str(self.s["new_tokens"]), self.s["device"], self.s["dtype"],
                    "1" if self.s["compile"] else "0", json.dumps(PROMPTS)]  # fmt: skip
            try:
                proc = subprocess.run([sys.executable, "-c", STATIC_CACHE, *argv], env=self.env, capture_output=True,
                                      text=True, timeout=limit_s)  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise StepError(f"timed out after {limit_s:.0f} s") from exc
            if proc.returncode != 0:
                raise StepError(proc.stderr.strip()[-600:])
            return json.loads(proc.stdout.strip().splitlines()[-1])

        return step

    def serve(self, backend: str):
        def step(limit_s: float) -> dict:
            return self._serve_load(backend, limit_s)

        return step

    def _serve_load(self, backend: str, limit_s: float) -> dict:
        """One server, then each client level of SERVE_CLIENTS in turn: tokens/s and latencies per level."""
        with socket.socket() as sock:  # a free port (released just before the server takes it)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = open(self.work / f"serve-{backend}.log", "w")
        cmd = [
            LLMCTL,
            "serve",
            "--model",
            self.args.model,
            "--backend",
            backend,
            "--port",
            str(port),
            "--device",
            self.s["device"],
            "--dtype",
            self.s["dtype"],
            "--max-concurrency",
            str(max(SERVE_CLIENTS)),
        ]
        server = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            start = time.perf_counter()
            served = _wait_ready(base, server, min(self.s["serve_wait_s"], limit_s))
            row: dict = {"backend": backend, "ready_seconds": round(time.perf_counter() - start, 1)}
            for clients in SERVE_CLIENTS:
                requests = self.s["serve_requests"][clients]
                lat, tokens, wall = _load(base, served, clients, requests, self.s["serve_tokens"])
                row[f"clients_{clients}"] = {
                    "requests": requests, "tokens_per_s": round(tokens / wall, 1),
                    "latency_p50_s": round(statistics.median(lat), 3), "latency_max_s": round(max(lat), 3),
                }  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
        return row

    def finetune(self, profile: str):
        def step(limit_s: float) -> dict:
            s = self.s
            res = self.llmctl("finetune", "--profile", profile, "--model", self.args.model,
                              "--data", str(DATA / "alpaca" / "alpaca_2000.json"), "--max-steps", str(s["ft_steps"]),
                              "--batch-size", str(s["ft_batch"]), "--seq-len", str(s["ft_seq"]), "--eval-every", "0",
                              "--save-every", "0", "--device", s["device"], "--name", f"gpu-suite-{profile}",
                              "--force", timeout=limit_s)  # fmt: skip
            tps = res["metrics"]["tokens_per_s"]
            cfg = json.loads((self.model_path / "config.json").read_text())
            return {"tokens_per_s": tps, "steps": res["steps"], "compute_dtype": res["metrics"].get("compute_dtype"),
                    "mfu": _mfu(tps, _param_count(self.model_path), cfg, s["ft_seq"], self.gpu_name())}  # fmt: skip

        return step

    def pretrain(self, limit_s: float) -> dict:
        s = self.s
        sets = [a for o in s["pt_overrides"] + ["train.log_every=5", "train.warmup_steps=5"] for a in ("--set", o)]
        res = self.llmctl("pretrain", "--profile", "gpt2-124m", "--data", str(self.data), "--tokenizer",
                          self.args.model, "--name", "gpu-suite-gpt2", "--max-steps", str(s["pt_steps"]),
                          "--grad-accum", str(s["pt_accum"]), "--eval-every", "0", "--save-every", "0",
                          "--device", s["device"], *sets, "--force", timeout=limit_s)  # fmt: skip
        rows = [json.loads(line) for line in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        mfus = [r["mfu"] for r in rows if "mfu" in r][1:]  # the first window holds the compilation
        tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and "loss" in r][1:]
        return {"params": res["params"], "steps": res["steps"], "tokens_per_step": res["tokens_per_step"],
                "tokens_per_s": round(statistics.median(tps), 1) if tps else res["tokens_per_s"],
                "mfu": round(statistics.median(mfus), 4) if mfus else None, "dtype": res["dtype"]}  # fmt: skip

    def gptq(self, limit_s: float) -> dict:
        samples, seqlen = self.s["calib"]
        res = self.llmctl("quantize", "--profile", "gptq4", "--model", self.args.model, "--calib-data",
                          str(DATA / "wikitext-2-raw" / "wiki.test.raw"), "--calib-samples", str(samples),
                          "--calib-seqlen", str(seqlen), "--eval-tokens", "0", "--name", "gpu-suite-gptq4",
                          "--force", timeout=limit_s)  # fmt: skip
        return {"quantize_seconds": res["quantize_seconds"], "bits": res["bits"], "calib": [samples, seqlen],
                "device": "cpu (llmctl's GPTQ has no device option)"}  # fmt: skip

    def gpu_name(self) -> str | None:
        return (self.steps.get("gpu") or {}).get("name")

    def result(self) -> dict:
        return {"suite": "gpu_suite", "dry_run": self.args.dry_run, "model": self.args.model,
                "gpu": (self.steps.get("gpu") or {}).get("name"), "budget_s": self.args.budget,
                "seconds_total": round(time.perf_counter() - self.t0, 1), "steps": self.steps}  # fmt: skip


def _vllm_missing(env: dict) -> str | None:
    """Why vllm steps cannot run here (None when they can), asked of a fresh interpreter (no torch import here)."""
    code = "from llmctl.inference.backends.vllm import vllm_available; print(vllm_available() or '')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip() or (None if out.returncode == 0 else out.stderr.strip()[-300:])


def _param_count(model_path: Path) -> int:
    """Parameters stored in the model's safetensors files (read from their headers, no weights loaded)."""
    total = 0
    for file in sorted(model_path.glob("*.safetensors")):
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def _mfu(tokens_per_s: float, params: int, cfg: dict, seq: int, gpu: str | None) -> float | None:
    from llmctl.pretrain.loop import _PEAK_FLOPS  # one table of peaks for pretrain's MFU and this one

    peak = next((flops for key, flops in _PEAK_FLOPS.items() if gpu and key in gpu), None)
    if peak is None:
        return None
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    width = cfg.get("hidden_size") or cfg.get("n_embd")
    return round(tokens_per_s * (6 * params + 12 * layers * width * seq) / peak, 4)


def _wait_ready(base: str, server: subprocess.Popen, timeout: float) -> str:
    """The served model name, once the server answers /v1/models."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise StepError(f"the server exited {server.returncode} before it was ready (see its log)")
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
                return json.loads(resp.read())["data"][0]["id"]
        except OSError:
            time.sleep(1)
    raise StepError(f"the server was not ready within {timeout:.0f} s")


def _load(base: str, model: str, clients: int, requests: int, max_tokens: int) -> tuple[list[float], int, float]:
    """`requests` completions from `clients` threads; (latencies, completion tokens, wall seconds)."""
    lat: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    todo = list(range(requests))

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0}
            req = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as resp:
                usage = json.loads(resp.read()).get("usage") or {}
            with lock:
                lat.append(time.perf_counter() - t0)
                tokens[0] += usage.get("completion_tokens", 0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(lat) != requests:
        raise StepError(f"{requests - len(lat)} of {requests} requests failed")
    return lat, tokens[0], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every step's CPU part, tiny settings")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name (imported when it is the default)")
    ap.add_argument("--out", default=str(REPO / "bench-out" / "gpu_suite.json"))
    ap.add_argument("--budget", type=float, help="seconds for the whole suite (default 480 = 8 minutes; dry run 1800)")
    args = ap.parse_args()
    args.budget = args.budget or (1800.0 if args.dry_run else 480.0)
    suite = Suite(args)
    # in the order of the goals (vllm batch 1 >= 1,000 tok/s, pretrain MFU >= 45 %), then the rest: steps that no
    # longer fit in the budget are reported as skipped, so the suite never runs past it
    suite.run("gpu", suite.gpu, 30)
    suite.run("setup", suite.setup, 150)
    suite.run("generate_vllm_b1", suite.generate("vllm", 1), 120, needs_vllm=True)
    suite.run("pretrain_gpt2_124m", suite.pretrain, 150)
    suite.run("generate_hf_b1", suite.generate("hf", 1), 60)
    suite.run("generate_hf_b32", suite.generate("hf", 32), 60)
    suite.run("generate_vllm_b32", suite.generate("vllm", 32), 120, needs_vllm=True)
    suite.run("serve_vllm", suite.serve("vllm"), 180, needs_vllm=True, cpu_check=suite.serve("hf"))
    suite.run("finetune_lora", suite.finetune("lora"), 90)
    suite.run("finetune_qlora", suite.finetune("qlora"), 120)
    suite.run("generate_hf_static_cuda_graphs", suite.static_cache(), 150)
    suite.run("quantize_gptq_4bit", suite.gptq, 150)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(suite.result(), indent=2) + "\n")
    tmp.replace(out)  # nothing half-written
    print(out)
    shutil.rmtree(suite.work, ignore_errors=True)


if __name__ == "__main__":
    main()
