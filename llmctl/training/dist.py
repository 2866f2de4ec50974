"""One process or many: the torchrun environment, wrapping a model for DDP or FSDP2, and portable full state dicts.

Shared by `pretrain` and `finetune`. Checkpoints hold full (unsharded) tensors and an optimizer state keyed by
parameter index, whatever the strategy and the number of processes, so a run saved by 2 FSDP processes resumes
in 1 plain process and the other way round (FSDP state goes through torch.distributed.checkpoint's
`get_state_dict` / `set_state_dict`).

Examples:
    d = init_dist(config, device)                 # Dist() in a single process
    model, fsdp = wrap_model(raw, d, config, device)
    msd, opt_state = full_state(raw, opt, fsdp)    # rank 0 writes them
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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

    def mean(self, t):
        """The mean of a tensor over all processes (itself in a single process)."""
        if not self.active:
            return t
        import torch.distributed as dist

        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.world

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order ([obj] in a single process)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank from the torchrun environment (0 outside torchrun), before any process group."""
    return int(os.environ.get("RANK", "0"))


def init_dist(config: dict, device: str) -> Dist:
    """Join the torchrun process group (gloo on CPU, nccl on GPU unless set); a plain Dist outside torchrun.

    `config["dist"]["backend"]` picks the backend (auto, nccl, gloo); commands without a `dist` section get auto.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    backend = (config.get("dist") or {}).get("backend", "auto")
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


def pick_device(device: str) -> str:
    """The device of this process: `--device`, with cuda meaning this rank's GPU under torchrun."""
    from llmctl.models.loading import pick_device as pick

    dev = pick(device)
    if dev == "cuda" and in_torchrun():
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dev


def decoder_layers(model) -> list:
    """The repeated transformer blocks of a model (through a PEFT wrapper): FSDP's sharding units, found as
    everywhere (llmctl.models.formats.hf.decoder_layers); none found shards the whole model as one unit."""
    from llmctl.models.formats.hf import decoder_layers as blocks

    return list(blocks(model, required=False))


def wrap_model(raw, d: Dist, config: dict, device: str):
    """(model to call, whether it is FSDP-sharded): compiled if asked, DDP or FSDP2 under torchrun.

    FSDP2 shards each decoder layer, then the rest (embeddings, final norm, head) as one root group.
    """
    import torch

    model = torch.compile(raw) if config["train"].get("compile") else raw
    if not d.active:
        return model, False
    if config["dist"]["strategy"] == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (d.world,))
        for layer in decoder_layers(raw):
            fully_shard(layer, mesh=mesh)
        fully_shard(raw, mesh=mesh)
        return model, True
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None), False


class _OptimState:
    """Adapts a gathered optimizer state to the Checkpointer's `optimizer.state_dict()` call."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _param_names(raw, opt) -> list[str]:
    """The names of the optimizer's parameters in its own order (the index a plain `state_dict()` uses)."""
    names = {id(p): n for n, p in raw.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def _keyed(osd: dict, order: list, to_index: bool) -> dict:
    """An optimizer state dict with its parameters renamed: names → indices (to_index) or indices → names."""
    key = {n: i for i, n in enumerate(order)} if to_index else dict(enumerate(order))
    if not osd.get("state") and not osd.get("param_groups"):
        return osd
    return {
        "state": {key.get(k, k): v for k, v in osd["state"].items()},
        "param_groups": [{**g, "params": [key.get(p, p) for p in g["params"]]} for g in osd["param_groups"]],
    }


def full_state(raw, opt, fsdp: bool, trainable_only: bool = False):
    """(model state dict, object with .state_dict() for the optimizer): full tensors, optimizer keyed by index.

    Every process must call it under FSDP (gathering is a collective); only rank 0 gets the tensors there.
    `trainable_only` keeps the parameters that train (a LoRA adapter, say), as `named_parameters` names them.
    """
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        msd, osd = get_state_dict(raw, opt, options=opts)
        osd = _keyed(osd, _param_names(raw, opt), to_index=True)
        if trainable_only:  # tied weights appear twice in a state dict, once in named_parameters
            keep = {n for n, p in raw.named_parameters() if p.requires_grad}
            msd = {n: v for n, v in msd.items() if n in keep}
        return msd, _OptimState(osd)
    if trainable_only:
        return {n: p.detach().cpu().clone() for n, p in raw.named_parameters() if p.requires_grad}, opt
    return raw.state_dict(), opt


def load_full_state(raw, opt, state: dict, fsdp: bool, partial: bool = False) -> None:
    """Put a checkpoint's full model and optimizer state back (sharding it again under FSDP).

    `partial`: the model state holds only some parameters (a trainable-only checkpoint); the others stay.
    Older FSDP checkpoints keyed their optimizer state by name; both forms load.
    """
    osd = state["optimizer"]
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        osd = _keyed(osd, _param_names(raw, opt), to_index=False)
        set_state_dict(
            raw,
            opt,
            model_state_dict=state["model"],
            optim_state_dict=osd,
            options=StateDictOptions(full_state_dict=True, strict=not partial),
        )
        return
    if osd.get("state") and isinstance(next(iter(osd["state"])), str):
        osd = _keyed(osd, _param_names(raw, opt), to_index=True)
    raw.load_state_dict(state["model"], strict=not partial)
    opt.load_state_dict(osd)
