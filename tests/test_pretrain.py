"""pretrain: tiny models from scratch, lineage, exact resume after SIGKILL, DDP/FSDP, spike guard, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _CORPUS, build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
LLMCTL = str(Path(sys.executable).parent / "llmctl")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # a venv without the torchrun script too

# A ~20k-parameter LLaMA on 32-token windows: each step takes milliseconds.
TINY = [
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.num_layers=2",
    "--set",
    "model.num_heads=4",
    "--set",
    "model.num_kv_heads=2",
    "--set",
    "model.intermediate_size=64",
    "--set",
    "model.max_position_embeddings=64",
    "--batch-size",
    "4",
    "--seq-len",
    "32",
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.log_every=1",
    "--set",
    "train.eval_batches=2",
    "--dtype",
    "float32",
    "--device",
    "cpu",
]


def make_data(
    root: Path, tok, docs: list[str], val_docs: int = 20, tok_name: str | None = None, record_bytes: bool = False
) -> Path:
    """A tokenized data dir (train/val) written with ShardWriter/write_index, as `tokenize encode` would."""
    from llmctl.data.token_data import ShardWriter, file_sha256, write_index

    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, part in (("train", docs[:-val_docs]), ("val", docs[-val_docs:])):
        w = ShardWriter(root, split, "uint16")
        nbytes = 0
        for d in part:
            w.add_document(tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            nbytes += len(d.encode("utf-8"))
        splits[split] = w.close()
        if record_bytes:
            splits[split]["bytes"] = nbytes
    tok_dir = Path(tok.name_or_path)
    write_index(
        root,
        {
            "dtype": "uint16",
            "splits": splits,
            "tokenizer": {
                "name": tok_name,
                "path": str(tok_dir),
                "vocab_size": len(tok),
                "eos_id": tok.eos_token_id,
                "sha256": file_sha256(tok_dir / "tokenizer.json"),
            },
        },
    )
    return root


def _docs(n: int = 400) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.sample(_CORPUS[:6], 3)) for _ in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(dest)
    return dest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tok_dir) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    return make_data(tmp_path_factory.mktemp("data"), tok, _docs())


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded torch: fast for tiny models on a busy machine, and the same float order everywhere."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(home: Path, **extra) -> dict:
    env = {**os.environ, "LLMCTL_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}
    env.pop("LLMCTL_DEBUG", None)
    return env


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# ---- happy paths ---------------------------------------------------------------------------------


def test_pretrain_cli_trains_registers_and_logs(cli, llmctl_home, data_dir, tok_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmctl.models.registry import ModelEntry, Registry

    res = cli(
        "pretrain",
        "--data",
        data_dir,
        "--name",
        "tiny-pt",
        "--max-steps",
        "8",
        "--save-every",
        "4",
        "--eval-every",
        "4",
        *TINY,
    )
    assert res.exit_code == 0, res.stderr
    assert "step 8: loss" in res.stderr and "bits/byte" in res.stderr
    entry = Registry().get("tiny-pt")
    assert entry.format == "hf" and entry.parents == []
    assert entry.meta["data_dir"] == str(data_dir.resolve())
    assert len(entry.meta["data_index_sha256"]) == 64
    assert entry.profile["model"]["hidden_size"] == 32 and entry.profile["train"]["max_steps"] == 8
    assert entry.metrics["pretrain.val_bpb"] > 0 and entry.metrics["pretrain.val_ppl"] > 1
    model = AutoModelForCausalLM.from_pretrained(entry.path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_key_value_heads == 2 and model.config.rope_theta == 10000.0
    assert AutoTokenizer.from_pretrained(entry.path).encode("The fox") == AutoTokenizer.from_pretrained(tok_dir).encode(
        "The fox"
    )
    for f in ("llmctl-config.yaml", "loss.png", "tokenizer.json", "model.safetensors"):
        assert (Path(entry.path) / f).is_file(), f
    run = llmctl_home / "runs" / "tiny-pt"
    for f in ("metrics.jsonl", "metrics.csv", "loss.png", "llmctl-config.yaml", "result.json"):
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [4, 8] and all(r["val_bpb"] > 0 for r in val)
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    # the loss goes down and the LR ends at the cosine floor (lr x min_lr_ratio)
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert train_rows[-1]["lr"] == pytest.approx(entry.profile["train"]["lr"] * entry.profile["train"]["min_lr_ratio"])

    # lineage: tokenizer and data registered under names → they become the model's parents
    reg = Registry()
    reg.add(ModelEntry(name="tok-a", format="tokenizer", path=str(tok_dir)))
    named = make_data(
        llmctl_home.parent / "named-data", AutoTokenizer.from_pretrained(tok_dir), _docs(200), tok_name="tok-a"
    )
    reg.add(ModelEntry(name="data-a", format="data", path=str(named)))
    res = cli("pretrain", "--data", named, "--name", "tiny-pt2", "--max-steps", "2", *TINY)
    assert res.exit_code == 0, res.stderr
    assert Registry().get("tiny-pt2").parents == ["tok-a", "data-a"]


def test_gpt2_arch_and_json_output(cli, data_dir):
    from transformers import AutoModelForCausalLM

    res = cli(
        "pretrain", "--data", data_dir, "--name", "g", "--max-steps", "3", *TINY, "--set", "model.arch=gpt2", "--json"
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["steps"] == 3 and out["final"]["val_loss"] > 0 and out["bytes_per_token_source"] == "decoded"
    model = AutoModelForCausalLM.from_pretrained(out["model_path"])
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.n_positions == 64 and model.config.n_embd == 32


def test_dry_run_and_epochs(cli, data_dir, llmctl_home):
    res = cli(
        "pretrain", "--data", data_dir, "--name", "x", "--profile", "shakespeare-tiny", "--lr", "0.01", "--dry-run"
    )
    assert res.exit_code == 0 and "lr: 0.01" in res.stdout and "hidden_size: 256" in res.stdout
    assert not (llmctl_home / "runs" / "x").exists()
    res = cli("pretrain", "--data", data_dir, "--name", "ep", *TINY, "--epochs", "0.05", "--json")
    assert res.exit_code == 0, res.stderr
    from llmctl.data.token_data import TokenData

    n = TokenData(data_dir).num_tokens("train")
    assert json.loads(res.stdout)["steps"] == math.ceil(0.05 * n / (4 * 32))


def test_bytes_per_token_from_index_when_recorded(tmp_path, tok_dir):
    from transformers import AutoTokenizer

    from llmctl.data.token_data import TokenData
    from llmctl.pretrain.data import val_bytes_per_token

    tok = AutoTokenizer.from_pretrained(tok_dir)
    docs = _docs(60)
    rec = TokenData(make_data(tmp_path / "a", tok, docs, record_bytes=True))
    dec = TokenData(make_data(tmp_path / "b", tok, docs))
    bpt_rec, src_rec = val_bytes_per_token(rec, "val", tok)
    bpt_dec, src_dec = val_bytes_per_token(dec, "val", tok)
    assert (src_rec, src_dec) == ("index", "decoded")
    assert bpt_rec == pytest.approx(bpt_dec, rel=1e-6)


def test_batches_depend_only_on_seed_and_step():
    from llmctl.pretrain.data import batch_offsets

    a = batch_offsets(1, 5, 0, 10_000, 32, 8)
    assert (a == batch_offsets(1, 5, 0, 10_000, 32, 8)).all()
    assert not (a == batch_offsets(1, 6, 0, 10_000, 32, 8)).all()
    assert not (a == batch_offsets(1, 5, 1, 10_000, 32, 8)).all()  # a rollback draws other data
    assert a.min() >= 0 and a.max() <= 10_000 - 33


# ---- exact resume after SIGKILL ------------------------------------------------------------------


def test_resume_after_sigkill_reproduces_uninterrupted_losses(tmp_path, data_dir):
    args = [
        LLMCTL,
        "pretrain",
        "--data",
        str(data_dir),
        "--max-steps",
        "10",
        "--save-every",
        "4",
        *TINY,
        "--set",
        "model.dropout=0.1",
    ]  # dropout: the RNG state must come back too
    ref_home, home = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.run([*args, "--name", "run"], env=_env(ref_home), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    from llmctl.training.state import KILL_ENV

    killed = subprocess.run([*args, "--name", "run"], env=_env(home, **{KILL_ENV: "6"}), capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr  # SIGKILL after step 6; last checkpoint is step 4
    run = home / "runs" / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004"]
    assert max(_losses(run)) == 6
    assert not (home / "models" / "run").exists()
    resumed = subprocess.run([*args, "--name", "run", "--resume"], env=_env(home), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 4" in " ".join(resumed.stderr.split())  # rich may wrap the line
    want, got = _losses(ref_home / "runs" / "run"), _losses(run)
    assert sorted(got) == list(range(1, 11))
    for step in range(5, 11):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step


# ---- multi-process -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_same_global_batch(tmp_path, data_dir, strategy):
    common = ["pretrain", "--data", str(data_dir), "--name", "m", "--max-steps", "5", "--save-every", "3", *TINY]
    one = subprocess.run(
        [LLMCTL, *common, "--grad-accum", "2"], env=_env(tmp_path / "one"), capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node", "2", LLMCTL, *common, "--set", f"dist.strategy={strategy}"],
        env=_env(tmp_path / "two"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"x2 ({strategy})" in " ".join(two.stderr.split())
    a, b = _losses(tmp_path / "one" / "runs" / "m"), _losses(tmp_path / "two" / "runs" / "m")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "models" / "m").config.hidden_size == 32


# ---- spike guard ---------------------------------------------------------------------------------


def test_spike_guard_rolls_back_to_last_checkpoint_with_lower_lr(monkeypatch, data_dir, llmctl_home):
    import llmctl.pretrain.loop as loop
    from llmctl.config.profiles import resolve_config
    from llmctl.pretrain import pretrain

    calls = {"n": 0}
    real = loop.lm_loss

    def spiky(model, batch, ctx):
        loss = real(model, batch, ctx)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 8:  # step 8's loss jumps tenfold
                return loss * 10
        return loss

    monkeypatch.setattr(loop, "lm_loss", spiky)
    config = resolve_config(
        "pretrain",
        None,
        [
            "spike.enabled=true",
            "spike.window=3",
            "train.save_every=5",
            "train.log_every=1",
            "train.eval_every=0",
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=4",
            "train.warmup_steps=0",
        ],
        {
            "train.max_steps": 10,
            "train.batch_size": 2,
            "train.seq_len": 16,
            "train.dtype": "float32",
            "train.device": "cpu",
        },
    )
    rows = []
    result = pretrain(data_dir, "spiky", config, on_log=rows.append)
    rollbacks = [r for r in rows if r.get("event") == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 5 and rollbacks[0]["lr_scale"] == 0.5
    assert result["steps"] == 10
    logged = [json.loads(x) for x in (llmctl_home / "runs" / "spiky" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 11))  # the spiked step never logged
    lr_after = {r["step"]: r["lr"] for r in logged if "loss" in r}
    base = config["train"]["lr"]
    from llmctl.training.optim import lr_factor

    assert lr_after[6] == pytest.approx(0.5 * base * lr_factor(6, 10, 0, config["train"]["min_lr_ratio"]))
    assert lr_after[4] == pytest.approx(base * lr_factor(4, 10, 0, config["train"]["min_lr_ratio"]))


# ---- bad input: one clear error, nothing written -------------------------------------------------


def test_tokenizer_data_mismatch(cli, tmp_path, data_dir, llmctl_home):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel()
    other.train_from_iterator(
        ["entirely different text " * 50],
        trainers.BpeTrainer(vocab_size=300, show_progress=False, special_tokens=["<eos>"]),
    )
    PreTrainedTokenizerFast(tokenizer_object=other, eos_token="<eos>").save_pretrained(tmp_path / "other")
    res = cli("pretrain", "--data", data_dir, "--name", "mm", "--tokenizer", tmp_path / "other", *TINY)
    assert res.exit_code == 1
    assert res.stderr.startswith(
        f"Error: tokenizer {tmp_path / 'other'} does not match the data: {data_dir.resolve()} was encoded with"
    )
    assert not (llmctl_home / "runs" / "mm").exists()


def test_resume_without_checkpoint(cli, data_dir, llmctl_home):
    res = cli("pretrain", "--data", data_dir, "--name", "nope", "--resume", *TINY)
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: --resume: no checkpoint in ")
    assert not (llmctl_home / "runs" / "nope").exists()


def test_resume_with_changed_model_shape(cli, data_dir, llmctl_home):
    from llmctl.training.state import KILL_ENV

    ok = subprocess.run(
        [LLMCTL, "pretrain", "--data", str(data_dir), "--name", "sh", "--max-steps", "4", "--save-every", "2", *TINY],
        env=_env(llmctl_home, **{KILL_ENV: "3"}),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == -9, ok.stderr
    before = (llmctl_home / "runs" / "sh" / "metrics.jsonl").read_text()
    res = cli("pretrain", "--data", data_dir, "--name", "sh", "--resume", *TINY, "--set", "model.hidden_size=64")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: --resume: the model shape changed since the checkpoint in ")
    assert "hidden_size 32 -> 64" in res.stderr
    assert (llmctl_home / "runs" / "sh" / "metrics.jsonl").read_text() == before


def test_seq_len_above_model_positions(cli, data_dir, llmctl_home):
    res = cli("pretrain", "--data", data_dir, "--name", "long", *TINY, "--seq-len", "128")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: train.seq_len 128 is longer than model.max_position_embeddings 64")
    assert not (llmctl_home / "runs" / "long").exists()


def test_data_shorter_than_one_batch(cli, tmp_path, tok_dir, llmctl_home):
    from transformers import AutoTokenizer

    small = make_data(tmp_path / "small", AutoTokenizer.from_pretrained(tok_dir), _docs(8), val_docs=2)
    res = cli("pretrain", "--data", small, "--name", "small", *TINY, "--batch-size", "16")
    assert res.exit_code == 1
    assert "fewer than one batch (16 x 32 + 1)" in res.stderr and res.stderr.startswith("Error: the 'train' split of ")
    assert not (llmctl_home / "runs" / "small").exists()


def test_name_exists_without_force(cli, data_dir, llmctl_home):
    assert cli("pretrain", "--data", data_dir, "--name", "dup", "--max-steps", "2", *TINY).exit_code == 0
    res = cli("pretrain", "--data", data_dir, "--name", "dup", "--max-steps", "2", *TINY)
    assert res.exit_code == 1
    assert (
        res.stderr
        == "Error: model 'dup' already exists in the registry; pick another --name or pass --force to replace it\n"
    )
    # a run dir left by an unfinished run is not silently overwritten either
    shutil.copytree(llmctl_home / "runs" / "dup", llmctl_home / "runs" / "half")
    res = cli("pretrain", "--data", data_dir, "--name", "half", "--max-steps", "2", *TINY)
    assert (
        res.exit_code == 1 and "already exists (an earlier run called 'half'); continue it with --resume" in res.stderr
    )
    res = cli("pretrain", "--data", data_dir, "--name", "dup", "--max-steps", "3", *TINY, "--force")
    assert res.exit_code == 0, res.stderr


def test_not_a_data_dir(cli, tmp_path):
    res = cli("pretrain", "--data", tmp_path, "--name", "x", *TINY)
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {tmp_path} is not a tokenized data dir (no index.json)")


def test_auto_dtype_is_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    import llmctl.training.precision as pt

    assert pt.compute_dtype("float32", "cpu") == "float32"
    assert pt.compute_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(pt, "cpu_has_native_bf16", lambda: True)
    assert pt.compute_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(pt, "cpu_has_native_bf16", lambda: False)
    assert pt.compute_dtype("auto", "cpu") == "float32"
