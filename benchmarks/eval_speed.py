"""`llmctl eval` vs calling `lm_eval.simple_evaluate` directly: wall time and scores, in one run.

Both sides are fresh processes doing the whole job on the same model files, local data, limit and
batch size: llmctl runs `llmctl eval --json`; the baseline loads the model with transformers, wraps
it in lm-eval's HFLM and runs simple_evaluate on lm-eval's OWN task YAML (lm_eval/tasks/...)
pointed at the same local file. Equal scores show llmctl's offline config reproduces lm-eval's task.
Prints one JSON document (goal: ratio <= 1.05).

Usage:
    .venv/bin/python benchmarks/eval_speed.py                         # default model, hellaswag, limit 200
    .venv/bin/python benchmarks/eval_speed.py --limit 50 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BASELINE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
model_dir, include, task, limit, bs = sys.argv[1:6]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
lm = HFLM(pretrained=model, tokenizer=tok, batch_size=int(bs), device="cpu")
tm = TaskManager(include_path=include, include_defaults=False)
out = simple_evaluate(lm, tasks=[task], limit=int(limit), task_manager=tm, log_samples=False)
res = {k.split(",")[0]: v for k, v in out["results"][task].items() if "," in k and "stderr" not in k}
print(json.dumps({"metrics": res, "seconds_in_process": time.perf_counter() - t0}))
"""


def reference_yaml(task_yaml: Path, task: str, data_file: Path, split: str, out_dir: Path) -> Path:
    """lm-eval's own task config, with only the dataset location changed to the local file."""
    text = (
        f"include: {task_yaml}\ntask: {task}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data_file}\ntraining_split: null\n"
    )
    path = out_dir / f"{task}.yaml"
    path.write_text(text)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import lm_eval

    from llmctl.evaluate.task_files import _split_files
    from llmctl.models.resolve import resolve_model

    resolved = resolve_model(args.model)  # converts the default model on first use
    data_file = _split_files("hellaswag", Path(args.data_dir))["validation"][0]
    tmp = Path(tempfile.mkdtemp(prefix="eval-speed-"))
    reference_yaml(
        Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml",
        "hellaswag",
        data_file,
        "validation",
        tmp,
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    env = {k: v for k, v in env.items() if v != ""}
    import resource

    runs = {"llmctl": [], "lm_eval": []}
    cpu = {"llmctl": [], "lm_eval": []}  # user+sys seconds of the child: far less sensitive to other load
    scores = {}
    for r in range(args.repeats):
        order = ["llmctl", "lm_eval"] if r % 2 == 0 else ["lm_eval", "llmctl"]
        for side in order:
            t0 = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            if side == "llmctl":
                cmd = [
                    str(BIN / "llmctl"),
                    "eval",
                    "--model",
                    args.model,
                    "--tasks",
                    "hellaswag",
                    "--data-dir",
                    args.data_dir,
                    "--limit",
                    str(args.limit),
                    "--batch-size",
                    str(args.batch_size),
                    "--dtype",
                    "float32",
                    "--device",
                    "cpu",
                    "--no-attach",
                    "--json",
                ]
            else:
                cmd = [
                    sys.executable,
                    "-c",
                    BASELINE,
                    resolved.path,
                    str(tmp),
                    "hellaswag",
                    str(args.limit),
                    str(args.batch_size),
                ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[side].append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2))
            if proc.returncode != 0:
                sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
            payload = json.loads(proc.stdout)
            metrics = (
                {k.split(".", 1)[1]: v for k, v in payload["metrics"].items()}
                if side == "llmctl"
                else payload["metrics"]
            )
            runs[side].append(round(seconds, 2))
            scores[side] = metrics
            print(f"{side}: {seconds:.1f} s wall, {cpu[side][-1]:.1f} s cpu {metrics}", file=sys.stderr, flush=True)
    best = {k: min(v) for k, v in runs.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    diffs = {m: abs(scores["llmctl"][m] - scores["lm_eval"][m]) for m in scores["lm_eval"]}
    print(
        json.dumps(
            {
                "model": args.model,
                "task": "hellaswag",
                "limit": args.limit,
                "batch_size": args.batch_size,
                "data_file": str(data_file),
                "wall_seconds": runs,
                "best_seconds": best,
                "ratio_llmctl_over_lm_eval": round(best["llmctl"] / best["lm_eval"], 3),
                "cpu_seconds": cpu,
                "cpu_ratio_llmctl_over_lm_eval": round(best_cpu["llmctl"] / best_cpu["lm_eval"], 3),
                "scores": scores,
                "max_abs_score_diff": max(diffs.values()),
                "scores_equal_1e-6": all(d <= 1e-6 for d in diffs.values()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
