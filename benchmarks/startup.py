"""Benchmark: what a short llmctl command costs to start, next to a bare script doing the same work.

Each command runs as a fresh process, `--repeats` times, interleaved round-robin in this one run so that load
from other jobs falls on all of them alike; the JSON has every time, the medians and the ratios:
- `llmctl --help`, `llmctl models list`, `llmctl profiles list` (goal: each <= 0.3 s) and `python -c pass`;
- `llmctl generate --backend hf --max-new-tokens 1` on the model vs a bare transformers script that loads the
  tokenizer and model from the same folder, applies the chat template and generates 1 token greedily (goal:
  llmctl <= 0.5x the bare script), and vs llama.cpp (llama-cpp-python) loading the model's GGUF and answering
  one token, where llama-cpp-python is installed (goal: <= 5x);
- `prewarmed`: the same generate forked from a process that has already imported torch, transformers and
  llmctl: what an opt-in warm worker that forks per command could reach at best (its socket round trip aside).

Examples:
    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --repeats 1 --model /path/to/hf-folder
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLMCTL = str(Path(sys.executable).parent / "llmctl")

# the bare scripts: argv[1] is the model folder (or GGUF file), argv[2] the prompt
BARE_TRANSFORMERS = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
text = tok.apply_chat_template([{"role": "user", "content": sys.argv[2]}], add_generation_prompt=True, tokenize=False)
enc = tok(text, return_tensors="pt", add_special_tokens=False)
out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=1,
                     do_sample=False, pad_token_id=tok.eos_token_id)
print(tok.decode(out[0, enc["input_ids"].shape[1]:]))
"""
BARE_LLAMACPP = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, verbose=False)
print(llm.create_chat_completion([{"role": "user", "content": sys.argv[2]}], max_tokens=1, temperature=0)["choices"])
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def run_once(cmd: list[str], env: dict) -> float:
    """Seconds for one process to start, do its work and exit; exits the benchmark if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode})")
    return secs


# a stand-in for an opt-in warm worker: imports what `generate` imports (runs nothing, so no OpenMP threads exist),
# then for each line on stdin (a JSON argv) forks a child that runs llmctl's entry point, and prints its seconds
PREWARMED = """
import json, os, sys, time
from llmctl.runtime.threads import tame_openmp_spin
tame_openmp_spin()
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
import transformers
import llmctl.cli.generate, llmctl.inference.generate, llmctl.models.loading
from llmctl.cli.main import run
config = json.load(open(os.path.join(sys.argv[1], "config.json")))
for arch in config.get("architectures") or []:
    getattr(transformers, arch, None)  # the model class's module (modeling_llama ...)
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.argv = ["llmctl", *json.loads(line)]
        try:
            run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps([time.perf_counter() - t0, os.waitstatus_to_exitcode(status)]), flush=True)
"""


class Prewarmed:
    """The PREWARMED process: `time(argv)` forks one command from it and returns its seconds."""

    def __init__(self, model_path: str, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PREWARMED, model_path], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the prewarmed process failed to start")

    def time(self, argv: list[str]) -> float:
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        secs, code = json.loads(self.proc.stdout.readline())
        if code != 0:
            raise SystemExit(f"prewarmed llmctl {' '.join(argv[:2])} failed ({code})")
        return secs

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--no-prewarmed", action="store_true", help="skip the forked (warm worker) estimate")
    ap.add_argument(
        "--baseline-llmctl",
        help="another llmctl command line (e.g. `python run_old_checkout.py`) timed alongside, as baseline_* rows",
    )
    args = ap.parse_args()
    os.environ.setdefault("LLMCTL_HOME", os.environ.get("LLMCTL_BENCH_HOME", tempfile.mkdtemp(prefix="llmctl-bench-")))
    env = dict(os.environ)

    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(args.model)  # converts the default model on first use (not timed)
    model_path = str(resolved.path)
    gen = ["generate", "--model", args.model, "--backend", "hf", "--max-new-tokens", "1", "--prompt", args.prompt]
    cmds = {
        "python_pass": [sys.executable, "-c", "pass"],
        "help": [LLMCTL, "--help"],
        "models_list": [LLMCTL, "models", "list"],
        "profiles_list": [LLMCTL, "profiles", "list"],
        "generate_1_token": [LLMCTL, *gen],
        "bare_transformers": [sys.executable, "-c", BARE_TRANSFORMERS, model_path, args.prompt],
    }
    if args.baseline_llmctl:
        base = shlex.split(args.baseline_llmctl)
        for name in ("help", "models_list", "profiles_list", "generate_1_token"):
            cmds[f"baseline_{name}"] = [*base, *cmds[name][1:]]
    llamacpp = "not measured: llama-cpp-python is not installed"
    try:
        import llama_cpp  # noqa: F401

        from llmctl.models.default import gguf_path

        cmds["bare_llamacpp"] = [sys.executable, "-c", BARE_LLAMACPP, str(gguf_path()), args.prompt]
        llamacpp = "measured"
    except Exception:
        pass
    for cmd in cmds.values():  # one untimed round: page cache and the import-structure cache warm for all
        run_once(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    warm = None if args.no_prewarmed else Prewarmed(model_path, env)
    if warm is not None:
        warm.time(gen)  # untimed, as above
        times["prewarmed_generate_1_token"] = []
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd, env))
        if warm is not None:
            times["prewarmed_generate_1_token"].append(warm.time(gen))
    if warm is not None:
        warm.close()
    med = {name: round(statistics.median(ts), 3) for name, ts in times.items()}
    ratios = {"generate_vs_bare_transformers": round(med["generate_1_token"] / med["bare_transformers"], 3)}
    if "bare_llamacpp" in med:
        ratios["generate_vs_llamacpp"] = round(med["generate_1_token"] / med["bare_llamacpp"], 3)
    if "prewarmed_generate_1_token" in med:
        ratios["prewarmed_vs_bare_transformers"] = round(
            med["prewarmed_generate_1_token"] / med["bare_transformers"], 3
        )
    for name in ("help", "models_list", "profiles_list", "generate_1_token"):
        if f"baseline_{name}" in med:
            ratios[f"{name}_vs_baseline"] = round(med[name] / med[f"baseline_{name}"], 3)
    goals = {
        "generate <= 0.5x bare transformers": ratios["generate_vs_bare_transformers"] <= 0.5,
        "generate <= 5x llama.cpp": ratios["generate_vs_llamacpp"] <= 5 if "generate_vs_llamacpp" in ratios else None,
        **{f"{n} <= 0.3 s": med[n] <= 0.3 for n in ("help", "models_list", "profiles_list")},
    }
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": args.model,
        "repeats": args.repeats,
        "median_seconds": med,
        "ratios": ratios,
        "llamacpp": llamacpp,
        "goals_met": goals,
        "seconds": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
