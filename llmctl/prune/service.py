"""`llmctl prune`: sparse or structurally smaller models, layer by layer with calibration data.

Unstructured (`sparsity`) and N:M (`pattern`, N non-zeros in every M consecutive input weights) for
- magnitude: |W|, one threshold per weight matrix (the papers' baseline);
- Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖₂, compared within each output row (groups of M for N:M);
- SparseGPT (Frantar & Alistarh 2023): OBS-style sequential column update with H = XᵀX + λI, mask
  chosen per block of columns by w²/[H⁻¹]_jj² (per group of M for N:M), errors spread to later columns.
Decoder blocks are processed one at a time (llmctl.compress.blocks): the first block's inputs are
captured once, each block's statistics (Σ x² or H, one per distinct linear input, one matmul per
window) come from its dense forward, the block is pruned, and its outputs (from the pruned block)
become the next block's inputs, so memory stays near one block. The SparseGPT sweep is the OBS sweep
GPTQ uses too (llmctl.compress.obs): same arithmetic as the per-column reference, batched for CPUs.

Structured pruning removes whole attention heads (keeping GQA groups consistent) or MLP channels,
ranked by calibration importance ‖X‖₂·‖W_out column‖₂, and saves a genuinely smaller HF model.

Examples:
    prune("smollm2-135m-instruct", "smol-wanda50", resolve_config("prune", sets=["method=wanda", ...]))
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from llmctl.compress.blocks import block_linears, decoder_layers, set_weight, weight_rows_cols
from llmctl.compress.sequential import walk_blocks
from llmctl.errors import LlmctlError
from llmctl.prune.structured import _llama_parts, plan_heads, prune_channels, prune_heads, structured_importance
from llmctl.runtime.progress import Progress, quiet

prunable_linears = block_linears  # the name structured/unstructured code here used before the move


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' → (2, 4): N non-zeros kept in every M consecutive weights (the schema checked 0 < N < M)."""
    if pattern in (None, ""):
        return None
    n, m = str(pattern).split(":")
    return int(n), int(m)


# ---- masks and updates on one weight matrix (rows = outputs, columns = inputs) -------------------


def lowest_k(scores, k: int):
    """Boolean mask of the k lowest entries in each row of a 2-D tensor (the rows topk would pick).

    torch.kthvalue finds each row's threshold 2–4× faster than topk(k ≈ cols/2) on these sizes; rows with
    ties at the threshold (more than k entries ≤ it) fall back to topk, whose tie order is arbitrary anyway.
    """
    import torch

    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    mask = scores <= threshold
    tied = (mask.sum(dim=1) != k).nonzero().flatten()
    if tied.numel():
        rows = torch.zeros_like(mask[tied])
        rows.scatter_(1, torch.topk(scores[tied], k, dim=1, largest=False).indices, True)
        mask[tied] = rows
    return mask


def mask_lowest(scores, fraction: float, per_row: bool):
    """Boolean mask (True = prune) of the lowest `fraction` of scores, per row or over the whole matrix."""
    if per_row:
        return lowest_k(scores, int(scores.shape[1] * fraction))
    return lowest_k(scores.reshape(1, -1), int(scores.numel() * fraction)).view_as(scores)


def mask_nm(scores, n: int, m: int):
    """Prune the M−N lowest scores in every group of M consecutive columns of each row."""
    import torch

    rows, cols = scores.shape
    if cols % m:
        raise LlmctlError(
            f"a layer with {cols} inputs cannot take an N:M pattern with M={m}",
            hint="pick M that divides every layer's input size (e.g. 4 or 8)",
        )
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, m - n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def magnitude_prune(W, sparsity: float | None, nm: tuple[int, int] | None):
    scores = W.abs().float()
    mask = mask_nm(scores, *nm) if nm else mask_lowest(scores, sparsity, per_row=False)
    out = W.clone()
    out[mask] = 0
    return out


