"""llmctl.compress: grids against neural-compressor's numbers, the batched GPTQ/SparseGPT sweeps against plain
per-column versions, and the block walker's true-sequential inputs on tiny models."""

from __future__ import annotations

import pytest

# ---- plain per-column references (no lazy batching, no transposes, float64) -----------------------


def _factor(H, percdamp):
    import torch

    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True), dead


TIE = 1e-9  # |x - (k + ½)| below this (float64 codes of O(10)) is a rounding tie: see plain_gptq


def plain_gptq(W, H, bits, group_size, sym, act_order, percdamp=0.01, follow=None):
    """GPTQ column by column: quantize column j, then update every later column at once.

    follow: the QuantizedWeight under test. Where w / scale sits on a rounding tie (within TIE of k + ½), the
    two orders of float summation may round it either way: the symmetric "gptq" grid puts a group's -max|w| on
    -7.5 exactly when that weight is in the group's first column (scale = 2·max|w| / 15), so this happens on
    every machine, on which side depending on the CPU's vector width (issue 23). There the reference takes
    the code `follow` chose, if it is one of the two neighbours, and carries on from it; everywhere else the
    codes must agree exactly. Returns (dequantized weight, number of ties followed).
    """
    import torch

    from llmctl.compress.grid import grid_params

    W = W.clone()
    cols = W.shape[1]
    g = group_size if group_size > 0 else cols
    half = 2 ** (bits - 1)
    row_grid = grid_params(W, bits, sym, "gptq")
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    U, _ = _factor(H[perm][:, perm], percdamp)
    W = W[:, perm]
    hint = None if follow is None else follow.codes.to(W.dtype)[:, perm]
    Q = torch.zeros_like(W)
    ties = 0
    for j in range(cols):
        if group_size <= 0:
            scale, zero = row_grid
        elif j % g == 0:
            scale, zero = grid_params(W[:, j : j + g], bits, sym, "gptq")
        x = W[:, j] / scale
        code = torch.clamp(torch.round(x) + zero, -half, half - 1)
        if hint is not None:
            tie = ((x - torch.floor(x)) - 0.5).abs() < TIE
            lower = torch.clamp(torch.floor(x) + zero, -half, half - 1)
            upper = torch.clamp(torch.floor(x) + 1 + zero, -half, half - 1)
            take = tie & ((hint[:, j] == lower) | (hint[:, j] == upper)) & (hint[:, j] != code)
            ties += int(take.sum())
            code = torch.where(take, hint[:, j], code)
        Q[:, j] = (code - zero) * scale
        err = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j + 1 :] -= torch.outer(err, U[j, j + 1 :])
    return Q[:, torch.argsort(perm)], ties


def plain_sparsegpt(W, H, sparsity, nm, blocksize, percdamp=0.01):
    """SparseGPT column by column (masks chosen per block of columns / per N:M group, as the reference)."""
    import torch

    W = W.clone()
    cols = W.shape[1]
    U, dead = _factor(H, percdamp)
    W[:, dead] = 0
    mask = torch.zeros_like(W, dtype=torch.bool)
    for j in range(cols):
        if nm is None and j % blocksize == 0:
            j2 = min(j + blocksize, cols)
            scores = (W[:, j:j2] ** 2 / torch.diag(U)[j:j2] ** 2).t()  # the batched code's layout
            k = int(scores.numel() * sparsity)
            block = torch.zeros(scores.numel(), dtype=torch.bool)
            block[torch.topk(scores.flatten(), k, largest=False).indices] = True
            mask[:, j:j2] = block.view_as(scores).t()
        elif nm is not None and j % nm[1] == 0:
            scores = W[:, j : j + nm[1]] ** 2 / torch.diag(U)[j : j + nm[1]] ** 2
            mask[:, j : j + nm[1]].scatter_(1, torch.topk(scores, nm[1] - nm[0], dim=1, largest=False).indices, True)
        err = W[:, j] * mask[:, j] / U[j, j]
        W[:, j + 1 :] -= torch.outer(err, U[j, j + 1 :])
    return W.masked_fill(mask, 0)


