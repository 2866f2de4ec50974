"""`llmctl finetune`: data handling, packing, methods, objectives, resume and bad input (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_jsonl


def _alpaca(n: int = 24) -> list[dict]:
    words = ["fox", "dog", "Paris", "plants", "tokens", "models"]
    return [
        {
            "instruction": f"Say {words[i % 6]}.",
            "input": "" if i % 3 else "quick",
            "output": f"The {words[(i + 1) % 6]} is {words[(i + 2) % 6]}.",
        }
        for i in range(n)
    ]


def _prefs(n: int = 12) -> list[dict]:
    return [{"prompt": f"Capital {i}?", "chosen": "Paris is the capital.", "rejected": "The dog."} for i in range(n)]


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", _alpaca())


@pytest.fixture
def tok(tiny_llama_dir):
    from llmctl.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir))


def _config(method="lora", objective="sft", sets=(), **train):
    from llmctl.config.profiles import resolve_config

    explicit = {
        "method": method,
        "objective": objective,
        "train.max_steps": 4,
        "train.batch_size": 2,
        "train.seq_len": 96,
        "train.dtype": "float32",
        "train.device": "cpu",
        "train.warmup_steps": 1,
        "train.eval_every": 2,
        "train.save_every": 0,
        "train.log_every": 1,
    }
    explicit.update({f"train.{k}": v for k, v in train.items()})
    return resolve_config("finetune", None, list(sets), explicit)


# ---- data ------------------------------------------------------------------------------------------


def test_detect_formats(tmp_path):
    from llmctl.data.sft import read_records

    assert read_records(write_jsonl(tmp_path / "a.jsonl", _alpaca(2)))[1] == "alpaca"
    assert read_records(write_jsonl(tmp_path / "p.jsonl", _prefs(2)))[1] == "preference"
    assert read_records(write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}]))[1] == "text"
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    assert read_records(write_jsonl(tmp_path / "c.jsonl", chat))[1] == "chat"
    (tmp_path / "arr.json").write_text(json.dumps(_alpaca(3)))
    records, kind = read_records(tmp_path / "arr.json")
    assert kind == "alpaca" and len(records) == 3


def test_response_only_labels_keep_eos_even_when_pad_is_eos(tok):
    from llmctl.data.sft import IGNORE, tokenize_sft

    tok.pad_token = tok.eos_token  # like the default model: pad == eos must not hide the eos label
    examples, stats = tokenize_sft(_alpaca(1), "alpaca", tok, "chatml", 512)
    ex = examples[0]
    n_prompt = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    assert n_prompt > 0 and all(lab == IGNORE for lab in ex.labels[:n_prompt])
    assert ex.labels[n_prompt:] == ex.ids[n_prompt:]
    response = tok.decode(ex.ids[n_prompt:])
    assert response.startswith("The dog is Paris.") and "<|im_end|>" in response
    assert tok.eos_token_id in ex.labels
    assert "user" in tok.decode(ex.ids[:n_prompt]) and stats.kept == 1


def test_alpaca_template_and_multi_turn_chat(tok):
    from llmctl.data.sft import IGNORE, tokenize_sft

    ex = tokenize_sft(_alpaca(1), "alpaca", tok, "alpaca", 512)[0][0]
    prompt = tok.decode([i for i, lab in zip(ex.ids, ex.labels) if lab == IGNORE])
    assert "### Instruction:\nSay fox." in prompt and "### Input:\nquick" in prompt
    chat = [
        {
            "messages": [
                {"role": "user", "content": "A?"},
                {"role": "assistant", "content": "one"},
                {"role": "user", "content": "B?"},
                {"role": "assistant", "content": "two"},
            ]
        }
    ]
    ex = tokenize_sft(chat, "chat", tok, "model", 512)[0][0]
    trained = tok.decode([i for i, lab in zip(ex.ids, ex.labels) if lab != IGNORE])
    assert "one" in trained and "two" in trained and "A?" not in trained and "B?" not in trained


def test_truncation_counted_and_eval_split_from_the_end(tok):
    from llmctl.data.sft import split_eval, tokenize_sft

    records = _alpaca(10)
    records[0]["output"] = "word " * 200
    examples, stats = tokenize_sft(records, "alpaca", tok, "chatml", 64)
    assert stats.truncated == 1 and max(len(e) for e in examples) == 64
    train, held = split_eval(records, 0.2)
    assert held == records[-2:] and len(train) == 8
    assert split_eval(records, 3)[1] == records[-3:]


def test_packing_fills_rows_and_keeps_examples_whole():
    from llmctl.data.sft import Example, pack

    examples = [Example([1] * n, [1] * n) for n in (50, 30, 20, 60, 40, 10)]
    rows = pack(examples, 64, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(len(examples[i]) for i in row) <= 64 for row in rows)
    assert len(rows) == 4  # 210 tokens in rows of 64


def test_packed_logits_equal_unpacked(tiny_llama_dir, tok):
    """Block-diagonal 4-D mask + per-example positions: each packed example sees only itself."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.data.sft import collate, tokenize_sft

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    examples = tokenize_sft(_alpaca(3), "alpaca", tok, "chatml", 256)[0]
    packed = collate([examples], tok.pad_token_id, packed=True)
    packed["input_ids"] = torch.cat([packed["input_ids"], torch.full((1, 5), tok.pad_token_id)], 1)  # padding tail
    w = packed["input_ids"].shape[1]
    mask = torch.zeros(1, 1, w, w, dtype=torch.bool)
    n0 = packed["attention_mask"].shape[-1]
    mask[..., :n0, :n0] = packed["attention_mask"]
    mask |= torch.eye(w, dtype=torch.bool)
    pos = torch.cat([packed["position_ids"], torch.zeros(1, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        out = model(input_ids=packed["input_ids"], attention_mask=mask, position_ids=pos).logits[0]
        at = 0
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex.ids])).logits[0]
            assert torch.allclose(out[at : at + len(ex)], alone, atol=1e-5), "packed example attended across rows"
            at += len(ex)


