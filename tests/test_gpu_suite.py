"""benchmarks/gpu_suite.sh: its --dry-run runs every step's CPU part and writes the JSON the GPU run will.

Examples:
    pytest tests/test_gpu_suite.py -q -m slow
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    "gpu",
    "setup",
    "generate_hf_b1",
    "generate_hf_b32",
    "generate_hf_static_cuda_graphs",
    "generate_vllm_b1",
    "generate_vllm_b32",
    "serve_vllm",
    "finetune_lora",
    "finetune_qlora",
    "pretrain_gpt2_124m",
    "quantize_gptq_4bit",
}
VLLM_STEPS = {"generate_vllm_b1", "generate_vllm_b32", "serve_vllm"}


def test_mfu_uses_pretrains_formula_and_peak():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _gpu_suite import _mfu

    cfg = {"num_hidden_layers": 12, "hidden_size": 768}
    # GPT-2 small at 400k tokens/s on an H100 (989 TFLOP/s bf16): (6·124e6 + 12·12·768·1024) · 4e5 / 989e12
    assert _mfu(400_000, 124_000_000, cfg, 1024, "NVIDIA H100 80GB HBM3") == pytest.approx(0.3467, abs=1e-4)
    assert _mfu(400_000, 124_000_000, cfg, 1024, None) is None  # no GPU, no MFU


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_json(tiny_model, tmp_path):
    out = tmp_path / "suite.json"
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--model", tiny_model, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["model"] == tiny_model
    assert set(result["steps"]) == STEPS
    for name, step in result["steps"].items():
        vllm_absent = name in VLLM_STEPS and step["status"] == "skipped" and "vllm" in step["reason"]
        assert step["status"] == "ok" or vllm_absent, (name, step)
    steps = result["steps"]
    assert steps["gpu"]["host_cpu"] and "name" in steps["gpu"]
    assert steps["generate_hf_b1"]["tokens_per_s"] > 0 and steps["generate_hf_b32"]["prompts"] == 32
    assert steps["generate_hf_static_cuda_graphs"]["b32"]["tokens_per_s"] > 0
    for name in ("finetune_lora", "finetune_qlora"):
        assert steps[name]["tokens_per_s"] > 0 and "mfu" in steps[name]
    assert "mfu" in steps["pretrain_gpt2_124m"] and steps["pretrain_gpt2_124m"]["steps"] == 3
    # A tiny model quantizes in under 0.05 s on a fast CPU, which the service rounds to 0.0: check the
    # field is reported and the bits are right, never the time itself.
    gptq = steps["quantize_gptq_4bit"]
    assert gptq["quantize_seconds"] >= 0 and gptq["bits"] == 4
    serve = steps["serve_vllm"]
    check = serve.get("cpu_check", serve)  # vllm absent: the load client ran against `serve --backend hf`
    assert check["status"] == "ok" and check["clients_1"]["requests"] == 2 and check["clients_64"]["tokens_per_s"] > 0
