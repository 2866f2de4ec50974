"""GPTQ (Frantar et al. 2022) on one weight matrix and on a whole model, returning integer codes.

The sweep is the reference code's `fasterquant`: dead inputs zeroed, H damped by percdamp·mean(diag H), the
upper Cholesky factor U of H⁻¹ drives the updates, columns are quantized one at a time and each column's
error (w - q) / U_jj is spread over the block's later columns, the rest of the matrix updated once per block
(lazy batch updates). Blocks never straddle a group: a group's grid is taken from its fully updated columns
when the group starts (neural-compressor's default block of 2048 with groups of 128 took most groups' grids
from stale weights). act_order sorts columns by decreasing diag(H); groups are then formed in that order and
g_idx maps each column to its group (static_groups: grids of the original column groups, fixed up front).

Rows are independent given H, so linears that read the same input (q/k/v, gate/up) are quantized as one
stacked matrix: one Cholesky and one sweep per input. The model walk is true-sequential (llmctl.compress.
blocks): each class of linears gets its Hessian from the block's real inputs run through the classes already
quantized in that block, and the next block's inputs are this block's outputs with every class quantized.

Examples:
    q, loss = gptq_quantize(W, H, bits=4, group_size=128, act_order=True)
    layers = quantize_model(model, windows, bits=4, group_size=128, progress=print)
    layers["model.layers.0.self_attn.q_proj"]   # QuantizedWeight
"""

from __future__ import annotations

from llmctl.compress.grid import QuantizedWeight, check_grid, grid_params, quantize_rtn
from llmctl.compress.obs import hessian_inverse_factor, mark_dead, sweep
from llmctl.errors import LlmctlError
from llmctl.runtime.progress import Progress


def sweep_block(size: int, group_size: int) -> int:
    """The lazy-update block: at most `size` columns and never straddling a group (a divisor of group_size)."""
    if group_size <= 0 or size >= group_size:
        return group_size if group_size > 0 else size
    return max(d for d in range(1, size + 1) if group_size % d == 0)


