"""Durable writes (issue 24): what fsync costs a command, and kill -9 at random points never leaves a bad entry.

1. fsync cost: `llmctl export --format hf --no-check` of the default model (writes ~540 MB) and `models import`
   of a folder, alternately with LLMCTL_FSYNC=1 (the default) and LLMCTL_FSYNC=0, `--repeats` times each;
   medians and the relative cost. Goal: < 5 % of the command's time.
2. kill -9: `quantize --algo rtn`, `export --format hf`, `tokenize encode` and `models import` of a tiny LLaMA
   (the default model's tokenizer), each run `--kill-runs` times and SIGKILLed after a random delay within its
   complete run's duration. A registered entry must hold exactly the files of a complete run (same names, and
   same bytes for every file but the marker and the resolved config, which carry names and times).

Prints one JSON object. Run it on an idle machine (timings); the kill checks do not depend on load.

Examples:
    python benchmarks/durability.py --repeats 3 --kill-runs 20
    python benchmarks/durability.py --repeats 1 --kill-runs 2      # quick check that it works
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _shakespeare import LLMCTL, TEXT, llmctl  # noqa: E402

VARYING = {"llmctl-entry.json", "llmctl-config.yaml", ".llmctl-output"}  # names, times, command lines
# a data dir's index.json records how the run went besides what it holds: those keys are not compared
RUN_FACTS = {"seconds", "mb_per_s", "command", "created", "name"}


def _facts_dropped(value):
    if isinstance(value, dict):
        return {k: _facts_dropped(v) for k, v in value.items() if k not in RUN_FACTS}
    if isinstance(value, list):
        return [_facts_dropped(v) for v in value]
    return value


def _digest(path: Path) -> str:
    if path.name in VARYING:
        return ""
    if path.name == "index.json":
        data = json.dumps(_facts_dropped(json.loads(path.read_text())), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny(dest: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer LLaMA (hidden 64) with the default model's tokenizer: real files, seconds to write."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def manifest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def entry_path(name: str, env: dict) -> Path | None:
    out = subprocess.run([LLMCTL, "models", "show", name, "--json"], env=env, capture_output=True, text=True)
    return Path(json.loads(out.stdout)["path"]) if out.returncode == 0 else None


def timed(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    llmctl(*args, env=env)
    return time.perf_counter() - started


def fsync_cost(env: dict, tiny: Path, repeats: int, work: Path) -> dict:
    """Median seconds with and without fsync, alternating, for two commands that write models."""
    commands = {
        "export_hf_default_model": lambda k: [
            "export",
            "--model",
            "smollm2-135m-instruct",
            "--format",
            "hf",
            "--output",
            str(work / f"hf-{k}"),
            "--no-check",
            "--force",
        ],  # fmt: skip
        "models_import_tiny": lambda k: ["models", "import", str(tiny), "--name", f"imp-{k}", "--force"],
    }
    out = {}
    for label, args in commands.items():
        times: dict[str, list[float]] = {"1": [], "0": []}
        for k in range(repeats):
            for flag in ("1", "0"):
                times[flag].append(timed(args(k), {**env, "LLMCTL_FSYNC": flag}))
        on, off = statistics.median(times["1"]), statistics.median(times["0"])
        out[label] = {"fsync_s": round(on, 2), "no_fsync_s": round(off, 2), "cost": round(on / off - 1, 4),
                      "runs": {k: [round(t, 2) for t in v] for k, v in times.items()}}  # fmt: skip
    return out


def kill_runs(env: dict, tiny: Path, runs: int, seed: int, only: set[str] | None = None) -> dict:
    """Each command complete once (reference files and duration), then `runs` times killed at random."""
    rng = random.Random(seed)
    commands = {
        "quantize": lambda n: [
            "quantize",
            "--model",
            "tiny",
            "--algo",
            "rtn",
            "--bits",
            "4",
            "--eval-tokens",
            "0",
            "--name",
            n,
        ],  # fmt: skip
        "export": lambda n: ["export", "--model", "tiny", "--format", "hf", "--no-check", "--name", n],
        "tokenize_encode": lambda n: [
            "tokenize",
            "encode",
            "--tokenizer",
            str(tiny),
            "--input",
            str(TEXT),
            "--name",
            n,
        ],  # fmt: skip
        "models_import": lambda n: ["models", "import", str(tiny), "--name", n],
    }
    out = {}
    for label, args in commands.items():
        if only and label not in only:
            continue
        started = time.perf_counter()
        llmctl(*args(f"{label}-ref"), env=env)
        full = time.perf_counter() - started
        reference = manifest(entry_path(f"{label}-ref", env))
        registered, bad = 0, []
        for k in range(runs):
            name = f"{label}-{k}"
            proc = subprocess.Popen([LLMCTL, *args(name)], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(rng.uniform(0, full))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            path = entry_path(name, env)
            if path is None:
                continue
            registered += 1
            if manifest(path) != reference:
                bad.append(name)
        out[label] = {"complete_run_s": round(full, 2), "killed_runs": runs, "registered_after_kill": registered,
                      "entries_that_differ": bad}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting for the fsync cost (medians)")
    ap.add_argument("--kill-runs", type=int, default=20, help="killed runs per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default=None, help="kill -9 runs of these only: quantize,export,...")
    ap.add_argument("--no-fsync-cost", action="store_true", help="skip the fsync timing")
    args = ap.parse_args()
    only = set(args.commands.split(",")) if args.commands else None
    with tempfile.TemporaryDirectory(prefix="llmctl-durability-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "LLMCTL_HOME": str(work / "home")}
        llmctl("models", "import", "smollm2-135m-instruct", env=env)
        tiny = build_tiny(work / "tiny", entry_path("smollm2-135m-instruct", env))
        llmctl("models", "import", str(tiny), "--name", "tiny", "--link", env=env)
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?")  # fmt: skip
        cost = None if args.no_fsync_cost else fsync_cost(env, tiny, args.repeats, work)
        result = {"cpu": cpu, "fsync_cost": cost, "kill9": kill_runs(env, tiny, args.kill_runs, args.seed, only)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
