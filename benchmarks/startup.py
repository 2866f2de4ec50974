"""Benchmark: what a short llmctl command costs to start, next to a bare script doing the same work.

Each command runs as a fresh process, `--repeats` times, interleaved round-robin in this one run so that load
from other jobs falls on all of them alike; the JSON has every time, the medians and the ratios:
- `llmctl --help`, `llmctl models list`, `llmctl profiles list` (goal: each <= 0.3 s) and `python -c pass`;
- `llmctl generate --backend hf --max-new-tokens 1` on the model vs a bare transformers script that loads the
  tokenizer and model from the same folder, applies the chat template and generates 1 token greedily (goal:
  llmctl <= 0.5x the bare script), and vs llama.cpp (llama-cpp-python) loading the model's GGUF and answering
  one token, where llama-cpp-python is installed (goal: <= 5x);
- `worker_*`: the same llmctl commands while `llmctl worker start` runs (each forked from the warm worker;
  the fresh-process rows run beside it with LLMCTL_WORKER=0), and `worker_generate_vs_*` their ratios.

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


class Worker:
    """`llmctl worker start` in a private runtime folder for this run; the same commands timed through it."""

    def __init__(self, env: dict):
        self.env = {**env, "XDG_RUNTIME_DIR": tempfile.mkdtemp(prefix="llmctl-bench-run-")}
        os.chmod(self.env["XDG_RUNTIME_DIR"], 0o700)
        run_once([LLMCTL, "worker", "start", "--idle-timeout", "0"], self.env)

    def served(self) -> int:
        out = subprocess.run([LLMCTL, "worker", "status", "--json"], env=self.env, capture_output=True, text=True)
        return json.loads(out.stdout).get("served", 0)

    def close(self) -> None:
        run_once([LLMCTL, "worker", "stop"], self.env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--no-worker", action="store_true", help="skip the rows timed through `llmctl worker`")
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
    warm = None if args.no_worker else Worker(env)
    fresh_env = {**(warm.env if warm else env), "LLMCTL_WORKER": "0"}
    warm_cmds = {f"worker_{n}": cmds[n] for n in ("help", "models_list", "generate_1_token")} if warm else {}
    for cmd in cmds.values():  # one untimed round: page cache and the import-structure cache warm for all
        run_once(cmd, fresh_env)
    for cmd in warm_cmds.values():
        run_once(cmd, warm.env)
    served = warm.served() if warm else 0
    times: dict[str, list[float]] = {name: [] for name in (*cmds, *warm_cmds)}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd, fresh_env))
        for name, cmd in warm_cmds.items():
            times[name].append(run_once(cmd, warm.env))
    if warm is not None:
        served = warm.served() - served
        warm.close()
        if served != len(warm_cmds) * args.repeats:
            raise SystemExit(f"the worker served {served} of {len(warm_cmds) * args.repeats} timed commands")
    med = {name: round(statistics.median(ts), 3) for name, ts in times.items()}
    ratios = {"generate_vs_bare_transformers": round(med["generate_1_token"] / med["bare_transformers"], 3)}
    if "bare_llamacpp" in med:
        ratios["generate_vs_llamacpp"] = round(med["generate_1_token"] / med["bare_llamacpp"], 3)
    if warm is not None:
        ratios["worker_generate_vs_bare_transformers"] = round(
            med["worker_generate_1_token"] / med["bare_transformers"], 3
        )
        if "bare_llamacpp" in med:
            ratios["worker_generate_vs_llamacpp"] = round(med["worker_generate_1_token"] / med["bare_llamacpp"], 3)
    for name in ("help", "models_list", "profiles_list", "generate_1_token"):
        if f"baseline_{name}" in med:
            ratios[f"{name}_vs_baseline"] = round(med[name] / med[f"baseline_{name}"], 3)
    goals = {
        "generate <= 0.5x bare transformers": ratios["generate_vs_bare_transformers"] <= 0.5,
        "worker generate <= 0.5x bare transformers": ratios.get("worker_generate_vs_bare_transformers", 9) <= 0.5
        if warm
        else None,
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
