"""`llmctl pretrain`: train a LLaMA- or GPT-2-style model from scratch on a tokenized data dir.

One process, or the same command under `torchrun --nproc_per_node N` (DDP, or FSDP with
`--set dist.strategy=fsdp`). Batches are drawn deterministically from (seed, step): the global batch of
a step is the same whatever the number of processes, and a resumed run sees exactly the data an
uninterrupted run would. Checkpoints (atomic) hold model, optimizer, scheduler, RNG states and the data
position; the final model is a Hugging Face folder (loads with `AutoModelForCausalLM`) registered with
its tokenizer and the data's lineage.

Examples:
    result = pretrain("data/shakespeare", "my-tiny", config, command="llmctl pretrain …")
    result["final"]["val_bpb"]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import LlmctlError

# Shape keys a checkpoint must agree on to be resumed.
SHAPE_KEYS = ("arch", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
              "max_position_embeddings", "vocab_size", "tie_embeddings")

# Dense bf16 peak FLOP/s of common GPUs, for MFU (by substring of the device name).
_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
               "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}

KILL_ENV = "LLMCTL_PRETRAIN_KILL_AT_STEP"  # test hook: SIGKILL this process after that step (and its checkpoint)


@dataclass
class Dist:
    """This process's place in a (maybe single-process) job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def run_dir_for(name: str) -> Path:
    from llmctl.paths import llmctl_home

    return llmctl_home() / "runs" / name


def _init_dist(config: dict, device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = config["dist"]["backend"]
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank=rank, world=world, local_rank=local, active=True)


def _pick_device(device: str, dist_env: bool) -> str:
    from llmctl.loading import pick_device

    dev = pick_device(device)
    if dev == "cuda" and dist_env:
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dev


# ---- inputs ---------------------------------------------------------------------------------------


def _tokenizer_folder(spec: str) -> tuple[str | None, Path]:
    """(registry name or None, folder) for --tokenizer: a registry name or a folder with tokenizer files."""
    from llmctl.registry import Registry

    path = Path(spec).expanduser()
    if path.is_dir():
        return None, path.resolve()
    if path.is_file() and path.name == "tokenizer.json":
        return None, path.parent.resolve()
    entry = Registry().find(spec)
    if entry is None:
        raise LlmctlError(f"--tokenizer {spec!r} is neither a folder nor a registry name",
                          hint="give the tokenizer the data was encoded with (see `llmctl models list`)")
    return entry.name, Path(entry.path)


def _tokenizer_sha(folder: Path) -> str | None:
    from llmctl.token_data import file_sha256

    tj = folder / "tokenizer.json"
    return file_sha256(tj) if tj.is_file() else None


def resolve_tokenizer(data, tokenizer: str | None) -> tuple[str | None, Path]:
    """The tokenizer to train with: the one the data index records; another one is an error."""
    from llmctl.registry import Registry

    rec = data.tokenizer
    want_sha = rec.get("sha256")
    if tokenizer is not None:
        name, folder = _tokenizer_folder(tokenizer)
        sha = _tokenizer_sha(folder)
        rec_label = rec.get("name") or rec.get("path")
        if want_sha and sha and sha != want_sha:
            raise LlmctlError(f"tokenizer {tokenizer} does not match the data: {data.dir} was encoded with {rec_label} "
                              f"(tokenizer.json sha256 {want_sha[:12]}…, this one {sha[:12]}…)",
                              hint=f"drop --tokenizer to use {rec_label}, or re-encode the data with "
                                   f"`llmctl tokenize encode --tokenizer {tokenizer}`")
        if not (want_sha and sha):
            from llmctl.loading import load_tokenizer

            n = len(load_tokenizer(str(folder)))
            if rec.get("vocab_size") and n != rec["vocab_size"]:
                raise LlmctlError(f"tokenizer {tokenizer} ({n} tokens) does not match the data: {data.dir} was encoded "
                                  f"with {rec_label} ({rec['vocab_size']} tokens)",
                                  hint="use the tokenizer the data was encoded with, or re-encode the data")
        return name or rec.get("name"), folder
    folder = Path(rec.get("path") or "")
    name = rec.get("name")
    if not (rec.get("path") and folder.is_dir()):
        entry = Registry().find(name) if name else None
        if entry is None or not Path(entry.path).is_dir():
            raise LlmctlError(f"the tokenizer recorded in {data.dir}/index.json ({rec.get('path')}) is missing",
                              hint="pass it with --tokenizer NAME_OR_DIR")
        folder = Path(entry.path)
    sha = _tokenizer_sha(folder)
    if want_sha and sha and sha != want_sha:
        raise LlmctlError(f"the tokenizer at {folder} changed since {data.dir} was encoded (sha256 differs)",
                          hint="re-encode the data with the current tokenizer, or restore the old one")
    return name, folder


