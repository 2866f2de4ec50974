"""kill -9 at the worst moment: nothing half-made is registered or left as the final output, the next run cleans
up the leftovers and succeeds, and `--resume` continues training to the same result.

The hook `LLMCTL_KILL_AT=publish` SIGKILLs a command when its registry folder is complete, just before the rename
that would publish it; `LLMCTL_KILL_AT=staged` does the same for files written with `--output`;
`LLMCTL_KILL_AT_STEP=N` kills a training run after optimizer step N.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl

LLMCTL = str(Path(sys.executable).parent / "llmctl")


def run(home: Path, *args, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_KILL")}
    full_env = {**base, "LLMCTL_HOME": str(home), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([LLMCTL, *map(str, args)], env=full_env, capture_output=True, text=True, timeout=600)


def names(home: Path) -> list[str]:
    out = run(home, "models", "list", "--json")
    assert out.returncode == 0, out.stderr
    return sorted(e["name"] for e in json.loads(out.stdout))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture
def home(tmp_path, tiny_llama_dir) -> Path:
    h = tmp_path / "home"
    assert run(h, "models", "import", tiny_llama_dir, "--name", "tiny", "--link").returncode == 0
    return h


def _alpaca(tmp_path) -> Path:
    rows = [{"instruction": f"Say {w}.", "output": f"The {w} is here."} for w in ("fox", "dog", "cat", "owl") * 6]
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


def _text(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"The quick brown fox {i} jumps over the lazy dog {i}." for i in range(300)))
    return path


def _registry_writers(tmp_path) -> dict[str, list]:
    text, alpaca = _text(tmp_path), _alpaca(tmp_path)
    return {
        "quantize": ["quantize", "--model", "tiny", "--algo", "rtn", "--bits", "8", "--eval-tokens", "0"],
        "prune": ["prune", "--model", "tiny", "--method", "magnitude", "--sparsity", "0.5", "--eval-tokens", "0"],
        "tokenize-encode": ["tokenize", "encode", "--tokenizer", "tiny", "--input", text],
        "tokenize-train": ["tokenize", "train", "--input", text, "--vocab-size", "300"],
        "finetune-lora": [
            "finetune",
            "--model",
            "tiny",
            "--data",
            alpaca,
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--set",
            "lora.r=4",
        ],
    }


@pytest.mark.parametrize("command", ["quantize", "prune", "tokenize-encode", "tokenize-train", "finetune-lora"])
def test_kill_just_before_publishing_registers_nothing(home, tmp_path, command):
    args = [*_registry_writers(tmp_path)[command], "--name", "out"]
    killed = run(home, *args, LLMCTL_KILL_AT="publish")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert names(home) == ["tiny"], "nothing half-made is registered"
    assert not (home / "models" / "out").exists()
    assert hidden(home / "models"), "the staged files were left by the killed process"
    again = run(home, *args, *(["--force"] if command.startswith("finetune") else []))
    assert again.returncode == 0, again.stderr[-2000:]
    assert names(home) == ["out", "tiny"]
    assert hidden(home / "models") == [], "the next run removed the killed run's leftovers"


@pytest.mark.parametrize("command", ["generate", "tokenize-encode", "eval"])
def test_kill_before_renaming_an_output_file_leaves_no_final_output(home, tmp_path, command):
    text = _text(tmp_path)
    out = tmp_path / "outputs" / ("data" if command == "tokenize-encode" else "out.json")
    out.parent.mkdir()
    args = {
        "generate": ["generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "2", "--output", out],
        "tokenize-encode": ["tokenize", "encode", "--tokenizer", "tiny", "--input", text, "--output", out],
        "eval": [
            "eval",
            "--model",
            "tiny",
            "--tasks",
            "perplexity",
            "--data",
            text,
            "--seqlen",
            "32",
            "--stride",
            "32",
            "--output",
            out,
            "--no-attach",
        ],
    }[command]
    killed = run(home, *args, LLMCTL_KILL_AT="staged")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    assert hidden(out.parent)
    again = run(home, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.exists() and hidden(out.parent) == []


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_killed_mid_run_resumes_to_the_same_weights(home, tmp_path, method):
    from safetensors.torch import load_file

    alpaca = _alpaca(tmp_path)
    common = [
        "finetune",
        "--model",
        "tiny",
        "--data",
        alpaca,
        "--method",
        method,
        "--max-steps",
        "5",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--save-every",
        "2",
        "--eval-every",
        "0",
        "--set",
        "lora.r=4",
        "--set",
        "lora.dropout=0.1",
        "--set",
        "train.warmup_steps=1",
    ]
    ref = run(home, *common, "--name", "straight")
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = run(home, *common, "--name", "crashed", LLMCTL_KILL_AT_STEP="3")
    assert killed.returncode == -9
    assert "crashed" not in names(home)
    resumed = run(home, *common, "--name", "crashed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a = load_file(home / "models" / "straight" / weights)
    b = load_file(home / "models" / "crashed" / weights)
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)

    def rows(name):
        lines = (home / "runs" / name / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines)}

    assert rows("crashed") == pytest.approx(rows("straight"), abs=1e-6)


def test_merge_lora_killed_before_publishing(home, tmp_path):
    alpaca = _alpaca(tmp_path)
    assert (
        run(
            home,
            "finetune",
            "--model",
            "tiny",
            "--data",
            alpaca,
            "--name",
            "ad",
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--set",
            "lora.r=4",
        ).returncode
        == 0
    )
    killed = run(home, "merge-lora", "--adapter", "ad", "--name", "merged", LLMCTL_KILL_AT="publish")
    assert killed.returncode == -9
    assert "merged" not in names(home) and not (home / "models" / "merged").exists()
    assert run(home, "merge-lora", "--adapter", "ad", "--name", "merged").returncode == 0
    assert "merged" in names(home) and hidden(home / "models") == []
