"""`llmctl merge-lora`: exact merges (fp32 logits), QLoRA dequantize path, already merged, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import build_tiny_llama


def _make_adapter(base_dir: Path, dest: Path, base_name: str = "tiny", use_dora: bool = False) -> Path:
    """A LoRA adapter with random (non-zero) A and B on the tiny model, saved like finetune does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, use_dora=use_dora)
    )
    peft.save_pretrained(dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_name
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


def _register_adapter(path: Path, name: str, meta: dict | None = None, parent: str = "tiny") -> str:
    from llmctl.models.registry import ModelEntry, Registry

    Registry().add(
        ModelEntry(
            name=name,
            format="peft-adapter",
            path=str(path),
            parents=[parent],
            managed=False,
            meta=meta or {"method": "lora"},
        )
    )
    return name


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("dora", [False, True])
def test_merged_logits_equal_base_plus_adapter(cli, tiny_model, tiny_llama_dir, tmp_path, dora):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmctl.models.registry import Registry

    ad = _register_adapter(_make_adapter(tiny_llama_dir, tmp_path / "ad", use_dora=dora), "ad")
    r = cli("merge-lora", "--adapter", ad, "--name", "merged", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["base"] == "tiny" and out["max_abs_logit_diff"] <= 1e-4
    entry = Registry().get("merged")
    assert entry.format == "hf" and entry.parents == ["ad", "tiny"] and entry.meta["merged_from"] == "ad"
    ids = torch.tensor([[1, 5, 9, 30, 77, 120, 200, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    want = _logits(PeftModel.from_pretrained(base, tmp_path / "ad").eval(), ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(entry.path, dtype=torch.float32).eval(), ids)
    plain = _logits(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval(), ids)
    assert (got - want).abs().max() <= 1e-4
    assert (got - plain).abs().max() > 1e-3  # the adapter did change the model
    assert cli("generate", "--model", "merged", "--prompt", "hi", "--max-new-tokens", "2").exit_code == 0


def test_already_merged_and_no_overwrite(cli, tiny_model, tiny_llama_dir, tmp_path):
    ad = _register_adapter(_make_adapter(tiny_llama_dir, tmp_path / "ad"), "ad")
    assert cli("merge-lora", "--adapter", ad, "--name", "m").exit_code == 0
    again = cli("merge-lora", "--adapter", "m", "--name", "m2")
    assert again.exit_code == 0 and "m is already merged (from adapter ad); nothing to do" in again.stderr
    clash = cli("merge-lora", "--adapter", ad, "--name", "m")
    assert clash.exit_code == 1 and "Error: model 'm' already exists" in clash.stderr and "--force" in clash.stderr
    forced = cli("merge-lora", "--adapter", ad, "--name", "m", "--force", "--dtype", "bf16")
    assert forced.exit_code == 0, forced.stderr
    from llmctl.models.registry import Registry

    cfg = json.loads((Path(Registry().get("m").path) / "config.json").read_text())
    assert cfg.get("torch_dtype", cfg.get("dtype")) == "bfloat16"


def test_mismatched_base_names_both(cli, tiny_model, tiny_llama_dir, tmp_path):
    from llmctl.models.importer import import_model
    from llmctl.models.registry import Registry

    other = build_tiny_llama(tmp_path / "other", hidden_size=32, intermediate_size=64)
    import_model(Registry(), str(other), "other", link=True)
    ad = _register_adapter(_make_adapter(tiny_llama_dir, tmp_path / "ad"), "ad")
    r = cli("merge-lora", "--adapter", ad, "--name", "m", "--base", "other")
    assert r.exit_code == 1
    assert "Error: adapter ad" in r.stderr and "does not fit base other" in r.stderr and "hidden_size=32" in r.stderr


def test_not_an_adapter_and_prompt_tuning(cli, tiny_model, tiny_llama_dir, tmp_path):
    r = cli("merge-lora", "--adapter", tiny_model, "--name", "m")
    assert r.exit_code == 1 and "is a 'hf' model, not a LoRA adapter" in r.stderr
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).save_pretrained(
        tmp_path / "pt"
    )
    _register_adapter(tmp_path / "pt", "pt", {"method": "prompt-tuning"})
    r = cli("merge-lora", "--adapter", "pt", "--name", "m")
    assert r.exit_code == 1 and "adapter pt is PROMPT_TUNING, which has no weights to merge" in r.stderr


def test_qlora_adapter_merges_onto_dequantized_base(cli, tiny_model, tiny_llama_dir, tmp_path):
    """The merged model equals (NF4 round-tripped base) + adapter in fp32, and can be re-quantized."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmctl.merge_lora.service import fake_quantize_4bit
    from llmctl.models.registry import Registry

    meta = {"method": "qlora", "base_quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True}}
    ad = _register_adapter(_make_adapter(tiny_llama_dir, tmp_path / "ad"), "qad", meta)
    r = cli("merge-lora", "--adapter", ad, "--name", "qm", "--json")
    assert r.exit_code == 0, r.stderr
    entry = Registry().get("qm")
    assert entry.meta["qlora_base"] == "dequantized" and entry.meta["dequantized_linear_layers"] == 14
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    fake_quantize_4bit(base)
    ids = torch.tensor([[1, 5, 9, 30, 77]])
    want = _logits(PeftModel.from_pretrained(base, tmp_path / "ad").eval(), ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(entry.path, dtype=torch.float32).eval(), ids)
    assert (got - want).abs().max() <= 1e-4
    rq = cli("merge-lora", "--adapter", ad, "--name", "qm4", "--requantize", "nf4")
    assert rq.exit_code == 0, rq.stderr
    q = Registry().get("qm4")
    assert q.format == "bnb" and q.meta["bnb_config"]["bnb_4bit_quant_type"] == "nf4"
    from llmctl.models.loading import load_model

    loaded = load_model("qm4", device="cpu")
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
