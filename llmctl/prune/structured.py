"""Structured pruning: whole attention heads (GQA groups kept consistent) or MLP channels removed, so the saved HF
model is genuinely smaller; ranked by calibration importance ‖X‖₂·‖W_out column‖₂ (`llmctl prune --structure`).

Examples:
    scores = structured_importance(model, windows, "heads")
    facts = prune_heads(model, scores, ratio=0.25, mode="query")
"""

from __future__ import annotations

from llmctl.compress.blocks import decoder_layers
from llmctl.errors import LlmctlError


def _llama_parts(model):
    layers = decoder_layers(model)
    block = layers[0]
    if not (
        hasattr(block, "self_attn")
        and hasattr(block, "mlp")
        and hasattr(block.self_attn, "o_proj")
        and hasattr(block.mlp, "down_proj")
    ):
        raise LlmctlError(
            f"structured pruning supports LLaMA-style models (got {model.config.model_type})",
            hint="use unstructured --sparsity or --pattern for this architecture",
        )
    return layers


def structured_importance(model, windows, what: str) -> list:
    """Per block: importance of each head (‖X‖₂·‖W_o col‖₂ summed over the head's slice) or MLP channel."""
    import torch

    layers = _llama_parts(model)
    sq: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(layers):
        target = block.self_attn.o_proj if what == "heads" else block.mlp.down_proj

        def hook(_m, inp, _o, i=i):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
            s = (x**2).sum(dim=0)
            sq[i] = sq[i] + s if i in sq else s

        handles.append(target.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=w, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    scores = []
    for i, block in enumerate(layers):
        target = block.self_attn.o_proj if what == "heads" else block.mlp.down_proj
        per_col = sq[i].sqrt() * target.weight.data.float().norm(dim=0)
        if what == "heads":
            hd = head_dim_of(model.config)
            per_col = per_col.reshape(-1, hd).sum(dim=1)
        scores.append(per_col)
    return scores


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def plan_heads(config, ratio: float, mode: str) -> tuple[int, int]:
    """(q heads removed per kv group, kv groups removed) for this ratio; errors if a layer would lose every head."""
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    rep = heads // kv
    if mode == "query" and rep == 1:
        mode = "group"  # plain multi-head attention: a head is its own kv group
    if mode == "query":
        k = round(ratio * rep)
        if k >= rep:
            raise LlmctlError(
                f"--ratio {ratio} would remove all {rep} query heads of every kv group ({heads} heads, {kv} kv heads)",
                hint=f"use a ratio below {(rep - 0.5) / rep:.2f}, or --set head_mode=group to drop whole kv groups",
            )
        if k == 0:
            raise LlmctlError(
                f"--ratio {ratio} removes no head ({rep} query heads per kv group)",
                hint=f"use a ratio of at least {0.5 / rep:.2f}",
            )
        return k, 0
    g = round(ratio * kv)
    if g >= kv:
        raise LlmctlError(
            f"--ratio {ratio} would remove every kv group ({kv}) and so every head of a layer",
            hint=f"use a ratio below {(kv - 0.5) / kv:.2f}",
        )
    if g == 0:
        raise LlmctlError(f"--ratio {ratio} removes no kv group ({kv} groups)", hint=f"use at least {0.5 / kv:.2f}")
    return 0, g


def _keep_rows(linear, idx, dim: int):
    """Shrink a Linear to the given output (dim=0) or input (dim=1) indices, in place."""
    import torch

    W = linear.weight.data.index_select(dim, idx).clone()
    linear.weight = torch.nn.Parameter(W)
    if dim == 0:
        linear.out_features = W.shape[0]
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data.index_select(0, idx).clone())
    else:
        linear.in_features = W.shape[1]


def prune_heads(model, scores: list, ratio: float, mode: str) -> dict:
    import torch

    cfg = model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    rep, hd = heads // kv, head_dim_of(cfg)
    k, g = plan_heads(cfg, ratio, mode)
    per_layer = []
    for i, block in enumerate(decoder_layers(model)):
        s = scores[i].reshape(kv, rep)
        if k:  # drop the k least important query heads inside every kv group
            keep_q = torch.sort(torch.topk(s, rep - k, dim=1).indices, dim=1).values
            q_heads = (keep_q + torch.arange(kv).reshape(-1, 1) * rep).flatten()
            kv_heads = torch.arange(kv)
        else:  # drop the g least important kv groups with all their query heads
            kv_heads = torch.sort(torch.topk(s.sum(dim=1), kv - g).indices).values
            q_heads = (kv_heads.reshape(-1, 1) * rep + torch.arange(rep).reshape(1, -1)).flatten()
        q_idx = (q_heads.reshape(-1, 1) * hd + torch.arange(hd).reshape(1, -1)).flatten()
        kv_idx = (kv_heads.reshape(-1, 1) * hd + torch.arange(hd).reshape(1, -1)).flatten()
        attn = block.self_attn
        _keep_rows(attn.q_proj, q_idx, 0)
        _keep_rows(attn.k_proj, kv_idx, 0)
        _keep_rows(attn.v_proj, kv_idx, 0)
        _keep_rows(attn.o_proj, q_idx, 1)
        new_heads, new_kv = len(q_heads), len(kv_heads)
        attn.num_key_value_groups = new_heads // new_kv
        if hasattr(attn, "num_heads"):
            attn.num_heads = new_heads
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = new_kv
        per_layer.append({"layer": i, "kept_heads": q_heads.tolist(), "kept_kv_heads": kv_heads.tolist()})
    cfg.head_dim = hd  # must be explicit once heads × head_dim no longer equals hidden_size
    cfg.num_attention_heads = heads - kv * k - g * rep
    cfg.num_key_value_heads = kv - g
    return {
        "heads_before": heads,
        "heads_after": cfg.num_attention_heads,
        "kv_heads_before": kv,
        "kv_heads_after": cfg.num_key_value_heads,
        "head_dim": hd,
        "per_layer": per_layer,
    }


def prune_channels(model, scores: list, ratio: float) -> dict:
    import torch

    cfg = model.config
    inter = cfg.intermediate_size
    remove = round(ratio * inter)
    if remove >= inter:
        raise LlmctlError(
            f"--ratio {ratio} would remove all {inter} MLP channels of every layer", hint="use a ratio below 1"
        )
    if remove == 0:
        raise LlmctlError(f"--ratio {ratio} removes no MLP channel ({inter} per layer)", hint="use a larger ratio")
    keep = inter - remove
    for i, block in enumerate(decoder_layers(model)):
        idx = torch.sort(torch.topk(scores[i], keep).indices).values
        mlp = block.mlp
        for name in ("gate_proj", "up_proj"):
            if hasattr(mlp, name):
                _keep_rows(getattr(mlp, name), idx, 0)
        _keep_rows(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    cfg.intermediate_size = keep
    return {"intermediate_before": inter, "intermediate_after": keep}
