"""Memory and time estimates before a run (`--dry-run`, `--estimate-steps`) and the refusal of runs that do not fit."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl

# SmolLM2-135M's config.json (the default model), as the estimator reads it
SMOL = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
TINY_TRAIN = ["--batch-size", "2", "--seq-len", "64", "--dtype", "float32", "--device", "cpu", "--save-every", "0"]


@pytest.fixture
def alpaca(tmp_path):
    rows = [{"instruction": f"Say word {i}.", "input": "", "output": f"The word is {i}."} for i in range(24)]
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


def _config(method: str, **train):
    from llmctl.config.profiles import resolve_config

    explicit = {"method": method, "train.batch_size": 4, "train.seq_len": 512}
    explicit.update({f"train.{k}": v for k, v in train.items()})
    return resolve_config("finetune", None, [], explicit)


def _estimate(method: str, device: str = "cuda", **train) -> dict:
    from llmctl.training.estimate import arch_from_config, train_estimate

    return train_estimate(arch_from_config(SMOL), _config(method, **train), device)


def test_parameters_of_the_default_model_shape():
    from llmctl.training.estimate import arch_from_config

    # SmolLM2-135M has 134,515,008 parameters (config.json); the estimator counts them from the shape alone
    assert arch_from_config(SMOL).params() == pytest.approx(134_515_008, rel=1e-4)


def test_estimates_are_positive_and_ordered():
    full, lora, qlora, dora = (_estimate(m) for m in ("full", "lora", "qlora", "dora"))
    for est in (full, lora, qlora, dora):
        assert est["peak_bytes"] > 0 and all(v > 0 for v in est["breakdown"].values())
        assert est["peak_bytes"] == sum(est["breakdown"].values())
    assert qlora["peak_bytes"] < lora["peak_bytes"] < full["peak_bytes"]
    assert qlora["breakdown"]["weights"] < lora["breakdown"]["weights"] == full["breakdown"]["weights"]
    assert lora["breakdown"]["optimizer_states"] < full["breakdown"]["optimizer_states"] / 20
    assert dora["breakdown"]["activations"] > lora["breakdown"]["activations"]  # DoRA keeps more per linear
    # on CPU the fp32 weights read while quantizing stay resident (measured): QLoRA saves nothing there
    cpu_q, cpu_lora = _estimate("qlora", "cpu"), _estimate("lora", "cpu")
    assert cpu_q["breakdown"]["qlora_load_residue"] > 0 and cpu_q["peak_bytes"] > cpu_lora["peak_bytes"]
    checkpointed = _estimate("lora", gradient_checkpointing=True)
    assert checkpointed["breakdown"]["activations"] < lora["breakdown"]["activations"] / 4
    assert _estimate("full", batch_size=8)["breakdown"]["activations"] == 2 * full["breakdown"]["activations"]


def test_objectives_count_extra_models_and_rows():
    from llmctl.config.profiles import resolve_config
    from llmctl.finetune.service import memory_estimate
    from llmctl.training.estimate import arch_from_config

    arch = arch_from_config(SMOL)
    cfg = {"train.batch_size": 2, "train.seq_len": 256, "train.dtype": "float32"}
    sft = memory_estimate(arch, resolve_config("finetune", None, [], {"method": "full", **cfg}), "cpu")
    full_dpo = {"method": "full", "objective": "dpo", **cfg}
    dpo = memory_estimate(arch, resolve_config("finetune", None, [], full_dpo), "cpu")
    dpo_lora = memory_estimate(arch, resolve_config("finetune", None, [], {"objective": "dpo", **cfg}), "cpu")
    assert dpo["extra_models"] == 1 and dpo["breakdown"]["extra_models"] == sft["breakdown"]["weights"]
    assert dpo_lora["extra_models"] == 0  # LoRA's reference is the base with the adapter off
    assert dpo["breakdown"]["activations"] == 2 * sft["breakdown"]["activations"]  # chosen + rejected
    grpo = resolve_config("finetune", None, [], {"objective": "grpo", "reward.function": "math_exact", **cfg})
    assert memory_estimate(arch, grpo, "cpu")["breakdown"]["rollout_kv_cache"] > 0


def test_dry_run_prints_the_estimate_and_json_keys(cli, tiny_model, llmctl_home):
    res = cli("finetune", "--model", tiny_model, "--name", "x", *TINY_TRAIN, "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    est = out["estimate"]
    assert out["method"] == "lora" and est["peak_bytes"] > 0 and est["seconds_per_step"] is None
    assert {"runtime", "weights", "gradients", "optimizer_states", "activations", "logits"} <= set(est["breakdown"])
    assert est["free_bytes"] > 0 and est["device"] == "cpu"
    res = cli("finetune", "--model", tiny_model, "--name", "x", *TINY_TRAIN, "--dry-run")
    assert res.exit_code == 0 and "method: lora" in res.stdout and "estimated peak memory" in res.stderr
    for cmd in (["quantize", "--algo", "rtn", "--bits", "8"], ["prune", "--method", "magnitude", "--sparsity", "0.5"]):
        res = cli(*cmd, "--model", tiny_model, "--name", "y", "--dry-run", "--json")
        assert res.exit_code == 0, res.stderr
        est = json.loads(res.stdout)["estimate"]
        assert est["peak_bytes"] > est["breakdown"]["weights"] > 0
    assert not (llmctl_home / "runs" / "x").exists()


def test_a_run_that_does_not_fit_is_refused_before_loading(cli, tiny_model, alpaca, llmctl_home, monkeypatch):
    monkeypatch.setenv("LLMCTL_MEMORY_BYTES", str(2**20))  # 1 MiB free
    res = cli("finetune", "--model", tiny_model, "--data", alpaca, "--name", "x", *TINY_TRAIN, "--max-steps", "1")
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert line.startswith("Error: this run needs about ") and "\n" not in line and "Traceback" not in line
    assert "cpu has 0.00 GiB free" in line
    for knob in ("--batch-size", "--seq-len", "--method qlora (on a GPU)", "--set train.gradient_checkpointing=true"):
        assert knob in line
    assert "--set train.ignore_memory_check=true" in line
    assert not (llmctl_home / "runs" / "x").exists()
    assert cli("models", "list", "--json").stdout.count('"x"') == 0
    res = cli("quantize", "--model", tiny_model, "--algo", "rtn", "--bits", "8", "--name", "q")
    assert res.exit_code == 1 and res.stderr.startswith("Error: this run needs about ")
    assert "--set ignore_memory_check=true" in res.stderr


def test_the_memory_check_can_be_overridden(cli, tiny_model, alpaca, monkeypatch):
    monkeypatch.setenv("LLMCTL_MEMORY_BYTES", str(2**20))
    res = cli(
        "finetune",
        "--model",
        tiny_model,
        "--data",
        alpaca,
        "--name",
        "x",
        *TINY_TRAIN,
        "--max-steps",
        "1",
        "--set",
        "train.ignore_memory_check=true",
        "--set",
        "train.gradient_checkpointing=true",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["name"] == "x"


def test_estimate_steps_measures_and_publishes_nothing(cli, tiny_model, alpaca, llmctl_home):
    before = sorted(p.relative_to(llmctl_home) for p in llmctl_home.rglob("*"))
    args = ["finetune", "--model", tiny_model, "--data", alpaca, "--name", "x", *TINY_TRAIN]
    res = cli(*args, "--estimate-steps", "2", "--json")
    assert res.exit_code == 0, res.stderr
    est = json.loads(res.stdout)["estimate"]
    assert est["seconds_per_step"] > 0 and est["probe"]["steps"] == 2 and est["probe"]["peak_rss_bytes"] > 0
    assert sorted(p.relative_to(llmctl_home) for p in llmctl_home.rglob("*")) == before  # nothing written here
    res = cli("finetune", "--model", tiny_model, "--name", "x", "--estimate-steps", "2")
    assert res.exit_code == 1 and res.stderr.startswith("Error: --estimate-steps runs real steps and needs --data")
    res = cli("finetune", "--model", tiny_model, "--name", "x", "--data", alpaca, "--estimate-steps", "0")
    assert res.exit_code == 2


def test_pretrain_estimate_and_probe(cli, tiny_llama_dir, tmp_path, llmctl_home):
    from test_pretrain import _docs, make_data
    from transformers import AutoTokenizer

    data = make_data(tmp_path / "data", AutoTokenizer.from_pretrained(tiny_llama_dir), _docs(200))
    tiny = ["--set", "model.hidden_size=32", "--set", "model.num_layers=2", "--set", "model.num_heads=2"]
    args = ["pretrain", "--data", data, "--name", "p", *tiny, *TINY_TRAIN, "--json"]
    res = cli(*args, "--dry-run")
    assert res.exit_code == 0, res.stderr
    plain = json.loads(res.stdout)["estimate"]
    assert plain["peak_bytes"] > 0 and plain["trainable_parameters"] == plain["parameters"]
    res = cli(*args, "--set", "train.gradient_checkpointing=true", "--estimate-steps", "2")
    assert res.exit_code == 0, res.stderr
    est = json.loads(res.stdout)["estimate"]
    assert est["seconds_per_step"] > 0
    assert est["breakdown"]["activations"] < plain["breakdown"]["activations"]
    assert not (llmctl_home / "runs" / "p").exists() and cli("models", "list", "--json").stdout.count('"p"') == 0