def model_shape(model_cfg: dict, vocab_size: int) -> dict:
    """The resolved size of the model: what must match for a checkpoint to be resumed."""
    arch, h = model_cfg["arch"], model_cfg["hidden_size"]
    heads = model_cfg["num_heads"]
    kv = model_cfg["num_kv_heads"] or heads
    if arch == "gpt2":
        kv = heads
    inter = model_cfg["intermediate_size"]
    if inter is None:
        inter = 4 * h if arch == "gpt2" else int(math.ceil(8 * h / 3 / 64) * 64)
    mult = model_cfg["vocab_multiple"]
    padded = int(math.ceil(vocab_size / mult) * mult)
    return {"arch": arch, "hidden_size": h, "num_layers": model_cfg["num_layers"], "num_heads": heads,
            "num_kv_heads": kv, "intermediate_size": inter,
            "max_position_embeddings": model_cfg["max_position_embeddings"], "vocab_size": padded,
            "tie_embeddings": model_cfg["tie_embeddings"]}


def check_shape(shape: dict) -> None:
    if shape["hidden_size"] % shape["num_heads"]:
        raise LlmctlError(f"model.hidden_size {shape['hidden_size']} is not divisible by model.num_heads "
                          f"{shape['num_heads']}", hint="change one of them in the profile or with --set")
    if shape["num_heads"] % shape["num_kv_heads"]:
        raise LlmctlError(f"model.num_heads {shape['num_heads']} is not a multiple of model.num_kv_heads "
                          f"{shape['num_kv_heads']}", hint="use a divisor of num_heads for num_kv_heads")
    if shape["arch"] == "llama" and (shape["hidden_size"] // shape["num_heads"]) % 2:
        raise LlmctlError(f"head size {shape['hidden_size'] // shape['num_heads']} is odd; RoPE needs an even one",
                          hint="change model.hidden_size or model.num_heads")


def hf_config(shape: dict, model_cfg: dict, tok):
    """A transformers config (LlamaConfig or GPT2Config) for the shape."""
    ids = {"bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
           "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if shape["arch"] == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                           intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
                           num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
                           max_position_embeddings=shape["max_position_embeddings"],
                           rope_theta=model_cfg["rope_theta"], rms_norm_eps=model_cfg["norm_eps"],
                           attention_dropout=model_cfg["dropout"], initializer_range=model_cfg["init_std"],
                           tie_word_embeddings=shape["tie_embeddings"], hidden_act="silu",
                           attn_implementation="sdpa", use_cache=True, **ids)
    from transformers import GPT2Config

    return GPT2Config(vocab_size=shape["vocab_size"], n_embd=shape["hidden_size"], n_layer=shape["num_layers"],
                      n_head=shape["num_heads"], n_inner=shape["intermediate_size"],
                      n_positions=shape["max_position_embeddings"], layer_norm_epsilon=model_cfg["norm_eps"],
                      resid_pdrop=model_cfg["dropout"], embd_pdrop=model_cfg["dropout"],
                      attn_pdrop=model_cfg["dropout"], initializer_range=model_cfg["init_std"],
                      tie_word_embeddings=shape["tie_embeddings"], activation_function="gelu_new",
                      attn_implementation="sdpa", **ids)


def build_model(config_obj):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config_obj, attn_implementation="sdpa")