def _problem(rows=24, cols=80, seed=0):
    import torch

    torch.manual_seed(seed)
    X = torch.randn(400, cols, dtype=torch.float64) @ (
        torch.eye(cols, dtype=torch.float64) + 0.3 * torch.randn(cols, cols, dtype=torch.float64)
    )
    X[:, 5] = 0  # a dead input
    return torch.randn(rows, cols, dtype=torch.float64), X.t() @ X


# ---- sweeps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, -1])  # 80 columns in groups of 32: the 16-column tail is its own group
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_sweep_equals_plain_per_column_gptq(sym, group_size, act_order):
    from llmctl.compress.gptq import gptq_quantize

    W, H = _problem()
    q, _loss = gptq_quantize(W, H, bits=4, group_size=group_size, sym=sym, act_order=act_order, blocksize=16)
    ref, ties = plain_gptq(W, H, 4, group_size, sym, act_order, follow=q)
    # Codes equal everywhere but on exact rounding ties (see plain_gptq); then the weights agree to float64
    # round-off (1e-5 is far below one grid step, ~0.1 here: a single differing code fails it).
    assert (q.dequantize(dtype=ref.dtype) - ref).abs().max() < 1e-5
    assert ties <= 2  # ties are rare (a group's -max|w| in its first column): more would hide a real difference
    assert q.codes.min() >= -8 and q.codes.max() <= 7
    assert (q.g_idx is not None) == (act_order and group_size > 0)
    if group_size > 0:
        assert q.scales.shape == (24, 3)  # 32 + 32 + 16 columns


def test_gptq_of_stacked_layers_equals_each_layer_alone():
    """Rows are independent given H: q/k/v quantized as one stacked matrix give each layer's own GPTQ."""
    import torch

    from llmctl.compress.gptq import gptq_quantize, split_rows

    W, H = _problem(rows=30)
    stacked, _ = gptq_quantize(W, H, group_size=32)
    parts = split_rows(stacked, [10, 20])
    for part, rows in zip(parts, (slice(0, 10), slice(10, 30))):
        alone, _ = gptq_quantize(W[rows], H, group_size=32)
        assert torch.equal(part.codes, alone.codes) and torch.equal(part.g_idx, alone.g_idx)
        assert torch.allclose(part.scales, alone.scales)


