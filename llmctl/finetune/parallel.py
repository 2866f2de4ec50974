"""Finetuning on one process or many (torchrun): which micro-batches a process runs, the wrapped loss, state.

The same code runs in one process (N = 1). Under torchrun, N processes with `--grad-accum A` see the global batch
of one process with N x A: step s's micro-batches are g = (s - 1) * N * A + k (k < N * A, from the deterministic
plan in `batches`), and rank r runs k in [r * A, (r + 1) * A). Each step's loss is divided by the denominator of
all N * A micro-batches (response tokens or pairs, computed alike on every rank), and since DDP and FSDP average
gradients over ranks, each rank scales its loss by N: the update equals the single-process one. Dropout is seeded
per micro-batch (seed, g), so it does not depend on which process runs a micro-batch either.

- DDP (`dist.strategy=ddp`, the default): every method (LoRA, QLoRA, DoRA, prompt/prefix tuning, full) and
  objective; `StepModule` (the objective's loss as a module) is what DDP wraps, so its forward covers the fast
  response-only path, the DPO reference pass and the reward head alike.
- FSDP2 (`dist.strategy=fsdp`): full finetuning (and LoRA/DoRA); decoder layers are sharded one by one and the
  rest (embeddings, norm, head) with the `StepModule` as root, so evaluation runs through it as well.

Checkpoints hold full tensors and an index-keyed optimizer state (`llmctl.training.dist`), written by rank 0, so a
run resumes on any number of processes as long as N x A (the global batch) stays the same.

Examples:
    par = Parallel(setup, models, accum=2)           # wraps for DDP/FSDP under torchrun
    loss, extra, tokens = par.step_loss(step, precision)
"""

from __future__ import annotations

from typing import Any

from llmctl.errors import LlmctlError
from llmctl.finetune.batches import to_device

# Methods FSDP can shard: full weights, and LoRA/DoRA on a plain (not 4-bit) base.
FSDP_METHODS = ("full", "lora", "dora")


def check_strategy(config: dict, world: int) -> None:
    """Refuse a strategy the method cannot use (only under torchrun: a single process ignores `dist`)."""
    if world > 1 and config["dist"]["strategy"] == "fsdp" and config["method"] not in FSDP_METHODS:
        raise LlmctlError(
            f"dist.strategy=fsdp cannot shard a --method {config['method']} run",
            hint=f"use dist.strategy=ddp, or --method {' / '.join(FSDP_METHODS)} with FSDP",
        )


def micro_seed(seed: int, g: int) -> int:
    """The RNG seed of micro-batch g (dropout): the same whichever process runs it, and after a resume."""
    return (seed * 1_000_003 + g) % (2**63 - 1)


def _module_class():
    import torch

    class StepModule(torch.nn.Module):
        """The objective's loss (or its evaluation) as a module: what DDP wraps and FSDP shards as its root."""

        def __init__(self, objective, models, config: dict):
            super().__init__()
            self.net = models.net  # registered: DDP and FSDP see its parameters (the reference model stays out)
            self.objective, self.models, self.config = objective, models, config

        def forward(self, batch: dict | None = None, denom: int = 1, scale: float = 1.0, evaluate: tuple = ()):
            if evaluate:
                return self.objective.evaluate(self.models, *evaluate)
            loss, extra = self.objective.loss(self.models, batch, denom, self.config)
            return loss * scale, loss.detach(), extra

    return StepModule


