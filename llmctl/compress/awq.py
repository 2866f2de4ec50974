"""AWQ (Lin et al. 2023) from per-input statistics: scales and clipping searched on exact output errors, no replays.

Per decoder block, one dense forward gathers, for every input class (the linears reading one tensor), the
mean |x| per channel and the Gram matrix G = Σ xᵀx over every calibration token. Then, as neural-compressor's
AWQ (with llmctl's fixes) does:
- scales for each (previous op → linears) pair (LLaMA: norm → q/k/v, norm → gate/up, up → down, v → o
  without GQA): s = x_mean^α / w_mean^(1-α) normalized by √(max·min), α over a grid of 20; the weights are
  fake-quantized as Q(W·s)/s;
- each linear's clipping maxima per row and group (llmctl.quantize.inc_patches.awq_clip_maxima) on the inputs it sees
  after scaling (G scaled by 1/s on both sides); linears in no pair (o_proj under GQA) are clipped too;
- round-to-nearest on neural-compressor RTN's grid.
The error of a candidate is the linears' output error on the calibration tokens, tr(ΔW G ΔWᵀ): the AWQ
paper's objective, computed exactly from G instead of by re-running the block 20 times per pair
(neural-compressor scores q/k/v and gate/up by the whole block's output; AutoAWQ by the attention's and the
MLP's output; for up → down all three are the same). Each block's outputs for the next block come from its
unquantized weights, as in both implementations.

Examples:
    layers = awq_model(model, windows, bits=4, group_size=128, progress=say)   # name → QuantizedWeight
"""

from __future__ import annotations

from collections.abc import Callable

from llmctl.errors import LlmctlError
from llmctl.runtime.progress import Progress

SCALE_GRID = 20


def weight_mean(weight, group_size: int):
    """neural-compressor's w_mean: |w| / max|w| of each group of `group_size` consecutive weights of the
    flattened matrix, averaged over rows (groups run across row ends when cols is not a multiple)."""
    shape = weight.shape
    w = weight.abs().reshape(-1, group_size) if group_size > 0 else weight.abs()
    return (w / w.amax(dim=1, keepdim=True)).reshape(shape).mean(dim=0)


def output_error(W, Wq, G) -> float:
    """Σ over calibration tokens of ‖(Wq - W) x‖², from G = Σ xᵀx."""
    D = Wq - W
    return float(((D @ G) * D).sum())


def search_scales(weights: list, G, x_mean, fake_quantize: Callable, group_size: int, grid: int = SCALE_GRID):
    """The AWQ scale vector for linears sharing one input (each weight [rows, cols]); returns (scales, alpha)."""
    import torch

    W = torch.cat(weights)
    w_mean = weight_mean(W, group_size)
    best, best_err, best_alpha = None, float("inf"), None
    for step in range(grid):
        alpha = step / grid
        s = (x_mean.pow(alpha) / w_mean.pow(1 - alpha)).clamp(min=1e-4).view(-1)
        s = s / (s.max() * s.min()).sqrt()
        err = output_error(W, fake_quantize(W * s) / s, G)
        if err < best_err:
            best, best_err, best_alpha = s, err, alpha
    if best is None:
        raise LlmctlError(
            "AWQ found no finite scale (the calibration activations overflow)",
            hint="check the model's outputs on the calibration data",
        )
    return best, best_alpha


def awq_pairs(block, config) -> dict[str, tuple[str, ...]]:
    """Previous op → linears it feeds, relative to a LLaMA-style block (AutoAWQ's pairs; v → o only without GQA)."""
    if not all(
        hasattr(block, a) for a in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    ) or not hasattr(block.mlp, "up_proj"):
        raise LlmctlError(
            f"AWQ here supports LLaMA-style models (got {config.model_type})",
            hint="use GPTQ or RTN for this architecture",
        )
    pairs = {
        "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.up_proj": ("mlp.down_proj",),
    }
    if getattr(config, "num_key_value_heads", config.num_attention_heads) == config.num_attention_heads:
        pairs["self_attn.v_proj"] = ("self_attn.o_proj",)
    return pairs