def test_gptq_static_groups_keep_column_order_groups():
    import torch

    from llmctl.compress.gptq import gptq_quantize

    W, H = _problem()
    q, _ = gptq_quantize(W.float(), H.float(), group_size=32, act_order=True, static_groups=True)
    assert q.g_idx is None
    assert torch.equal(q.group_index(), torch.arange(80) // 32)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_sweep_equals_plain_per_column_sparsegpt(nm):
    from llmctl.prune.service import sparsegpt_prune

    W, H = _problem()
    out = sparsegpt_prune(W, H, None if nm else 0.5, nm, blocksize=32)
    ref = plain_sparsegpt(W, H, 0.5, nm, 32)
    assert (out - ref).abs().max() < 1e-5
    assert (out == 0).float().mean() >= 0.5


# ---- grids -------------------------------------------------------------------------------------------


def test_grids_by_hand():
    import torch

    from llmctl.compress.grid import grid_params, quantize_codes

    x = torch.tensor([[1.0, -0.4]])
    scale, zero = grid_params(x, 4, True, "gptq")  # 2·max/15: +max sits at 7.5 steps, clipped to 7
    assert scale.item() == pytest.approx(2 / 15) and zero.item() == 0
    assert quantize_codes(x, scale, zero, 4).tolist() == [[7.0, -3.0]]
    scale, zero = grid_params(x, 4, True, "rtn")  # max/7: +max is exactly 7 steps
    assert scale.item() == pytest.approx(1 / 7) and quantize_codes(x, scale, zero, 4).tolist() == [[7.0, -3.0]]
    scale, zero = grid_params(x, 4, False, "gptq")  # (max - min)/15, zero round(0.4/scale) - 8 = -4
    assert scale.item() == pytest.approx(1.4 / 15) and zero.item() == -4
    assert quantize_codes(x, scale, zero, 4).tolist() == [[7.0, -8.0]]


@pytest.mark.parametrize("sym", [True, False])
def test_rtn_matches_neural_compressor(sym):
    """Same numbers as INC's RTN (quant_tensor), tail group included."""
    import torch
    from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor

    from llmctl.compress.grid import quantize_rtn

    torch.manual_seed(1)
    W = torch.randn(16, 200)
    ours = quantize_rtn(W, bits=4, group_size=64, sym=sym, grid="rtn")
    theirs = quant_tensor(W.clone(), bits=4, group_size=64, scheme="sym" if sym else "asym")
    assert torch.allclose(ours.dequantize(), theirs, atol=1e-6)
    assert ours.scales.shape == (16, 4)


# ---- walking blocks ----------------------------------------------------------------------------------


def _tiny(builder, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(builder(tmp_path)).eval()
    torch.manual_seed(0)
    return model, [torch.randint(0, 300, (1, 24)) for _ in range(3)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_walker_passes_reproduce_the_plain_forward(arch, tmp_path):
    """With no weight changed, every true-sequential pass sees the dense inputs and the outputs are the block's."""
    import torch

    from conftest import build_tiny_gpt2, build_tiny_llama
    from llmctl.compress.blocks import capture_block_inputs, decoder_layers, gather_dense, run_block
    from llmctl.compress.sequential import SequentialBlock, plan_block

    model, windows = _tiny(build_tiny_llama if arch == "llama" else build_tiny_gpt2, tmp_path)
    captured = capture_block_inputs(model, windows)
    block = decoder_layers(model)[1]
    plan = plan_block(block, *captured[0])
    expected = {
        "llama": [
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ["self_attn.o_proj"],
            ["mlp.gate_proj", "mlp.up_proj"],
            ["mlp.down_proj"],
        ],
        "gpt2": [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]],
    }[arch]
    assert plan.classes == expected
    seq = SequentialBlock(block, plan, captured, 1 << 30)
    hessians = [seq.gather(k, "hessian") for k in range(len(plan.classes))]
    for h, dense in zip(hessians, gather_dense(block, captured, plan, "hessian")):
        assert torch.allclose(h, dense, atol=1e-5)
    for (a, _), (b, _) in zip(seq.outputs(), run_block(block, captured)):
        assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("cache_mb", [1024, 0])
def test_true_sequential_hessians_come_from_the_quantized_model(arch, cache_mb, tmp_path):
    """Each class's Hessian is what the model, quantized so far (earlier blocks, earlier classes of this block),
    feeds that class from the real inputs: neural-compressor 3.10 fed later classes block(block(x)) instead."""
    import torch

    from conftest import build_tiny_gpt2, build_tiny_llama
    from llmctl.compress.blocks import block_linears, decoder_layers, set_weight, weight_rows_cols
    from llmctl.compress.grid import quantize_rtn
    from llmctl.compress.sequential import walk_blocks

    model, windows = _tiny(build_tiny_llama if arch == "llama" else build_tiny_gpt2, tmp_path)
    seen = []

    def on_class(i, block, names, H):
        mods = block_linears(block)
        ref = torch.zeros_like(H)

        def hook(_m, inp):
            x = inp[0].reshape(-1, inp[0].shape[-1]).float()
            ref.add_(x.t() @ x)

        handle = mods[names[0]].register_forward_pre_hook(hook)
        with torch.no_grad():
            for w in windows:
                model(input_ids=w, use_cache=False)
        handle.remove()
        assert torch.allclose(H, ref, rtol=1e-4, atol=1e-3), (i, names)
        seen.append((i, tuple(names)))
        for name in names:  # a coarse 2-bit grid, so that a wrong input order would show
            set_weight(mods[name], quantize_rtn(weight_rows_cols(mods[name]), bits=2, group_size=-1).dequantize())

    walk_blocks(model, windows, on_class, sequential=True, stat="hessian", cache_mb=cache_mb)
    assert len(seen) == 2 * 4 and [i for i, _ in seen] == [0] * 4 + [1] * 4
    assert len(decoder_layers(model)) == 2


def test_quantize_model_returns_codes_that_are_the_model_weights(tmp_path):
    import torch

    from conftest import build_tiny_llama
    from llmctl.compress.gptq import quantize_model

    model, windows = _tiny(build_tiny_llama, tmp_path)
    lines = []
    layers = quantize_model(model, windows, bits=4, group_size=32, progress=lines.append)
    assert len(layers) == 2 * 7
    q = layers["model.layers.1.mlp.down_proj"]
    assert q.g_idx is not None and q.scales.shape == (64, 4)  # 128 inputs in groups of 32
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight.data, q.dequantize())
    assert lines[0].startswith("gptq: block 1/2") and "ETA" in lines[1] and lines[-1].startswith("gptq: 2 blocks")


def test_gptq_beats_rtn_on_the_calibration_outputs(tmp_path):
    """GPTQ minimizes each layer's output error on the calibration inputs: the whole model ends up closer too."""
    import copy

    import torch

    from conftest import build_tiny_llama
    from llmctl.compress.gptq import quantize_model

    model, windows = _tiny(build_tiny_llama, tmp_path)
    with torch.no_grad():
        ref = torch.cat([model(w).logits for w in windows])
    errors = {}
    for name, calib in (("rtn", None), ("gptq", windows)):
        m = copy.deepcopy(model)
        quantize_model(m, calib, bits=3, group_size=32, grid="rtn")
        with torch.no_grad():
            errors[name] = (torch.cat([m(w).logits for w in windows]) - ref).pow(2).mean().item()
    assert errors["gptq"] < 0.7 * errors["rtn"]


# ---- AWQ ---------------------------------------------------------------------------------------------


def test_awq_weight_mean_is_neural_compressors():
    import torch
    from neural_compressor.torch.algorithms.weight_only.awq import _get_weight_scale

    from llmctl.compress.awq import weight_mean

    torch.manual_seed(0)
    W = torch.randn(6, 96)  # 96 columns in groups of 64: groups run across row ends
    assert torch.allclose(weight_mean(W, 64), _get_weight_scale(W.clone(), q_group_size=64))


def test_awq_scales_keep_the_block_function_and_beat_rtn(tmp_path):
    import copy

    import torch

    from conftest import build_tiny_llama
    from llmctl.compress.awq import awq_model
    from llmctl.compress.gptq import quantize_model

    model, windows = _tiny(build_tiny_llama, tmp_path)
    with torch.no_grad():
        ref = torch.cat([model(w).logits for w in windows])
    unquantized = copy.deepcopy(model)
    awq_model(unquantized, windows, bits=8, group_size=32, clip=False)  # 8 bits: nearly only the scales act
    with torch.no_grad():
        assert (torch.cat([unquantized(w).logits for w in windows]) - ref).abs().max() < 0.05
    errors = {}
    for name in ("rtn", "awq"):
        m = copy.deepcopy(model)
        lines = []
        if name == "rtn":
            quantize_model(m, None, bits=3, group_size=32, grid="rtn")
        else:
            layers = awq_model(m, windows, bits=3, group_size=32, progress=lines.append)
            assert len(layers) == 14 and lines[-1].startswith("awq: 2 blocks")
        with torch.no_grad():
            errors[name] = (torch.cat([m(w).logits for w in windows]) - ref).pow(2).mean().item()
    assert errors["awq"] < errors["rtn"]


# ---- prune's block loop --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_walk_equals_hooking_every_linear_of_each_dense_block(method, tmp_path):
    """The walker (one statistic per input, forward stopped at the last input) prunes exactly like hooking every
    linear on the block's full dense forward, then feeding the pruned block's outputs to the next block."""
    import copy

    import torch

    from conftest import build_tiny_llama
    from llmctl.compress.blocks import block_linears, capture_block_inputs, decoder_layers, run_block
    from llmctl.prune.service import prune_unstructured, sparsegpt_prune, wanda_prune

    model, windows = _tiny(build_tiny_llama, tmp_path)
    ref = copy.deepcopy(model)
    captured = capture_block_inputs(ref, windows)
    for block in decoder_layers(ref):
        stats, hooks = {}, []
        for name, mod in block_linears(block).items():

            def hook(_m, inp, _o, name=name, stats=stats):
                x = inp[0].reshape(-1, inp[0].shape[-1])
                s = (x * x).sum(0) if method == "wanda" else x.t() @ x
                stats[name] = stats[name] + s if name in stats else s

            hooks.append(mod.register_forward_hook(hook))
        run_block(block, captured)
        for h in hooks:
            h.remove()
        for name, mod in block_linears(block).items():
            W = mod.weight.data
            new = (
                wanda_prune(W, stats[name], 0.5, None)
                if method == "wanda"
                else sparsegpt_prune(W, stats[name], 0.5, None)
            )
            mod.weight.data.copy_(new)
        captured = run_block(block, captured)
    lines = []
    prune_unstructured(model, method, 0.5, None, windows, progress=lines.append)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert lines[0].startswith(f"{method}: block 1/2 · ") and "ETA" in lines[1]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_true_sequential_prune_scores_each_input_from_the_model_pruned_so_far(method, tmp_path):
    """true_sequential=True prunes like: for each block, for each input class in call order, run the whole model
    (earlier blocks and this block's earlier classes already pruned), take that input's statistic, prune."""
    import copy

    import torch

    from conftest import build_tiny_llama
    from llmctl.compress.blocks import block_linears, capture_block_inputs, decoder_layers
    from llmctl.compress.sequential import plan_block
    from llmctl.prune.service import prune_unstructured, sparsegpt_prune, wanda_prune

    model, windows = _tiny(build_tiny_llama, tmp_path)
    ref = copy.deepcopy(model)
    plan = plan_block(decoder_layers(ref)[0], *capture_block_inputs(ref, windows)[0])
    for block in decoder_layers(ref):
        mods = block_linears(block)
        for names in plan.classes:
            stat = []

            def hook(_m, inp, stat=stat):
                x = inp[0].reshape(-1, inp[0].shape[-1])
                stat.append((x * x).sum(0) if method == "wanda" else x.t() @ x)

            handle = mods[names[0]].register_forward_pre_hook(hook)
            with torch.no_grad():
                for w in windows:
                    ref(input_ids=w, use_cache=False)
            handle.remove()
            for name in names:
                W, s = mods[name].weight.data, sum(stat)
                mods[name].weight.data.copy_(
                    wanda_prune(W, s, 0.5, (2, 4)) if method == "wanda" else sparsegpt_prune(W, s, 0.5, (2, 4))
                )
    dense = copy.deepcopy(model)
    prune_unstructured(model, method, None, (2, 4), windows, true_sequential=True)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    prune_unstructured(dense, method, None, (2, 4), windows)  # the reference walk: the same, except where it differs
    last = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(dict(dense.named_parameters())[last], dict(model.named_parameters())[last])


def test_fake_quantize_is_dequantized_rtn():
    import torch

    from llmctl.compress.grid import fake_quantize, quantize_rtn

    torch.manual_seed(2)
    W = torch.randn(8, 100)
    for sym in (True, False):
        assert torch.equal(fake_quantize(W, 4, 32, sym), quantize_rtn(W, 4, 32, sym).dequantize())


def test_lowest_k_picks_what_topk_picks_and_exactly_k_with_ties():
    import torch

    from llmctl.prune.service import lowest_k

    torch.manual_seed(3)
    s = torch.rand(50, 40)
    ref = torch.zeros_like(s, dtype=torch.bool).scatter_(1, torch.topk(s, 13, dim=1, largest=False).indices, True)
    assert torch.equal(lowest_k(s, 13), ref)
    s[:, :20] = 0  # 20 tied zeros, 13 to take
    mask = lowest_k(s, 13)
    assert mask.sum(dim=1).eq(13).all() and not mask[:, 20:].any()