# ---- data ----------------------------------------------------------------------------------------


def batch_offsets(seed: int, step: int, rollbacks: int, n_tokens: int, seq_len: int, count: int):
    """Start offsets of the global batch of `step`: a pure function of (seed, step, rollbacks)."""
    import numpy as np

    rng = np.random.default_rng([seed, step, rollbacks])
    return rng.integers(0, n_tokens - seq_len - 1, size=count, endpoint=True)


def windows(tokens, offsets, seq_len: int):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(tokens[o:o + seq_len + 1]) for o in offsets]).astype(np.int64)
    return torch.from_numpy(arr)


def val_bytes_per_token(data, split: str, tok, max_tokens: int = 1 << 22) -> tuple[float | None, str]:
    """Bytes per token of the val split: recorded in the index when available, else measured by decoding
    (its first `max_tokens` tokens)."""
    info = data.index["splits"].get(split, {})
    n = data.num_tokens(split)
    if not n:
        return None, "none"
    if info.get("bytes"):
        return info["bytes"] / n, "index"
    toks = data.tokens(split)
    n = min(n, max_tokens)
    total = 0
    step = 1 << 20
    for i in range(0, n, step):
        text = tok.decode([int(t) for t in toks[i:i + step]], skip_special_tokens=True)
        total += len(text.encode("utf-8"))
    return total / n, "decoded"


# ---- training ------------------------------------------------------------------------------------