def _apply_scales(block, prev: str, names: tuple, s) -> None:
    """Fold 1/s into the previous op's outputs and s into the linears' inputs (the block computes the same)."""
    mods = dict(block.named_modules())
    p = mods[prev]
    if p.weight.dim() == 1:  # a norm
        p.weight.data.div_(s.to(p.weight.dtype))
    else:  # a linear: its output rows
        p.weight.data.div_(s.view(-1, 1).to(p.weight.dtype))
    if getattr(p, "bias", None) is not None:
        p.bias.data.div_(s.to(p.bias.dtype))
    for n in names:
        mods[n].weight.data.mul_(s.view(1, -1).to(mods[n].weight.dtype))


def awq_block(
    block,
    config,
    classes: list,
    stats: list,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    grid: int = SCALE_GRID,
    clip: bool = True,
) -> dict:
    """Scale search, clip search and RTN of one block whose per-class (G, x_mean) are given; returns codes."""
    from llmctl.compress.blocks import block_linears, set_weight, weight_rows_cols
    from llmctl.compress.grid import fake_quantize, quantize_rtn
    from llmctl.quantize.inc_patches import awq_clip_maxima, clamp_groups, quant_groups

    def fake(t):
        return fake_quantize(t, bits, group_size, sym, "rtn")

    mods = block_linears(block)
    by_member = {n: k for k, members in enumerate(classes) for n in members}
    gram = {}
    for prev, names in awq_pairs(block, config).items():
        G, x_mean = stats[by_member[names[0]]]
        weights = [weight_rows_cols(mods[n]).float() for n in names]
        s, _alpha = search_scales(weights, G, x_mean, fake, group_size, grid)
        _apply_scales(block, prev, names, s)
        for n in names:  # their inputs are now x / s
            gram[n] = G / s.view(-1, 1) / s.view(1, -1)
    out = {}
    for name, mod in mods.items():
        W = weight_rows_cols(mod).float()
        if clip:
            G = gram.get(name, stats[by_member[name]][0])
            maxima = awq_clip_maxima(W, G, fake, group_size)
            W = clamp_groups(W, maxima, quant_groups(W.shape[1], group_size))
        q = quantize_rtn(W, bits, group_size, sym, "rtn")
        set_weight(mod, q.dequantize())
        out[name] = q
    return out


def awq_model(
    model,
    windows: list,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = True,
    grid: int = SCALE_GRID,
    clip: bool = True,
    progress: Progress | None = None,
) -> dict:
    """AWQ of every decoder-block linear, weights replaced in place by their dequantized values.

    Returns full module name → QuantizedWeight (RTN codes of the scaled, clipped weights; the scales are
    folded into the norms and up_proj, so the codes load as plain W4A16).

    Examples:
        layers = awq_model(model, windows, bits=4, group_size=128, progress=print)
    """
    from llmctl.compress.blocks import capture_block_inputs, decoder_layers, gather_dense, run_block
    from llmctl.compress.obs import single_thread
    from llmctl.compress.progress import BlockETA
    from llmctl.compress.sequential import plan_block

    layers = decoder_layers(model)
    awq_pairs(layers[0], model.config)
    captured = capture_block_inputs(model, windows)
    eta = BlockETA(progress, "awq", len(layers))
    result: dict = {}
    prefix = {id(m): n + "." for n, m in model.named_modules()}
    plan = None
    for i, block in enumerate(layers):
        eta.start(i)
        if plan is None or plan.names != [n for n, _ in block.named_modules()]:
            plan = plan_block(block, *captured[0])
        stats = gather_dense(block, captured, plan, "gram+absmean")
        captured = run_block(block, captured)  # the next block sees this block unquantized
        with single_thread():
            for name, q in awq_block(
                block,
                model.config,
                plan.classes,
                stats,
                bits=bits,
                group_size=group_size,
                sym=sym,
                grid=grid,
                clip=clip,
            ).items():
                result[prefix[id(block)] + name] = q
    eta.done()
    return result