def gptq_quantize(
    W,
    H,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = True,
    grid: str = "gptq",
    act_order: bool = True,
    static_groups: bool = False,
    percdamp: float = 0.01,
    blocksize: int = 128,
) -> tuple[QuantizedWeight, float]:
    """GPTQ of one [rows, cols] weight W with H = Σ xᵀx [cols, cols]; returns the codes and GPTQ's error estimate.

    The error estimate is ½ Σ ((w - q) / U_jj)², the reference code's `Losses` summed. Float64 inputs are
    computed in float64 (an H in float64 sets it; tests), everything else in float32 like the reference.

    Examples:
        q, loss = gptq_quantize(layer.weight.data, X.T @ X, bits=4, group_size=128)
        layer.weight.data = q.dequantize()
    """
    import torch

    check_grid(bits, grid)
    cols = W.shape[1]
    g = group_size if 0 < group_size < cols else cols
    per_row = group_size <= 0
    H, dead = mark_dead(H)
    W = W.detach().to(H.dtype).clone()
    if per_row:  # one grid per row, from the weights before dead inputs are zeroed (as neural-compressor does)
        row_grid = grid_params(W, bits, sym, grid)
    W[:, dead] = 0
    fixed = (
        [grid_params(W[:, a : a + g], bits, sym, grid) for a in range(0, cols, g)]
        if static_groups and not per_row
        else None
    )
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    U = hessian_inverse_factor(H, percdamp)
    del H
    WT = W.t().contiguous()  # column j of W is row j here: contiguous per column
    codes = torch.empty_like(WT)  # code - zero, per column (the zero is added back at the end)
    inv_d = (1 / torch.diag(U)).tolist()
    half = 2 ** (bits - 1)

    def bounds(scale, zero):  # (scale, lowest, highest) of code - zero
        if sym:
            return scale, -half, half - 1
        return scale, -half - zero, half - 1 - zero

    grids: list = []  # (scale, zero) per group in sweep order (dynamic groups)
    fixed_bounds = [bounds(*f) for f in fixed] if fixed is not None else None
    order = perm.tolist() if perm is not None else None
    cur = {"b": bounds(*row_grid) if per_row else None}

    def step(j, e):
        if fixed_bounds is not None:
            if order is not None or j % g == 0:
                cur["b"] = fixed_bounds[(order[j] if order is not None else j) // g]
        elif not per_row and j % g == 0:
            grids.append(grid_params(WT[j : j + g].t(), bits, sym, grid))
            cur["b"] = bounds(*grids[-1])
        s, lo, hi = cur["b"]
        c = codes[j]
        torch.div(WT[j], s, out=c)
        c.round_().clamp_(lo, hi)
        torch.addcmul(WT[j], c, s, value=-1, out=e)
        e.mul_(inv_d[j])

    loss = sweep(WT, U, sweep_block(blocksize, g), step)
    chosen = [row_grid] if per_row else (fixed if fixed is not None else grids)
    return _result(codes, perm, chosen, per_row or fixed is not None, bits, group_size, g, sym), loss


def _result(codes_t, perm, grids, original_groups: bool, bits, group_size, g, sym):
    """Codes (given as [cols, rows], sweep order) back in the original column order, with scales/zeros/g_idx.

    original_groups: group k holds original columns k·g … (per-row or static groups); else groups were formed
    in sweep order and, with act-order, g_idx tells each column's group.
    """
    import torch

    cols = codes_t.shape[0]
    scales = torch.stack([s for s, _ in grids], dim=1)
    zeros = torch.stack([z for _, z in grids], dim=1)
    group, g_idx = torch.arange(cols) // g, None
    if perm is not None:
        inv = torch.argsort(perm)
        codes_t = codes_t[inv]  # whole rows: a cheap gather in this layout
        if not original_groups:
            group = group[inv]
            g_idx = group.to(torch.int32)
    if not sym:
        codes_t = codes_t + zeros.t()[group]
    return QuantizedWeight(
        codes=codes_t.t().to(torch.int8).contiguous(),
        scales=scales.float().contiguous(),
        zeros=None if sym else zeros.to(torch.int8).contiguous(),
        g_idx=g_idx,
        bits=bits,
        group_size=group_size,
    )


def split_rows(q: QuantizedWeight, sizes: list[int]) -> list[QuantizedWeight]:
    """The per-layer parts of a QuantizedWeight of stacked layers (rows in the order of sizes)."""
    out, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        out.append(
            QuantizedWeight(
                codes=q.codes[rows].clone(),
                scales=q.scales[rows].clone(),
                zeros=None if q.zeros is None else q.zeros[rows].clone(),
                g_idx=q.g_idx,
                bits=q.bits,
                group_size=q.group_size,
            )
        )
        start += n
    return out


def quantize_model(
    model,
    windows: list | None,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = True,
    grid: str = "gptq",
    act_order: bool = True,
    static_groups: bool = False,
    true_sequential: bool = True,
    percdamp: float = 0.01,
    blocksize: int = 128,
    progress: Progress | None = None,
    cache_mb: int = 1024,
) -> dict:
    """GPTQ (windows given) or RTN (windows None) of every decoder-block linear, weights replaced in place.

    Each linear's weight becomes its dequantized value (so the model runs as it will after loading the
    codes); the return maps full module names to QuantizedWeight for a compressed-tensors writer. RTN uses
    `grid` as given ("rtn" is neural-compressor RTN's grid).

    Examples:
        layers = quantize_model(model, windows, bits=4, group_size=128, progress=say)
        layers = quantize_model(model, None, bits=4, group_size=128, grid="rtn")     # round-to-nearest
    """
    import torch

    from llmctl.compress.blocks import block_linears, decoder_layers, set_weight, weight_rows_cols
    from llmctl.compress.sequential import walk_blocks

    check_grid(bits, grid)
    layers = decoder_layers(model)
    prefix = {id(block): _block_prefix(model, block) for block in layers}
    result: dict[str, QuantizedWeight] = {}
    if windows is None:
        with torch.no_grad():
            for block in layers:
                for name, mod in block_linears(block).items():
                    q = quantize_rtn(weight_rows_cols(mod), bits, group_size, sym, grid)
                    set_weight(mod, q.dequantize())
                    result[prefix[id(block)] + name] = q
        return result

    def on_class(_i, block, names, H):
        mods = block_linears(block)
        weights = [weight_rows_cols(mods[n]).float() for n in names]
        q, _loss = gptq_quantize(
            torch.cat(weights),
            H,
            bits=bits,
            group_size=group_size,
            sym=sym,
            grid=grid,
            act_order=act_order,
            static_groups=static_groups,
            percdamp=percdamp,
            blocksize=blocksize,
        )
        for name, part in zip(names, split_rows(q, [w.shape[0] for w in weights])):
            set_weight(mods[name], part.dequantize())
            result[prefix[id(block)] + name] = part

    walk_blocks(
        model,
        windows,
        on_class,
        sequential=true_sequential,
        stat="hessian",
        progress=progress,
        label="gptq",
        cache_mb=cache_mb,
    )
    return result


def _block_prefix(model, block) -> str:
    for name, mod in model.named_modules():
        if mod is block:
            return name + "."
    raise LlmctlError("decoder block not found in the model")