def wanda_prune(W, x_sq_sum, sparsity: float | None, nm: tuple[int, int] | None):
    """Wanda: S_ij = |W_ij|·‖X_j‖₂ (x_sq_sum[j] = Σ_tokens x_j²), lowest pruned per output row."""
    scores = W.abs().float() * x_sq_sum.float().sqrt().reshape(1, -1)
    mask = mask_nm(scores, *nm) if nm else mask_lowest(scores, sparsity, per_row=True)
    out = W.clone()
    out[mask] = 0
    return out


def sparsegpt_prune(
    W, H, sparsity: float | None, nm: tuple[int, int] | None, blocksize: int = 128, percdamp: float = 0.01
):
    """SparseGPT on one matrix W (rows × cols) with Hessian H = XᵀX (cols × cols); returns the pruned W.

    Follows the reference algorithm: dead inputs zeroed, H damped by percdamp·mean(diag H), the
    upper Cholesky factor of H⁻¹ drives the per-column OBS update; unstructured masks are chosen per
    block of `blocksize` columns from w²/[H⁻¹]_jj², N:M masks per group of M columns.
    """
    from llmctl.compress.obs import hessian_inverse_factor, mark_dead

    H, dead = mark_dead(H)
    return sparsegpt_sweep(W, hessian_inverse_factor(H, percdamp), dead, sparsity, nm, blocksize)


