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
from collections.abc import Callable
from pathlib import Path

from llmctl.compress.blocks import block_linears, decoder_layers, set_weight, weight_rows_cols
from llmctl.compress.sequential import walk_blocks
from llmctl.errors import LlmctlError
from llmctl.prune.structured import _llama_parts, plan_heads, prune_channels, prune_heads, structured_importance

METHODS = ("magnitude", "wanda", "sparsegpt")
prunable_linears = block_linears  # the name structured/unstructured code here used before the move


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' → (2, 4): N non-zeros kept in every M consecutive weights; N < M required."""
    if pattern in (None, ""):
        return None
    if str(pattern).isdigit():  # YAML reads an unquoted 2:4 from --set or a profile as the base-60 number 124
        raise LlmctlError(
            f"--pattern came through as the number {pattern} (YAML read N:M as base 60)",
            hint="use --pattern 2:4, or quote it: --set 'pattern=\"2:4\"'",
        )
    try:
        n_text, m_text = pattern.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError as exc:
        raise LlmctlError(f"--pattern {pattern!r} is not N:M", hint="use e.g. 2:4 or 4:8 (N kept of every M)") from exc
    if not (0 < n < m):
        raise LlmctlError(f"--pattern {pattern}: need 0 < N < M", hint="use e.g. 2:4 or 4:8 (N kept of every M)")
    return n, m


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
    progress: Callable[[str], None] | None = None,
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
    structure, method = config["structure"], config["method"]
    if config["true_sequential"] and (structure or method == "magnitude"):
        raise LlmctlError(
            f"--true-sequential applies to --method wanda or sparsegpt, not to {structure or method} pruning",
            hint="drop --true-sequential (magnitude and structured pruning score every layer from one pass)",
        )
    if structure:
        if structure not in ("heads", "channels"):
            raise LlmctlError(f"--structure {structure!r} is not known", hint="use heads or channels")
        if config["ratio"] is None:
            raise LlmctlError("--structure needs --ratio", hint="e.g. --ratio 0.25")
        if not 0 < config["ratio"] < 1:
            raise LlmctlError(f"--ratio must be in (0, 1), got {config['ratio']}")
        return
    if method not in METHODS:
        raise LlmctlError(f"unknown --method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    if config["pattern"]:
        parse_pattern(config["pattern"])
        return
    s = config["sparsity"]
    if s is None:
        raise LlmctlError(
            "give --sparsity (unstructured), --pattern N:M or --structure heads|channels", hint="e.g. --sparsity 0.5"
        )
    if not 0 < s < 1:
        raise LlmctlError(f"--sparsity must be in (0, 1), got {s}", hint="e.g. --sparsity 0.5 for 50% zeros")


def prune(
    model: str,
    name: str,
    config: dict,
    command: str = "",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    known_ppl_before: float | None = None,
) -> dict:
    """Prune a registry model, save it as an HF model, register it with lineage, sparsity and perplexity.

    Examples:
        prune("tiny", "tiny-w50", resolve_config("prune", None, ["method=wanda", "sparsity=0.5"], {}))
    """
    import torch

    from llmctl.compress.calibration import held_out_perplexity, parent_perplexity, prepare_data
    from llmctl.config.profiles import save_config
    from llmctl.models.loading import check_full_precision, load_model
    from llmctl.models.registry import ModelEntry, Registry
    from llmctl.models.resolve import resolve_model
    from llmctl.paths import dir_size_mb

    say = progress or (lambda _m: None)
    check_config(config)
    reservation = Registry().reserve(name, force)
    resolved = resolve_model(model)
    check_full_precision(resolved, "prune")
    say(f"loading {model}")
    loaded = load_model(resolved, dtype="float32", device="cpu")
    if config["structure"]:
        _llama_parts(loaded.model)
        if config["structure"] == "heads":
            plan_heads(loaded.model.config, config["ratio"], config["head_mode"])
    torch.manual_seed(config["calib"]["seed"])
    need_calib = bool(config["structure"]) or config["method"] != "magnitude"
    c, ev = config["calib"], config["eval"]
    data = prepare_data(
        loaded.tokenizer,
        c["data"],
        c["samples"],
        c["seqlen"],
        c["seed"],
        ev["data"],
        ev["tokens"],
        need_calib=need_calib,
    )
    params_before = count_params(loaded.model)
    ppl_before = known_ppl_before  # a caller that scored the same parent on the same text
    if ppl_before is None:
        ppl_before = parent_perplexity(loaded, data.eval_text, ev["seqlen"], say)
    started = time.perf_counter()
    say("pruning")
    facts = prune_in_memory(loaded, config, data.windows, progress=say)
    seconds = round(time.perf_counter() - started, 1)
    ppl_after = None
    if data.eval_text:
        say("perplexity after")
        ppl_after = held_out_perplexity(loaded.model, loaded.tokenizer, data.eval_text, ev["seqlen"])
    parent = resolved.name
    with reservation.staging() as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        measured = measure_sparsity(tmp)
        if config["structure"]:
            from transformers import AutoModelForCausalLM

            reloaded = AutoModelForCausalLM.from_pretrained(tmp)  # the config must describe the new shapes
            measured["parameters_reloaded"] = count_params(reloaded)
            del reloaded
        meta = {
            "method": None if config["structure"] else config["method"],
            "sparsity_target": None if config["structure"] or config["pattern"] else config["sparsity"],
            "pattern": config["pattern"],
            "structure": config["structure"],
            "ratio": config["ratio"],
            **data.describe(),
            "prune_seconds": seconds,
            "parameters_before": params_before,
            "parameters_after": count_params(loaded.model),
            "size_mb": dir_size_mb(tmp),
            "perplexity_before": ppl_before,
            "perplexity_after": ppl_after,
            **measured,
            **{k: v for k, v in facts.items() if k != "per_layer"},
        }
        if facts.get("per_layer"):
            (tmp / "pruned-heads.json").write_text(json.dumps(facts["per_layer"]))
        save_config(config, tmp / "llmctl-config.yaml", command)
        metrics = {"heldout.perplexity": ppl_after} if ppl_after is not None else {}
        reservation.publish(
            ModelEntry(
                name=name,
                format="hf",
                path="",
                parents=[parent] if parent else [],
                command=command,
                profile=config,
                metrics=metrics,
                meta=meta,
            ),
            tmp,
        )
    return {"name": name, "parent": parent, "path": str(reservation.path), **meta}