# ---- the command ---------------------------------------------------------------------------------------


def test_lora_cli_registers_adapter_and_generate_uses_it(cli, tiny_model, alpaca_file, llmctl_home):
    from llmctl.models.registry import Registry

    r = cli(
        "finetune",
        "--model",
        tiny_model,
        "--method",
        "lora",
        "--data",
        alpaca_file,
        "--name",
        "tiny-lora",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "96",
        "--eval-every",
        "2",
        "--dtype",
        "float32",
        "--set",
        "lora.r=4",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "peft-adapter" and out["metrics"]["eval_loss"] > 0 and out["data"]["packed"]
    entry = Registry().get("tiny-lora")
    assert entry.parents == ["tiny"] and entry.profile["lora"]["r"] == 4 and entry.profile["method"] == "lora"
    assert entry.metrics["finetune.eval_loss"] == pytest.approx(out["metrics"]["eval_loss"])
    run = llmctl_home / "runs" / "tiny-lora"
    assert (run / "metrics.csv").is_file() and (run / "loss.png").is_file() and list((run / "tensorboard").iterdir())
    assert "eval_loss" in (run / "metrics.csv").read_text().splitlines()[0]
    assert (Path(entry.path) / "llmctl-config.yaml").is_file()
    g = cli("generate", "--model", "tiny-lora", "--prompt", "Say fox.", "--max-new-tokens", "4")
    assert g.exit_code == 0, g.stderr
    again = cli("finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "tiny-lora", "--max-steps", "1")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_dry_run_shows_overrides(cli, alpaca_file):
    r = cli(
        "finetune",
        "--data",
        alpaca_file,
        "--name",
        "x",
        "--profile",
        "qlora",
        "--lr",
        "0.001",
        "--set",
        "lora.r=32",
        "--dry-run",
        "--json",
    )
    assert r.exit_code == 0
    cfg = json.loads(r.stdout)
    assert cfg["method"] == "qlora" and cfg["lora"]["r"] == 32 and cfg["train"]["lr"] == 0.001


@pytest.mark.parametrize("method", ["full", "dora", "prompt-tuning", "prefix-tuning"])
def test_other_methods_train_and_register(tiny_model, alpaca_file, method):
    from llmctl.finetune import finetune
    from llmctl.models.loading import load_model

    res = finetune(tiny_model, alpaca_file, f"t-{method}", _config(method, max_steps=2))
    assert res.format == ("hf" if method == "full" else "peft-adapter")
    assert res.metrics["eval_loss"] > 0
    loaded = load_model(f"t-{method}", dtype="float32", device="cpu")
    assert loaded.model is not None


def test_exact_resume_for_lora(tiny_model, alpaca_file):
    """2 steps, stop, --resume to 4 == 4 steps straight (dropout on: RNG state restored too)."""
    import torch
    from safetensors.torch import load_file

    from llmctl.finetune import finetune

    sets = ["lora.r=4", "lora.dropout=0.1"]
    straight = finetune(tiny_model, alpaca_file, "straight", _config(sets=sets))
    part = finetune(tiny_model, alpaca_file, "resumed", _config(sets=sets), stop_after=2)
    assert part.steps == 2 and part.path == ""
    resumed = finetune(tiny_model, alpaca_file, "resumed", _config(sets=sets), resume=True)
    assert resumed.resumed_from == 2
    a = load_file(Path(straight.path) / "adapter_model.safetensors")
    b = load_file(Path(resumed.path) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["train_loss"] == straight.metrics["train_loss"]


def test_resume_from_incompatible_checkpoint(cli, tiny_model, alpaca_file):
    from llmctl.finetune import finetune

    finetune(tiny_model, alpaca_file, "run", _config(sets=["lora.r=4"]), stop_after=1)
    r = cli(
        "finetune",
        "--model",
        tiny_model,
        "--data",
        alpaca_file,
        "--name",
        "run",
        "--resume",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "96",
        "--dtype",
        "float32",
        "--set",
        "lora.r=8",
        "--set",
        "train.warmup_steps=1",
        "--eval-every",
        "2",
        "--save-every",
        "0",
        "--set",
        "train.log_every=1",
        "--device",
        "cpu",
    )
    assert r.exit_code == 1
    assert "Error: cannot resume from" in r.stderr and "lora.r=4 (now 8)" in r.stderr


def test_dpo_and_reward_objectives(tiny_model, tmp_path):
    from llmctl.finetune import finetune
    from llmctl.models.registry import Registry

    prefs = write_jsonl(tmp_path / "prefs.jsonl", _prefs())
    dpo = finetune(tiny_model, prefs, "t-dpo", _config("lora", "dpo", max_steps=2))
    assert dpo.format == "peft-adapter" and 0 <= dpo.metrics["eval_accuracy"] <= 1
    reward = finetune(tiny_model, prefs, "t-reward", _config("lora", "reward", max_steps=2))
    assert Registry().get("t-reward").meta["head"] == "reward" and reward.metrics["eval_loss"] > 0
    full_dpo = finetune(tiny_model, prefs, "t-dpo-full", _config("full", "dpo", max_steps=1))
    assert full_dpo.format == "hf"


def test_qlora_tiny_and_generate_loads_base_plainly(cli, tiny_model, alpaca_file):
    from llmctl.finetune import finetune
    from llmctl.models.registry import Registry

    res = finetune(tiny_model, alpaca_file, "t-qlora", _config("qlora", max_steps=1, eval_every=0))
    meta = Registry().get("t-qlora").meta
    assert res.format == "peft-adapter" and meta["base_quantization"]["quant_type"] == "nf4"
    g = cli("generate", "--model", "t-qlora", "--prompt", "Say fox.", "--max-new-tokens", "3")
    assert g.exit_code == 0, g.stderr


# ---- bad input -------------------------------------------------------------------------------------------


def test_unknown_fields_say_what_was_found(cli, tiny_model, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    r = cli("finetune", "--model", tiny_model, "--data", bad, "--name", "x")
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: data file {bad} line 1 has none of the known record layouts (fields: answer, question); "
        "use one of: alpaca (instruction, input?, output), chat (messages), text (text), "
        "preference (prompt, chosen, rejected), hh-rlhf (chosen, rejected), chat-preference (prompt?, "
        "chosen, rejected), completion (prompt, completion|output|response?), kto (prompt, completion, "
        "label), prompts (prompt, …)\n"
    )


def test_empty_after_filtering(cli, tiny_model, tmp_path):
    empty = write_jsonl(tmp_path / "e.jsonl", [{"instruction": "x", "output": ""}] * 3)
    r = cli("finetune", "--model", tiny_model, "--data", empty, "--name", "x", "--set", "data.eval_split=0")
    assert r.exit_code == 1 and "Error: the dataset is empty after filtering" in r.stderr


def test_every_prompt_longer_than_max_length(cli, tiny_model, alpaca_file):
    r = cli("finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "x", "--seq-len", "8")
    assert r.exit_code == 1 and "Error: every example's prompt is at least the max length 8 tokens" in r.stderr
    assert "--seq-len" in r.stderr


def test_target_modules_that_match_nothing(cli, tiny_model, alpaca_file):
    r = cli(
        "finetune",
        "--model",
        tiny_model,
        "--data",
        alpaca_file,
        "--name",
        "x",
        "--method",
        "lora",
        "--set",
        "lora.target_modules=attn_qkv",
        "--max-steps",
        "1",
    )
    assert r.exit_code == 1
    assert (
        "lora.target_modules attn_qkv match no module" in r.stderr and "q_proj" in r.stderr and "down_proj" in r.stderr
    )


def test_qlora_where_bitsandbytes_cannot_run(cli, tiny_model, alpaca_file, monkeypatch):
    import bitsandbytes.functional as F

    def broken(*a, **k):
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(F, "quantize_4bit", broken)
    r = cli(
        "finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "x", "--method", "qlora", "--max-steps", "1"
    )
    assert r.exit_code == 1
    assert "qlora needs bitsandbytes 4-bit kernels" in r.stderr and "use --method lora" in r.stderr


def test_objective_data_mismatch(cli, tiny_model, alpaca_file, tmp_path):
    r = cli("finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "x", "--objective", "dpo")
    assert r.exit_code == 1 and "needs preference data" in r.stderr
    prefs = write_jsonl(tmp_path / "p.jsonl", _prefs(3))
    r = cli("finetune", "--model", tiny_model, "--data", prefs, "--name", "x")
    assert r.exit_code == 1 and "is preference data" in r.stderr


def test_missing_data_and_bad_method(cli, tiny_model, alpaca_file):
    r = cli("finetune", "--model", tiny_model, "--name", "x")
    assert r.exit_code == 2 and "missing --data" in r.stderr
    r = cli("finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "x", "--method", "lorax")
    assert (r.exit_code, r.stderr) == (
        2,
        "Error: --method lorax: must be one of full, lora, qlora, dora, prompt-tuning, prefix-tuning\n",
    )


# ---- the shared training policy: run dir rule, precision ----------------------------------------------------


def test_existing_run_dir_is_refused_without_resume_or_force_and_loses_nothing(
    cli, tiny_model, alpaca_file, llmctl_home
):
    from llmctl.finetune import finetune

    finetune(tiny_model, alpaca_file, "run", _config(sets=["lora.r=4"], save_every=2), stop_after=2)
    run = llmctl_home / "runs" / "run"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = cli("finetune", "--model", tiny_model, "--data", alpaca_file, "--name", "run", "--max-steps", "1")
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: run dir {run} already exists (an earlier run called 'run'); continue it with "
        f"--resume, pick another --name, or pass --force to replace it\n"
    )
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before, "a refused run touches nothing"


def test_force_replaces_the_old_run_only_once_the_new_one_has_a_checkpoint(
    tiny_model, alpaca_file, llmctl_home, monkeypatch
):
    import llmctl.finetune.loop as loop
    from llmctl.finetune import finetune

    finetune(tiny_model, alpaca_file, "run", _config(sets=["lora.r=4"]), stop_after=2)
    run = llmctl_home / "runs" / "run"
    (run / "mine.txt").write_text("keep me until the new run has started")

    def crash(self, step):
        raise RuntimeError("power cut before the first checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(loop.FinetuneRun, "step_loss", crash)
        with pytest.raises(RuntimeError):
            finetune(tiny_model, alpaca_file, "run", _config(sets=["lora.r=8"]), force=True)
    assert (run / "mine.txt").is_file(), "the replaced run comes back when the new one fails before a checkpoint"
    assert [p.name for p in run.parent.iterdir()] == ["run"]
    res = finetune(tiny_model, alpaca_file, "run", _config(sets=["lora.r=8"]), force=True)
    assert res.steps == 4 and not (run / "mine.txt").exists()
    assert [p.name for p in run.parent.iterdir()] == ["run"]


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_run_dir(
    tiny_model, alpaca_file, llmctl_home, monkeypatch
):
    """The same command, mended, runs again without --force (issue 24: a failed GRPO blocked its own retry)."""
    import llmctl.finetune.loop as loop
    from llmctl.finetune import finetune

    def crash(self, step):
        raise RuntimeError("the reward function returned NaN")

    with monkeypatch.context() as patch:
        patch.setattr(loop.FinetuneRun, "step_loss", crash)
        with pytest.raises(RuntimeError):
            finetune(tiny_model, alpaca_file, "retry", _config(sets=["lora.r=4"]))
    assert not (llmctl_home / "runs" / "retry").exists()
    res = finetune(tiny_model, alpaca_file, "retry", _config(sets=["lora.r=4"]))  # no --force needed
    assert res.steps == 4 and (llmctl_home / "runs" / "retry" / "checkpoints").is_dir()


def test_float16_uses_a_gradient_scaler_and_bfloat16_does_not():
    from llmctl.training.precision import Precision

    fp16 = Precision.for_run("float16", "cpu")
    assert fp16.dtype == "float16" and fp16.scaler.is_enabled()
    for dtype in ("bfloat16", "float32"):
        assert not Precision.for_run(dtype, "cpu").scaler.is_enabled()


def test_float16_finetune_runs_with_loss_scaling(tiny_model, alpaca_file, monkeypatch):
    """fp16 autocast on CPU (torch allows it): the scaler scales the loss before backward and unscales after."""
    import llmctl.training.precision as precision
    from llmctl.finetune import finetune

    seen = []
    real = precision.Precision.backward

    def spy(self, loss):
        seen.append(self.scaler.get_scale())
        return real(self, loss)

    monkeypatch.setattr(precision.Precision, "backward", spy)
    res = finetune(tiny_model, alpaca_file, "fp16", _config(sets=["lora.r=4"], dtype="float16", max_steps=3))
    assert seen and seen[0] == 65536.0  # GradScaler's initial scale: the loss really was scaled
    assert res.metrics["compute_dtype"] == "float16" and res.metrics["eval_loss"] > 0


def test_resume_of_a_finished_run_after_its_model_was_removed(cli, tiny_model, alpaca_file):
    """The last checkpoint remembers the final losses: registering again reports them (no TypeError)."""
    args = [
        "finetune",
        "--model",
        tiny_model,
        "--data",
        alpaca_file,
        "--name",
        "done",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "96",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--set",
        "lora.r=4",
        "--set",
        "train.warmup_steps=1",
        "--eval-every",
        "2",
    ]
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert cli("models", "remove", "done", "--delete-files").exit_code == 0
    again = cli(*args, "--resume", "--json")
    assert again.exit_code == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["resumed_from"] == 2 and out["metrics"]["train_loss"] > 0


def test_metrics_logger_makes_its_event_file_with_the_first_row(tmp_path):
    """A run resumed at its last step logs nothing and must leave no new, empty TensorBoard file (issue 24)."""
    from llmctl.training.metrics import MetricsLogger

    MetricsLogger(tmp_path / "idle", append=True).close()
    assert not (tmp_path / "idle" / "tensorboard").exists()
    log = MetricsLogger(tmp_path / "busy")
    log.log(1, {"loss": 2.0})
    log.close()
    assert list((tmp_path / "busy" / "tensorboard").iterdir())
