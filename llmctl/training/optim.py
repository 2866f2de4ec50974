"""AdamW with weight-decay groups, the warmup + cosine schedule, and one optimizer step.

Examples:
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    sched = make_scheduler(opt, max_steps=1000, warmup_steps=100, min_lr_ratio=0.1)
    grad_norm = optimizer_step(opt, sched, params, precision, grad_clip=1.0)
"""

from __future__ import annotations

import math

from llmctl.errors import LlmctlError


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices (and embeddings), not biases or norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool = True):
    """AdamW over `param_groups(model)`, fused where the device supports it (CUDA; CPU in recent torch).

    `fused=False` for FSDP-sharded parameters (DTensors), which the fused kernel does not take.
    """
    import torch

    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise LlmctlError("the model has no trainable parameters", hint="check the training method's settings")
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_factor(step: int, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at max_steps.

    Examples:
        lr_factor(0, 100, 10, 0.1) == 0.1 * 0 ... ; lr_factor(10, 100, 10, 0.1) == 1.0
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer, max_steps: int, warmup_steps: int, min_lr_ratio: float):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, max_steps, warmup_steps, min_lr_ratio))


def optimizer_step(optimizer, scheduler, params, precision, grad_clip: float):
    """Unscale (fp16), clip the global gradient norm (0 = off), step optimizer and schedule, clear grads.

    `scheduler` None leaves the schedule where it is (PPO makes several updates per step and moves it once).
    Returns the gradient norm before clipping (a tensor; None when clipping is off).
    """
    import torch

    norm = None
    if grad_clip > 0:
        precision.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    precision.scaler.step(optimizer)
    precision.scaler.update()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