def _loss(model, batch, ctx):
    import torch.nn.functional as F

    x, y = batch[:, :-1], batch[:, 1:]
    with ctx:
        logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def evaluate(model, tokens, seq_len: int, batch_size: int, max_windows: int | None, device: str, ctx, d: Dist) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of the val split (spread evenly)."""
    import numpy as np
    import torch

    n = len(tokens)
    starts = np.arange(0, n - seq_len - 1 + 1, seq_len)
    if len(starts) == 0:
        return float("nan")
    if max_windows and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    if d.world > 1:
        starts = starts[: max(d.world, len(starts) // d.world * d.world)]
        starts = starts[d.rank::d.world]
    was = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            batch = windows(tokens, starts[i:i + batch_size], seq_len).to(device)
            loss = _loss(model, batch, ctx)
            k = batch[:, 1:].numel()
            total += torch.tensor([loss.item() * k, k], dtype=torch.float64)
    if d.active:
        import torch.distributed as dist

        dist.all_reduce(total)
    model.train(was)
    return float(total[0] / total[1])


def _val_metrics(loss: float, bpt: float | None, prefix: str = "val") -> dict:
    out = {f"{prefix}_loss": round(loss, 6), f"{prefix}_ppl": round(math.exp(min(loss, 50)), 4)}
    if bpt:
        out[f"{prefix}_bpb"] = round(loss / math.log(2) / bpt, 6)
    return out


def _peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, flops in _PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


class _OptimState:
    """Adapts full (gathered) optimizer state to the Checkpointer's `optimizer.state_dict()` call."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def pretrain(data_dir: Path, name: str, config: dict, *, tokenizer: str | None = None, resume: bool = False,
             force: bool = False, command: str = "", on_log: Callable[[dict], None] | None = None) -> dict:
    """Train a model from scratch on a tokenized data dir and register it under `name`.

    Examples:
        pretrain(Path("data/sp"), "tiny-sp", resolve_config("pretrain", "shakespeare-tiny", [], {}))
    """
    from llmctl.loading import load_tokenizer
    from llmctl.registry import Registry, validate_name
    from llmctl.token_data import TokenData
    from llmctl.training import Checkpointer

    tcfg, mcfg, dcfg = config["train"], config["model"], config["data"]
    validate_name(name)
    device = _pick_device(tcfg["device"], int(os.environ.get("WORLD_SIZE", "1")) > 1)
    reg = Registry()
    if reg.find(name) is not None and not force:
        raise LlmctlError(f"model {name!r} already exists in the registry",
                          hint="pick another --name or pass --force to replace it")

    # -- data and tokenizer (all checks before anything is written) --
    data_dir = Path(data_dir).expanduser().resolve()
    data = TokenData(data_dir)
    tok_name, tok_dir = resolve_tokenizer(data, tokenizer)
    tok = load_tokenizer(str(tok_dir))
    train_split = dcfg["train_split"]
    n_train = len(data.tokens(train_split))
    seq_len, bsz = tcfg["seq_len"], tcfg["batch_size"]
    vocab = max(len(tok), int(data.tokenizer.get("vocab_size") or 0))
    shape = model_shape(mcfg, vocab)
    check_shape(shape)
    if seq_len > shape["max_position_embeddings"]:
        raise LlmctlError(f"train.seq_len {seq_len} is longer than model.max_position_embeddings "
                          f"{shape['max_position_embeddings']}",
                          hint=f"use --seq-len {shape['max_position_embeddings']} or less, or raise "
                               f"model.max_position_embeddings")
    if n_train < bsz * seq_len + 1:
        raise LlmctlError(f"the {train_split!r} split of {data_dir} has {n_train} tokens, fewer than one batch "
                          f"({bsz} x {seq_len} + 1)",
                          hint="encode more text, or lower --batch-size / --seq-len")

    run_dir = run_dir_for(name)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=2)
    state = None
    if resume:
        if not ckpt.steps():
            raise LlmctlError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}",
                              hint="start the run without --resume (checkpoints are written every train.save_every steps)")
        state = ckpt.load_latest()
        saved_shape = state["extra"].get("model_shape", {})
        diff = [f"{k} {saved_shape.get(k)} -> {shape[k]}" for k in SHAPE_KEYS if saved_shape.get(k) != shape[k]]
        if diff:
            raise LlmctlError(f"--resume: the model shape changed since the checkpoint in {run_dir} ({', '.join(diff)})",
                              hint="resume with the run's original model settings, or start over with --force")
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise LlmctlError(f"run {run_dir} already exists",
                          hint="continue it with --resume, pick another --name, or pass --force to start over")

    d = _init_dist(config, device)
    plan = _Plan(name=name, config=config, command=command, resume=resume, force=force, device=device,
                 data_dir=data_dir, data=data, tok=tok, tok_name=tok_name, tok_dir=tok_dir, shape=shape,
                 run_dir=run_dir, state=state, d=d)
    try:
        return _train(plan, on_log)
    finally:
        if d.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


@dataclass
class _Plan:
    """Everything checked before training starts."""

    name: str
    config: dict
    command: str
    resume: bool
    force: bool
    device: str
    data_dir: Path
    data: Any
    tok: Any
    tok_name: str | None
    tok_dir: Path
    shape: dict
    run_dir: Path
    state: dict | None
    d: Dist


