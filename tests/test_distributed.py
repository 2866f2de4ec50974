"""finetune and eval under torchrun (2 gloo processes on CPU): same numbers as one process, resumable across
world sizes; the pieces (micro-batch split, fingerprints, portable optimizer state) one by one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval import build_data_dir

from conftest import build_tiny_llama, write_jsonl

LLMCTL = str(Path(sys.executable).parent / "llmctl")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

# 4 steps of 4 micro-batches (2 per process) of 2 packed rows x 64 tokens; dropout on (seeded per micro-batch).
FT = [
    "--max-steps",
    "4",
    "--batch-size",
    "2",
    "--seq-len",
    "64",
    "--eval-every",
    "2",
    "--dtype",
    "float32",
    "--device",
    "cpu",
    "--set",
    "train.warmup_steps=1",
    "--set",
    "train.log_every=1",
    "--set",
    "lora.r=4",
    "--set",
    "lora.dropout=0.1",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dist")
    words = ["fox", "dog", "Paris", "plants", "tokens", "models"]
    rows = [
        {
            "instruction": f"Say {words[i % 6]}.",
            "input": "" if i % 3 else "quick",
            "output": f"The {words[(i + 1) % 6]} is {words[(i + 2) % 6]}.",
        }
        for i in range(24)
    ]
    return {"model": build_tiny_llama(root / "tiny"), "data": write_jsonl(root / "alpaca.jsonl", rows), "root": root}


def _env(home: Path, **extra) -> dict:
    env = {**os.environ, "LLMCTL_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}
    env.pop("LLMCTL_DEBUG", None)
    return env


def _finetune(home: Path, files: dict, *extra: str, procs: int = 1, env: dict | None = None):
    args = ["finetune", "--model", str(files["model"]), "--data", str(files["data"]), "--name", "m", *FT, *extra]
    cmd = [*TORCHRUN, LLMCTL, *args] if procs == 2 else [LLMCTL, *args]
    return subprocess.run(cmd, env=_env(home, **(env or {})), capture_output=True, text=True, timeout=600)


def _rows(home: Path) -> dict[int, dict]:
    text = (home / "runs" / "m" / "metrics.jsonl").read_text()
    return {r["step"]: r for r in map(json.loads, text.splitlines())}


def _same_losses(a: dict, b: dict, tol: float, steps=None) -> None:
    for step in steps or sorted(a):
        for key in ("loss", "eval_loss", "grad_norm"):
            if key in a[step]:
                assert b[step][key] == pytest.approx(a[step][key], abs=tol), (step, key)


@pytest.fixture(scope="module")
def one_process_lora(files) -> dict:
    """The reference: one process with 2x grad-accum, the global batch two processes with 1 see."""
    home = files["root"] / "one-lora"
    res = _finetune(home, files, "--grad-accum", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    return _rows(home)


# ---- finetune ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_lora_equals_one_process_with_double_grad_accum(files, one_process_lora, tmp_path):
    from safetensors.torch import load_file

    res = _finetune(tmp_path, files, procs=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "device cpu x2 (ddp)" in " ".join(res.stderr.split())
    assert res.stderr.count("Registered m ") == 1  # rank 0 reports, the other process stays quiet
    two = _rows(tmp_path)
    assert sorted(two) == [1, 2, 3, 4] and two[4]["tokens"] == one_process_lora[4]["tokens"]
    _same_losses(one_process_lora, two, 1e-4)
    one_dir = files["root"] / "one-lora" / "models" / "m"
    a = load_file(one_dir / "adapter_model.safetensors")
    b = load_file(tmp_path / "models" / "m" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    ckpt = json.loads((tmp_path / "runs" / "m" / "checkpoints" / "step-0000004" / "meta.json").read_text())
    assert ckpt["world"] == 2


@pytest.mark.slow
def test_kill_one_rank_then_resume_on_one_process(files, one_process_lora, tmp_path):
    from llmctl.training.state import KILL_ENV, KILL_RANK_ENV

    killed = _finetune(tmp_path, files, "--save-every", "2", procs=2, env={KILL_ENV: "3", KILL_RANK_ENV: "1"})
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr
    run = tmp_path / "runs" / "m"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-0000002"]
    assert not (tmp_path / "models" / "m").exists()
    # one process now: the same global batch needs twice the accumulation
    resumed = _finetune(tmp_path, files, "--save-every", "2", "--grad-accum", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2" in resumed.stderr
    got = _rows(tmp_path)
    assert sorted(got) == [1, 2, 3, 4]
    _same_losses(one_process_lora, got, 1e-5)
    # a different global batch is refused, naming the product
    again = _finetune(tmp_path, files, "--save-every", "2", "--resume", "--force")
    assert again.returncode == 1
    assert "train.grad_accum=2 (now 1)" in again.stderr and "grad_accum x processes" in " ".join(again.stderr.split())


@pytest.mark.slow
def test_fsdp_full_finetune_equals_one_process(files, tmp_path):
    from safetensors.torch import load_file

    full = ["--method", "full", "--save-every", "2"]
    one = _finetune(tmp_path / "one", files, *full, "--grad-accum", "2")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _finetune(tmp_path / "two", files, *full, "--set", "dist.strategy=fsdp", procs=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x2 (fsdp)" in " ".join(two.stderr.split())
    _same_losses(_rows(tmp_path / "one"), _rows(tmp_path / "two"), 1e-4)
    a = load_file(tmp_path / "one" / "models" / "m" / "model.safetensors")
    b = load_file(tmp_path / "two" / "models" / "m" / "model.safetensors")  # gathered from the shards on rank 0
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-4 for k in a)
    # the FSDP checkpoint (full tensors, optimizer keyed by index) loads in one process
    from llmctl.training.state import Checkpointer

    state = Checkpointer(tmp_path / "two" / "runs" / "m" / "checkpoints").load_latest()
    assert all(isinstance(k, int) for k in state["optimizer"]["state"])


# ---- eval --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_eval_equals_one_process(files, tmp_path):
    data = build_data_dir(tmp_path / "data")
    args = [
        "eval",
        "--model",
        str(files["model"]),
        "--tasks",
        "hellaswag,arc_easy,perplexity,passkey",
        "--data-dir",
        str(data),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--context-lengths",
        "256,320",
        "--set",
        "passkey.depths=[0,1]",
        "--length-buckets",
        "16,64",
        "--json",
    ]
    one = subprocess.run([LLMCTL, *args], env=_env(tmp_path / "h1"), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [*TORCHRUN, LLMCTL, *args], env=_env(tmp_path / "h2"), capture_output=True, text=True, timeout=600
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = json.loads(one.stdout)["metrics"], json.loads(two.stdout)["metrics"]  # one JSON: rank 0's
    assert sorted(a) == sorted(b) and len(a) >= 10
    for key in a:
        if ".acc" in key:
            assert a[key] == b[key], key
        else:
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
    assert "perplexity.token_perplexity@16-64" in a and "passkey.acc@320" in a
    n = json.loads(two.stdout)["n-samples"]["hellaswag"]
    assert n["effective"] == 12  # every item scored once across the two processes


# ---- the pieces ----------------------------------------------------------------------------------------------


def test_micro_batches_of_a_step_split_by_rank():
    from llmctl.finetune.parallel import Parallel, micro_seed
    from llmctl.training.dist import Dist

    par = Parallel.__new__(Parallel)
    par.accum, par.world = 2, 3
    seen = []
    for rank in range(3):
        par.d = Dist(rank=rank, world=3, active=True)
        every, mine = par.micro_batches(step=2)
        assert every == list(range(6, 12)) and len(mine) == 2
        seen += mine
    assert seen == list(range(6, 12))  # the global batch of one process with grad_accum 6
    assert micro_seed(1, 5) == micro_seed(1, 5) != micro_seed(1, 6)


def test_fingerprint_counts_grad_accum_times_processes(tmp_path):
    from llmctl.config.profiles import resolve_config
    from llmctl.errors import LlmctlError
    from llmctl.finetune import objectives
    from llmctl.finetune.loop import check_resume, fingerprint

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    cfg = resolve_config("finetune", None, [], {"train.grad_accum": 2})
    sft = objectives.get("sft")
    two = fingerprint(cfg, sft, "b", data, world=2)
    assert two["train.grad_accum"] == 4
    assert two == fingerprint(resolve_config("finetune", None, [], {"train.grad_accum": 4}), sft, "b", data)

    class Net:
        def named_parameters(self):
            return []

    state = {"extra": {"fingerprint": json.dumps(two)}, "model": {}}
    with pytest.raises(LlmctlError) as err:
        check_resume(state, fingerprint(cfg, sft, "b", data), Net(), tmp_path)
    assert "train.grad_accum=4 (now 2)" in str(err.value) and "grad_accum x processes" in err.value.hint


def test_fsdp_refused_for_methods_it_cannot_shard():
    from llmctl.config.profiles import resolve_config
    from llmctl.errors import LlmctlError
    from llmctl.finetune.parallel import check_strategy

    cfg = resolve_config("finetune", None, ["dist.strategy=fsdp"], {"method": "qlora"})
    check_strategy(cfg, world=1)  # one process ignores dist.*
    with pytest.raises(LlmctlError, match="dist.strategy=fsdp cannot shard a --method qlora run"):
        check_strategy(cfg, world=2)


def test_optimizer_state_keyed_by_name_loads_in_one_process():
    """Older FSDP checkpoints keyed the optimizer state by parameter name; both forms load."""
    import torch

    from llmctl.training.dist import _keyed, _param_names, full_state, load_full_state

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    msd, osd = full_state(net, opt, fsdp=False)
    by_name = _keyed(osd.state_dict(), _param_names(net, opt), to_index=True)
    assert by_name == osd.state_dict()  # already index-keyed: unchanged
    named = _keyed(osd.state_dict(), _param_names(net, opt), to_index=False)
    assert set(named["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    load_full_state(fresh, opt2, {"model": msd, "optimizer": named}, fsdp=False)
    assert torch.equal(opt2.state_dict()["state"][3]["exp_avg"], opt.state_dict()["state"][3]["exp_avg"])
    only = full_state(net, opt, fsdp=False, trainable_only=True)[0]
    assert set(only) == {"0.weight", "0.bias", "1.weight", "1.bias"}