class Parallel:
    """How a run's steps spread over the processes of `setup.d` (one process: plain calls)."""

    def __init__(self, s, models, accum: int):
        self.s, self.d, self.accum = s, s.d, accum
        self.world = self.d.world
        self.module = _module_class()(s.objective, models, s.config)
        self.fsdp = self.d.active and s.config["dist"]["strategy"] == "fsdp"
        self.wrapped: Any = self.module
        if self.d.active:
            self._wrap()

    def _wrap(self) -> None:
        import torch

        from llmctl.training.dist import decoder_layers

        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cuda" if self.s.device.startswith("cuda") else "cpu", (self.world,))
            for layer in decoder_layers(self.module.net):
                fully_shard(layer, mesh=mesh)
            fully_shard(self.module, mesh=mesh)
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(self.s.device).index] if self.s.device.startswith("cuda") else None
        # buffers (rotary frequencies) are computed alike everywhere: no broadcast before every forward
        self.wrapped = DDP(self.module, device_ids=ids, forward_sync_buffers=False)

    # ---- one step -------------------------------------------------------------------------------------------

    def micro_batches(self, step: int) -> tuple[list[int], list[int]]:
        """(indices of all the step's micro-batches, the ones this process runs)."""
        n = self.accum * self.world
        every = [(step - 1) * n + k for k in range(n)]
        return every, every[self.d.rank * self.accum : (self.d.rank + 1) * self.accum]

    def step_loss(self, step: int, precision) -> tuple[float, dict, int]:
        """Forward and backward over this process's micro-batches of `step`; (global loss, extras, global tokens).

        The loss and extras are those one process would log for the whole global batch.
        """
        import contextlib

        import torch

        plan, seed = self.s.plan, self.s.config["train"]["seed"]
        every, mine = self.micro_batches(step)
        batches = {g: plan.batch(g) for g in every}
        denom = self.s.objective.denominator([batches[g] for g in every])
        tokens = sum(batches[g]["tokens"] for g in every)
        losses, extra = [], {}
        for i, g in enumerate(mine):
            last = i == len(mine) - 1
            sync = contextlib.nullcontext()
            if self.d.active and not self.fsdp and not last:
                sync = self.wrapped.no_sync()  # DDP: all-reduce once, after the last micro-batch
            elif self.fsdp:
                self.module.set_requires_gradient_sync(last)
            torch.manual_seed(micro_seed(seed, g))
            with sync:
                with precision.autocast():
                    loss, raw, extra = self.wrapped(to_device(batches[g], self.s.device), denom, float(self.world))
                precision.backward(loss)
            losses.append(float(raw))
        if self.d.active:
            gathered = self.d.gather((losses, extra))
            losses = [x for part, _ in gathered for x in part]
            extra = gathered[-1][1]  # one process logs its last micro-batch's extras: the last rank's
        total = 0.0
        for x in losses:  # summed in micro-batch order, as one process does
            total += x
        return total, extra, tokens

    def evaluate(self, plan, config: dict, device: str, precision, max_batches: int | None) -> dict:
        """The objective's evaluation (every process computes the same numbers; under FSDP all take part)."""
        args = (plan, config, device, precision, max_batches)
        if self.fsdp:
            return self.module(evaluate=args)  # through the FSDP root, which gathers embeddings and head
        return self.s.objective.evaluate(self.module.models, *args)

    # ---- checkpoints and the final model --------------------------------------------------------------------

    def state(self, optimizer):
        """(trainable weights, optimizer state) in full; every process must call it, rank 0 gets the tensors."""
        from llmctl.training.dist import full_state

        return full_state(self.module.net, optimizer, self.fsdp, trainable_only=True)

    def load(self, optimizer, state: dict) -> None:
        """Put a checkpoint's trainable weights and optimizer state back, whatever world size wrote it."""
        from llmctl.training.dist import load_full_state

        load_full_state(self.module.net, optimizer, state, self.fsdp, partial=True)

    def final_net(self):
        """The trained net as a plain model to publish (rank 0; None elsewhere). A collective under FSDP."""
        if not self.fsdp:
            return self.module.net if self.d.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        net = self.module.net
        full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.d.main:
            return None
        return _rebuild(net, full)


def _rebuild(net, state: dict):
    """A plain (unsharded) copy of an FSDP-sharded transformers or PEFT model, from its full state dict."""
    from transformers.modeling_utils import no_init_weights

    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    cls = next(c for c in type(base).__mro__ if c.__module__.startswith("transformers.models."))
    with no_init_weights():
        plain = cls(base.config)
    if base is not net:
        from peft import get_peft_model

        plain = get_peft_model(plain, net.peft_config[net.active_adapter])
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise LlmctlError(
            "the gathered FSDP weights do not fit the model they came from",
            hint="report this with the command line; the checkpoints in the run dir are intact",
        )
    return plain.float()