def sparsegpt_sweep(W, U, dead, sparsity: float | None, nm: tuple[int, int] | None, blocksize: int = 128):
    """SparseGPT's column sweep of W given U, the upper Cholesky factor of the damped H⁻¹ (shared by every
    linear that reads the same input); returns the pruned W in H's float dtype.

    Column j's error is w_j·mask_j / U_jj: one multiply per column, the OBS updates batched by obs.sweep.
    """
    import torch

    from llmctl.compress.obs import SUB_BLOCK, sweep

    cols = W.shape[1]
    m = nm[1] if nm else 1
    if nm and cols % m:
        raise LlmctlError(
            f"a layer with {cols} inputs cannot take an N:M pattern with M={m}",
            hint="pick M that divides every layer's input size (e.g. 4 or 8)",
        )
    if nm and blocksize % m:
        blocksize = max(m, blocksize - blocksize % m)
    WT = W.detach().to(U.dtype).t().contiguous()  # column j of W is row j here
    WT[dead] = 0
    diag = torch.diag(U)
    inv_d = (1 / diag).reshape(-1, 1)
    mask = torch.zeros_like(WT, dtype=torch.bool)  # True = pruned
    cur: dict = {}

    def step(j, e):
        span = blocksize if nm is None else m
        if j % span == 0:  # choose the next block's (or N:M group's) mask
            j2 = min(j + span, cols)
            scores = WT[j:j2] ** 2 / diag[j:j2].reshape(-1, 1) ** 2
            if nm is None:
                mask[j:j2] = mask_lowest(scores, sparsity, per_row=False)
            else:
                mask[j:j2].scatter_(0, torch.topk(scores, m - nm[0], dim=0, largest=False).indices, True)
            cur.update(start=j, md=mask[j:j2] * inv_d[j:j2])
        torch.mul(WT[j], cur["md"][j - cur["start"]], out=e)

    sweep(WT, U, blocksize, step, sub=-(-SUB_BLOCK // m) * m)
    return WT.masked_fill_(mask, 0).t()


# ---- walking the model ---------------------------------------------------------------------------


def prune_unstructured(
    model,
    method: str,
    sparsity: float | None,
    nm: tuple[int, int] | None,
    windows: list,
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: Progress | None = None,
    true_sequential: bool = False,
) -> None:
    """Prune every decoder-block linear in place, one block at a time (progress hears each block with an ETA).

    true_sequential=False is the papers' reference: every linear of a block is scored from the block's dense
    forward, then the pruned block is run again for the next block's inputs (two forwards per block). True
    takes each input class's statistic after the classes before it were pruned, at about one forward.
    """
    layers = decoder_layers(model)
    if method == "magnitude":
        for block in layers:
            for mod in block_linears(block).values():
                set_weight(mod, magnitude_prune(weight_rows_cols(mod), sparsity, nm))
        return

    def on_class(_i, block, names, stat):
        mods = block_linears(block)
        if method == "wanda":
            for name in names:
                set_weight(mods[name], wanda_prune(weight_rows_cols(mods[name]), stat, sparsity, nm))
            return
        from llmctl.compress.obs import hessian_inverse_factor, mark_dead

        H, dead = mark_dead(stat)
        U = hessian_inverse_factor(H, percdamp)  # one factorization per input, shared by q/k/v and gate/up
        for name in names:
            set_weight(mods[name], sparsegpt_sweep(weight_rows_cols(mods[name]), U, dead, sparsity, nm, blocksize))

    walk_blocks(
        model,
        windows,
        on_class,
        sequential=true_sequential,
        stat="sqsum" if method == "wanda" else "hessian",
        progress=progress,
        label=method,
    )


# ---- structured ----------------------------------------------------------------------------------


# ---- measuring -----------------------------------------------------------------------------------


def measure_sparsity(folder: Path) -> dict:
    """Per-layer and overall sparsity of the decoder linears, read back from the saved safetensors."""
    from safetensors import safe_open

    per_layer: dict[int, list[int]] = {}
    total_params = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                total_params += t.numel()
                parts = key.split(".")
                block = "layers" if "layers" in parts else "h" if "h" in parts else None
                if block is None or not key.endswith(".weight") or t.dim() != 2:
                    continue  # only the decoder blocks' linear weights are pruned
                try:
                    li = int(parts[parts.index(block) + 1])
                except (ValueError, IndexError):
                    continue
                acc = per_layer.setdefault(li, [0, 0])
                acc[0] += int((t == 0).sum())
                acc[1] += t.numel()
    zeros = sum(v[0] for v in per_layer.values())
    total = sum(v[1] for v in per_layer.values())
    return {
        "overall_sparsity": round(zeros / total, 4) if total else 0.0,
        "per_layer_sparsity": {str(k): round(v[0] / v[1], 4) for k, v in sorted(per_layer.items())},
        "parameters": total_params,
    }


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- the service ---------------------------------------------------------------------------------


def prune_in_memory(loaded, config: dict, windows: list, progress=None) -> dict:
    """Apply the configured pruning to loaded.model in place; returns facts."""
    structure, method = config["structure"], config["method"]
    if structure:
        scores = structured_importance(loaded.model, windows, structure)
        if structure == "heads":
            return prune_heads(loaded.model, scores, config["ratio"], config["head_mode"])
        return prune_channels(loaded.model, scores, config["ratio"])
    nm = parse_pattern(config["pattern"])
    prune_unstructured(
        loaded.model,
        method,
        None if nm else config["sparsity"],
        nm,
        windows,
        blocksize=config["sparsegpt"]["blocksize"],
        percdamp=config["sparsegpt"]["percdamp"],
        progress=progress,
        true_sequential=config["true_sequential"],
    )
    return {}


def check_config(config: dict) -> None:
    """The cross-key rules of prune beyond the schema (which checks each key's choices and ranges)."""
    structure, method = config["structure"], config["method"]
    if config["true_sequential"] and (structure or method == "magnitude"):
        raise LlmctlError(
            f"--true-sequential applies to --method wanda or sparsegpt, not to {structure or method} pruning",
            hint="drop --true-sequential (magnitude and structured pruning score every layer from one pass)",
        )
    if structure and config["ratio"] is None:
        raise LlmctlError("--structure needs --ratio", hint="e.g. --ratio 0.25")
    if not structure and not config["pattern"] and config["sparsity"] is None:
        raise LlmctlError(
            "give --sparsity (unstructured), --pattern N:M or --structure heads|channels", hint="e.g. --sparsity 0.5"
        )


def estimate(model: str, config: dict) -> dict:
    """What `--dry-run` shows: the estimated peak memory of pruning `model` (weights, calibration, Hessians).

    Examples:
        estimate("smollm2-135m-instruct", resolve_config("prune"))["peak_bytes"]
    """
    from llmctl.training.estimate import dry_run_compress

    return dry_run_compress(model, config, "prune")


def prune(
    model: str,
    name: str,
    config: dict,
    command: str = "",
    force: bool = False,
    progress: Progress | None = None,
    known_ppl_before: float | None = None,
) -> dict:
    """Prune a registry model, save it as an HF model, register it with lineage, sparsity and perplexity.

    Examples:
        prune("tiny", "tiny-w50", resolve_config("prune", None, ["method=wanda", "sparsity=0.5"], {}))
    """
    from llmctl.compress.calibration import held_out_perplexity
    from llmctl.compress.recipe import load_source
    from llmctl.models.registry import Registry

    say = progress or quiet
    check_config(config)
    reservation = Registry().reserve(name, force)
    src = load_source(
        model,
        config,
        "prune",
        need_calib=bool(config["structure"]) or config["method"] != "magnitude",
        say=say,
        check=lambda loaded: _check_structure(loaded.model, config),
        known_ppl_before=known_ppl_before,
    )
    loaded, ev = src.loaded, config["eval"]
    params_before = count_params(loaded.model)
    started = time.perf_counter()
    say("pruning")
    facts = prune_in_memory(loaded, config, src.data.windows, progress=say)
    seconds = round(time.perf_counter() - started, 1)
    ppl_after = None
    if src.data.eval_text:
        say("perplexity after")
        ppl_after = held_out_perplexity(loaded.model, loaded.tokenizer, src.data.eval_text, ev["seqlen"])
    run = {"prune_seconds": seconds, "parameters_before": params_before, "perplexity_after": ppl_after}
    meta = _save(reservation, src, config, facts, run, command)
    return {"name": name, "parent": src.parent, "path": str(reservation.path), **meta}


def _check_structure(model, config: dict) -> None:
    """Structured pruning: refuse a model without LLaMA's parts, or a ratio that removes every head."""
    if config["structure"]:
        _llama_parts(model)
        if config["structure"] == "heads":
            plan_heads(model.config, config["ratio"], config["head_mode"])


def _save(reservation, src, config: dict, facts: dict, run: dict, command: str) -> dict:
    """Save the pruned model as HF safetensors, measure it on disk, publish it; returns the entry's meta."""
    from llmctl.paths import dir_size_mb

    loaded, structure = src.loaded, config["structure"]
    with reservation.staging() as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        measured = measure_sparsity(tmp)
        if structure:
            from transformers import AutoModelForCausalLM

            reloaded = AutoModelForCausalLM.from_pretrained(tmp)  # the config must describe the new shapes
            measured["parameters_reloaded"] = count_params(reloaded)
            del reloaded
        meta = {
            "method": None if structure else config["method"],
            "sparsity_target": None if structure or config["pattern"] else config["sparsity"],
            "pattern": config["pattern"],
            "structure": structure,
            "ratio": config["ratio"],
            **src.data.describe(),
            "prune_seconds": run["prune_seconds"],
            "parameters_before": run["parameters_before"],
            "parameters_after": count_params(loaded.model),
            "size_mb": dir_size_mb(tmp),
            "perplexity_before": src.ppl_before,
            "perplexity_after": run["perplexity_after"],
            **measured,
            **{k: v for k, v in facts.items() if k != "per_layer"},
        }
        if facts.get("per_layer"):
            (tmp / "pruned-heads.json").write_text(json.dumps(facts["per_layer"]))
        src.publish(reservation, tmp, "hf", config, command, run["perplexity_after"], meta)
    return meta