def _train(p: _Plan, on_log: Callable[[dict], None] | None) -> dict:
    import torch

    from llmctl.profiles import save_config
    from llmctl.registry import ModelEntry, Registry
    from llmctl.token_data import file_sha256
    from llmctl.training import (Checkpointer, MetricsLogger, autocast, compute_dtype, lr_factor, param_groups,
                                 seed_everything, set_rng_state)

    name, config, d, device, shape, tok, run_dir, state = p.name, p.config, p.d, p.device, p.shape, p.tok, p.run_dir, p.state
    tcfg, mcfg, dcfg, scfg = config["train"], config["model"], config["data"], config["spike"]
    data, data_dir, resume, force, command = p.data, p.data_dir, p.resume, p.force, p.command
    tok_name, tok_dir = p.tok_name, p.tok_dir
    train_split, val_split = dcfg["train_split"], dcfg["val_split"]
    train_tokens = data.tokens(train_split)
    n_train = len(train_tokens)
    has_val = data.num_tokens(val_split) > 0
    seq_len, bsz, accum = tcfg["seq_len"], tcfg["batch_size"], tcfg["grad_accum"]
    ckpt = Checkpointer(run_dir / "checkpoints", keep=2)
    reg = Registry()
    if d.main and not resume and run_dir.exists() and force:
        shutil.rmtree(run_dir)
    d.barrier()
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "llmctl-config.yaml", command)
    global_seqs = bsz * accum * d.world
    tokens_per_step = global_seqs * seq_len
    max_steps = tcfg["max_steps"]
    if tcfg["epochs"]:
        max_steps = max(1, math.ceil(tcfg["epochs"] * n_train / tokens_per_step))
    seed = tcfg["seed"]

    # -- model, optimizer, schedule --
    seed_everything(seed)
    cfg_obj = hf_config(shape, mcfg, tok)
    raw = build_model(cfg_obj).to(device)
    n_params = sum(w.numel() for w in raw.parameters())
    fsdp = d.active and config["dist"]["strategy"] == "fsdp"
    model = raw
    if tcfg["compile"]:
        model = torch.compile(raw)
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (d.world,))
        layers = raw.model.layers if shape["arch"] == "llama" else raw.transformer.h
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(raw, mesh=mesh)
    elif d.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    groups = param_groups(raw, tcfg["weight_decay"])
    betas = (tcfg["beta1"], tcfg["beta2"])
    opt = None
    if not fsdp:
        try:
            opt = torch.optim.AdamW(groups, lr=tcfg["lr"], betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):
            opt = None
    if opt is None:
        opt = torch.optim.AdamW(groups, lr=tcfg["lr"], betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, max_steps, tcfg["warmup_steps"], tcfg["min_lr_ratio"]))

    def full_state() -> tuple[dict, Any]:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            msd, osd = get_state_dict(raw, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return msd, _OptimState(osd)
        return raw.state_dict(), opt

    def load_state(st: dict) -> None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(raw, opt, model_state_dict=st["model"], optim_state_dict=st["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        else:
            try:
                raw.load_state_dict(st["model"])
            except RuntimeError as exc:
                raise LlmctlError(f"the checkpoint in {run_dir} does not fit this model ({str(exc).splitlines()[0]})",
                                  hint="resume with the run's original model settings, or start over with --force") from exc
            opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])

    step, rollbacks, loss_hist, tokens_seen = 0, 0, [], 0
    if state is not None:
        load_state(state)
        ex = state["extra"]
        step, rollbacks = int(state["step"]), int(ex.get("rollbacks", 0))
        loss_hist, tokens_seen = list(ex.get("loss_hist", [])), int(ex.get("tokens_seen", 0))

    def save(at: int) -> None:
        msd, osd = full_state()
        if d.main:
            ckpt.save(at, msd, osd, sched, extra={
                "model_shape": shape, "data_position": {"step": at, "seed": seed, "rollbacks": rollbacks,
                                                        "sequences_seen": at * global_seqs},
                "rollbacks": rollbacks, "loss_hist": loss_hist[-scfg["window"]:], "tokens_seen": tokens_seen,
                "world": d.world})
        d.barrier()

    dtype = compute_dtype(tcfg["dtype"], device)
    ctx = autocast(device, dtype) if dtype != "float32" else nullcontext()
    # float16 autocast on GPUs needs loss scaling; with any other dtype the scaler passes everything through
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16" and device.startswith("cuda"))
    val_tokens = data.tokens(val_split) if has_val else None
    bpt, bpt_source = (val_bytes_per_token(data, val_split, tok) if has_val else (None, "none"))
    logger = MetricsLogger(run_dir, tensorboard=True, append=resume) if d.main else None
    if logger is not None and resume:
        logger.truncate_after(step)
    flops_per_token = 6 * n_params + 12 * shape["num_layers"] * shape["hidden_size"] * seq_len
    peak = _peak_flops(device)
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)

    def emit(row: dict) -> None:
        if logger is not None:
            logger.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        if on_log is not None and d.main:
            on_log(row)

    def mean_across(t):
        if d.active:
            import torch.distributed as dist

            t = t.detach().clone()
            dist.all_reduce(t)
            t /= d.world
        return t

    if d.main and on_log is not None:
        on_log({"event": "start", "params": n_params, "device": device, "world": d.world, "max_steps": max_steps,
                "resumed_from": step if state is not None else None, "tokens_per_step": tokens_per_step,
                "dtype": dtype, "run_dir": str(run_dir), "strategy": config["dist"]["strategy"] if d.active else None})
    model.train()
    t_start = time.perf_counter()
    t_log, tok_log, steps_since_log = time.perf_counter(), 0, 0
    loss_acc = torch.zeros((), device=device)
    gnorm = None
    first_step = step
    while step < max_steps:
        offs = batch_offsets(seed, step + 1, rollbacks, n_train, seq_len, global_seqs)
        mine = offs[d.rank * bsz * accum:(d.rank + 1) * bsz * accum]
        step_loss = torch.zeros((), device=device)
        for m in range(accum):
            batch = windows(train_tokens, mine[m * bsz:(m + 1) * bsz], seq_len).to(device, non_blocking=True)
            sync = nullcontext()
            if d.active and not fsdp and m < accum - 1:
                sync = model.no_sync()
            elif fsdp:
                model.set_requires_gradient_sync(m == accum - 1)
            with sync:
                loss = _loss(model, batch, ctx) / accum
                scaler.scale(loss).backward()
            step_loss += loss.detach()
        # spike guard: a loss far above the recent mean rolls back to the last checkpoint with a lower LR
        if scfg["enabled"]:
            cur = float(mean_across(step_loss))
            window = loss_hist[-scfg["window"]:]
            if (len(window) >= min(5, scfg["window"]) and cur > scfg["threshold"] * (sum(window) / len(window))
                    and rollbacks < scfg["max_rollbacks"]):
                opt.zero_grad(set_to_none=True)
                back = ckpt.load_latest()
                if back is None:
                    if on_log is not None and d.main:
                        on_log({"event": "spike", "step": step + 1, "loss": cur, "note": "no checkpoint to roll back to"})
                else:
                    load_state(back)
                    rollbacks += 1
                    step = int(back["step"])
                    loss_hist = list(back["extra"].get("loss_hist", []))
                    tokens_seen = int(back["extra"].get("tokens_seen", 0))
                    factor = scfg["lr_factor"] ** rollbacks
                    sched.base_lrs = [tcfg["lr"] * factor for _ in sched.base_lrs]
                    for g, lr0 in zip(opt.param_groups, sched.base_lrs):
                        g["lr"] = lr0 * lr_factor(step, max_steps, tcfg["warmup_steps"], tcfg["min_lr_ratio"])
                    if logger is not None:
                        logger.truncate_after(step)
                    emit({"step": step, "event": "rollback", "spike_loss": round(cur, 6), "rollbacks": rollbacks,
                          "lr_scale": factor})
                    loss_acc.zero_()
                    steps_since_log = 0
                    continue
            loss_hist.append(cur)
            loss_hist = loss_hist[-scfg["window"]:]
        if tcfg["grad_clip"] > 0:
            scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        tok_log += tokens_per_step
        steps_since_log += 1
        loss_acc += step_loss
        if step % tcfg["log_every"] == 0 or step == max_steps:
            loss_val = float(mean_across(loss_acc)) / steps_since_log
            now = time.perf_counter()
            tps = tok_log / max(now - t_log, 1e-9)
            row = {"step": step, "loss": round(loss_val, 6), "lr": sched.get_last_lr()[0],
                   "tokens": tokens_seen, "tokens_per_s": round(tps, 1)}
            if gnorm is not None:
                g = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
                row["grad_norm"] = round(float(g), 4)
            if peak:
                row["mfu"] = round(tps * flops_per_token / (peak * d.world), 4)
            emit(row)
            t_log, tok_log, steps_since_log = time.perf_counter(), 0, 0
            loss_acc.zero_()
        if has_val and tcfg["eval_every"] and step % tcfg["eval_every"] == 0 and step != max_steps:
            t_pause = time.perf_counter()
            vl = evaluate(model, val_tokens, seq_len, bsz, tcfg["eval_batches"] * bsz, device, ctx, d)
            emit({"step": step, **_val_metrics(vl, bpt)})
            t_log += time.perf_counter() - t_pause
        if tcfg["save_every"] and step % tcfg["save_every"] == 0 and step != max_steps:
            t_pause = time.perf_counter()
            save(step)
            t_log += time.perf_counter() - t_pause
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train_seconds = time.perf_counter() - t_start
    trained_tokens = (step - first_step) * tokens_per_step

    # -- final evaluation on the whole val split (up to data.final_eval_tokens), checkpoint, model --
    final: dict = {}
    if has_val and dcfg["final_eval_tokens"]:
        limit = dcfg["final_eval_tokens"]
        vt = val_tokens[:limit + 1] if len(val_tokens) > limit + 1 else val_tokens
        vl = evaluate(model, vt, seq_len, bsz, None, device, ctx, d)
        final = _val_metrics(vl, bpt)
        final["val_tokens_scored"] = int((len(vt) - 1) // seq_len * seq_len)
        emit({"step": step, **final})
    save(step)
    full_msd, _ = full_state() if fsdp else (None, None)
    result: dict = {"name": name, "run_dir": str(run_dir), "steps": step, "max_steps": max_steps, "params": n_params,
                    "tokens_per_step": tokens_per_step, "tokens_trained": trained_tokens,
                    "seconds": round(train_seconds, 2),
                    "tokens_per_s": round(trained_tokens / train_seconds, 1) if train_seconds > 0 and trained_tokens else None,
                    "world": d.world, "device": device, "dtype": dtype, "final": final, "bytes_per_token": bpt,
                    "bytes_per_token_source": bpt_source}
    if not d.main:
        return result
    logger.close(title=f"pretrain {name}")
    parents = []
    if tok_name and (e := reg.find(tok_name)) is not None and e.name != name:
        parents.append(e.name)
    for e in reg.list():
        if e.format == "data" and e.name != name and Path(e.path).resolve() == data_dir and e.name not in parents:
            parents.append(e.name)
    meta = {"arch": shape["arch"], "shape": shape, "params": n_params, "data_dir": str(data_dir),
            "data_index_sha256": file_sha256(data_dir / "index.json"), "tokenizer": tok_name or str(tok_dir),
            "run_dir": str(run_dir), "steps": step, "tokens_trained_total": tokens_seen, "world": d.world,
            "strategy": config["dist"]["strategy"] if d.active else "single",
            "bytes_per_token": bpt, "bytes_per_token_source": bpt_source}
    metrics = {f"pretrain.{k}": v for k, v in final.items() if k.startswith("val_") and k != "val_tokens_scored"}
    with reg.new_model_dir(name, force=force) as tmp:
        out = build_model(cfg_obj)
        out.load_state_dict(full_msd if fsdp else raw.state_dict())
        out.generation_config.pad_token_id = tok.pad_token_id
        out.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_config(config, tmp / "llmctl-config.yaml", command)
        if (run_dir / "loss.png").exists():
            shutil.copy2(run_dir / "loss.png", tmp / "loss.png")
        entry = reg.add(ModelEntry(name=name, format="hf", path="", parents=parents, command=command, profile=config,
                                   metrics=metrics, meta=meta), staged=tmp, force=force)
    result["model_path"] = entry.path
    result["parents"] = parents
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result
