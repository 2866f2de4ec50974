"""`llmctl prune`: sparse or structurally smaller models, layer by layer with calibration data.

Unstructured (`sparsity`) and N:M (`pattern`, N non-zeros in every M consecutive input weights) for
- magnitude: |W|, one threshold per weight matrix (the papers' baseline);
- Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖₂, compared within each output row (groups of M for N:M);
- SparseGPT (Frantar & Alistarh 2023): OBS-style sequential column update with H = XᵀX + λI, mask
  chosen per block of columns by w²/[H⁻¹]_jj² (per group of M for N:M), errors spread to later columns.
Decoder blocks are processed one at a time: the first block's inputs are captured with a hook,
each block's statistics are gathered with hooks on its linears, the block is pruned, and its
outputs (from the pruned block) become the next block's inputs, so memory stays near one block.

Structured pruning removes whole attention heads (keeping GQA groups consistent) or MLP channels,
ranked by calibration importance ‖X‖₂·‖W_out column‖₂, and saves a genuinely smaller HF model.

Examples:
    prune("smollm2-135m-instruct", "smol-wanda50", resolve_config("prune", sets=["method=wanda", ...]))
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from llmctl.errors import LlmctlError

METHODS = ("magnitude", "wanda", "sparsegpt")


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass after the first decoder block's inputs."""


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' → (2, 4): N non-zeros kept in every M consecutive weights; N < M required."""
    if pattern in (None, ""):
        return None
    if str(pattern).isdigit():  # YAML reads an unquoted 2:4 from --set or a profile as the base-60 number 124
        raise LlmctlError(f"--pattern came through as the number {pattern} (YAML read N:M as base 60)",
                          hint="use --pattern 2:4, or quote it: --set 'pattern=\"2:4\"'")
    try:
        n_text, m_text = pattern.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError as exc:
        raise LlmctlError(f"--pattern {pattern!r} is not N:M", hint="use e.g. 2:4 or 4:8 (N kept of every M)") from exc
    if not (0 < n < m):
        raise LlmctlError(f"--pattern {pattern}: need 0 < N < M", hint="use e.g. 2:4 or 4:8 (N kept of every M)")
    return n, m


# ---- masks and updates on one weight matrix (rows = outputs, columns = inputs) -------------------

def mask_lowest(scores, fraction: float, per_row: bool):
    """Boolean mask (True = prune) of the lowest `fraction` of scores, per row or over the whole matrix."""
    import torch

    if per_row:
        k = int(scores.shape[1] * fraction)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        if k > 0:
            idx = torch.topk(scores, k, dim=1, largest=False).indices
            mask.scatter_(1, idx, True)
        return mask
    k = int(scores.numel() * fraction)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.topk(scores.flatten(), k, largest=False).indices
        mask[idx] = True
    return mask.view_as(scores)


def mask_nm(scores, n: int, m: int):
    """Prune the M−N lowest scores in every group of M consecutive columns of each row."""
    import torch

    rows, cols = scores.shape
    if cols % m:
        raise LlmctlError(f"a layer with {cols} inputs cannot take an N:M pattern with M={m}",
                          hint="pick M that divides every layer's input size (e.g. 4 or 8)")
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


def sparsegpt_prune(W, H, sparsity: float | None, nm: tuple[int, int] | None, blocksize: int = 128,
                    percdamp: float = 0.01):
    """SparseGPT on one matrix W (rows × cols) with Hessian H = XᵀX (cols × cols); returns the pruned W.

    Follows the reference algorithm: dead inputs zeroed, H damped by percdamp·mean(diag H), the
    upper Cholesky factor of H⁻¹ drives the per-column OBS update; unstructured masks are chosen per
    block of `blocksize` columns from w²/[H⁻¹]_jj², N:M masks per group of M columns.
    """
    import torch

    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    if nm and blocksize % nm[1]:
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if nm is None:
            scores = W1 ** 2 / d.reshape(1, -1) ** 2
            k = int(scores.numel() * sparsity)
            mask1 = torch.zeros(scores.numel(), dtype=torch.bool)
            if k > 0:
                mask1[torch.topk(scores.flatten(), k, largest=False).indices] = True
            mask1 = mask1.view_as(W1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        n, m = nm if nm else (0, 0)
        for i in range(count):
            w = W1[:, i]
            if nm and i % m == 0:
                scores = W1[:, i:i + m] ** 2 / d[i:i + m].reshape(1, -1) ** 2
                idx = torch.topk(scores, m - n, dim=1, largest=False).indices
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


# ---- walking the model ---------------------------------------------------------------------------

def decoder_layers(model):
    """The ModuleList of decoder blocks (LLaMA-style model.model.layers or GPT-2 transformer.h)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner.layers
    tr = getattr(model, "transformer", None)
    if tr is not None and hasattr(tr, "h"):
        return tr.h
    raise LlmctlError(f"cannot find the decoder blocks of this {model.config.model_type} model",
                      hint="prune supports LLaMA-style (model.layers) and GPT-2-style (transformer.h) models")


def prunable_linears(block) -> dict:
    """name → module for the Linear (and GPT-2 Conv1D) layers inside a decoder block."""
    import torch

    out = {}
    for name, mod in block.named_modules():
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            out[name] = mod
    return out


def weight_rows_cols(mod):
    """The weight as (outputs × inputs): Conv1D stores it transposed."""
    return mod.weight.data.t() if type(mod).__name__ == "Conv1D" else mod.weight.data


def set_weight(mod, W) -> None:
    if type(mod).__name__ == "Conv1D":
        W = W.t()
    mod.weight.data.copy_(W.to(mod.weight.dtype))


def capture_block_inputs(model, windows):
    """Run the calibration windows up to the first decoder block; return its (args, kwargs) per window."""
    import torch

    layers = decoder_layers(model)
    captured = []

    def hook(_mod, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for w in windows:
                try:
                    model(input_ids=w, use_cache=False)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return captured


def _block_out(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_block(block, captured):
    """Outputs of block for every captured input, as new captured inputs for the next block."""
    import torch

    new = []
    with torch.no_grad():
        for args, kwargs in captured:
            hidden = args[0] if args else kwargs["hidden_states"]
            out = _block_out(block(*args, **kwargs))
            if args:
                new.append(((out, *args[1:]), kwargs))
            else:
                new.append(((), {**kwargs, "hidden_states": out}))
            del hidden
    return new


def collect_stats(block, captured, linears: dict, kind: str) -> dict:
    """Per linear: Σ x_j² over all calibration tokens (wanda) or H = Σ x xᵀ (sparsegpt)."""
    import torch

    stats: dict = {}

    def make_hook(name):
        def hook(_mod, inp, _out):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
            if kind == "wanda":
                s = (x ** 2).sum(dim=0)
            else:
                s = x.t().matmul(x)
            stats[name] = stats[name] + s if name in stats else s
        return hook

    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in linears.items()]
    try:
        run_block(block, captured)
    finally:
        for h in handles:
            h.remove()
    return stats


def prune_unstructured(model, method: str, sparsity: float | None, nm: tuple[int, int] | None, windows: list,
                       blocksize: int = 128, percdamp: float = 0.01,
                       progress: Callable[[str], None] | None = None) -> None:
    """Prune every decoder-block linear in place, one block at a time."""
    layers = decoder_layers(model)
    if method == "magnitude":
        for i, block in enumerate(layers):
            for mod in prunable_linears(block).values():
                set_weight(mod, magnitude_prune(weight_rows_cols(mod), sparsity, nm))
        return
    captured = capture_block_inputs(model, windows)
    for i, block in enumerate(layers):
        if progress:
            progress(f"{method}: block {i + 1}/{len(layers)}")
        linears = prunable_linears(block)
        stats = collect_stats(block, captured, linears, method)
        for name, mod in linears.items():
            W = weight_rows_cols(mod)
            if name not in stats:
                continue
            if method == "wanda":
                new = wanda_prune(W, stats[name], sparsity, nm)
            else:
                new = sparsegpt_prune(W, stats[name], sparsity, nm, blocksize=blocksize, percdamp=percdamp)
            set_weight(mod, new)
        del stats
        captured = run_block(block, captured)  # the pruned block's outputs feed the next block


# ---- structured ----------------------------------------------------------------------------------

def _llama_parts(model):
    layers = decoder_layers(model)
    block = layers[0]
    if not (hasattr(block, "self_attn") and hasattr(block, "mlp") and hasattr(block.self_attn, "o_proj")
            and hasattr(block.mlp, "down_proj")):
        raise LlmctlError(f"structured pruning supports LLaMA-style models (got {model.config.model_type})",
                          hint="use unstructured --sparsity or --pattern for this architecture")
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
            s = (x ** 2).sum(dim=0)
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
                hint=f"use a ratio below {(rep - 0.5) / rep:.2f}, or --set head_mode=group to drop whole kv groups")
        if k == 0:
            raise LlmctlError(f"--ratio {ratio} removes no head ({rep} query heads per kv group)",
                              hint=f"use a ratio of at least {0.5 / rep:.2f}")
        return k, 0
    g = round(ratio * kv)
    if g >= kv:
        raise LlmctlError(f"--ratio {ratio} would remove every kv group ({kv}) and so every head of a layer",
                          hint=f"use a ratio below {(kv - 0.5) / kv:.2f}")
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
    return {"heads_before": heads, "heads_after": cfg.num_attention_heads, "kv_heads_before": kv,
            "kv_heads_after": cfg.num_key_value_heads, "head_dim": hd, "per_layer": per_layer}


def prune_channels(model, scores: list, ratio: float) -> dict:
    import torch

    cfg = model.config
    inter = cfg.intermediate_size
    remove = round(ratio * inter)
    if remove >= inter:
        raise LlmctlError(f"--ratio {ratio} would remove all {inter} MLP channels of every layer",
                          hint="use a ratio below 1")
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
    return {"overall_sparsity": round(zeros / total, 4) if total else 0.0,
            "per_layer_sparsity": {str(k): round(v[0] / v[1], 4) for k, v in sorted(per_layer.items())},
            "parameters": total_params}


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
    prune_unstructured(loaded.model, method, None if nm else config["sparsity"], nm, windows,
                       blocksize=config["sparsegpt"]["blocksize"], percdamp=config["sparsegpt"]["percdamp"],
                       progress=progress)
    return {}


def check_config(config: dict) -> None:
    structure, method = config["structure"], config["method"]
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
        raise LlmctlError("give --sparsity (unstructured), --pattern N:M or --structure heads|channels",
                          hint="e.g. --sparsity 0.5")
    if not 0 < s < 1:
        raise LlmctlError(f"--sparsity must be in (0, 1), got {s}", hint="e.g. --sparsity 0.5 for 50% zeros")


def prune(model: str, name: str, config: dict, command: str = "", force: bool = False,
          progress: Callable[[str], None] | None = None,
          known_ppl_before: float | None = None) -> dict:
    """Prune a registry model, save it as an HF model, register it with lineage, sparsity and perplexity.

    Examples:
        prune("tiny", "tiny-w50", resolve_config("prune", None, ["method=wanda", "sparsity=0.5"], {}))
    """
    import torch

    from llmctl.calibration import held_out_perplexity, prepare_data
    from llmctl.profiles import save_config
    from llmctl.quantize import QUANTIZED_FORMATS, describe_quantized
    from llmctl.registry import ModelEntry, Registry, validate_name

    say = progress or (lambda _m: None)
    check_config(config)
    validate_name(name)
    registry = Registry()
    if registry.find(name) is not None and not force:
        raise LlmctlError(f"model {name!r} already exists in the registry",
                          hint="pick another --name or pass --force to replace it")
    from llmctl.loading import load_model
    from llmctl.resolve import resolve_model

    resolved = resolve_model(model)
    if resolved.format in QUANTIZED_FORMATS:
        raise LlmctlError(f"{resolved.label} is quantized ({describe_quantized(resolved)}); prune needs full weights",
                          hint="prune the full-precision model, then quantize the pruned one")
    if resolved.format not in ("hf", "gguf"):
        raise LlmctlError(f"{resolved.label} is a {resolved.format!r} entry, not a full model",
                          hint="prune an HF model (merge adapters first)")
    say(f"loading {model}")
    loaded = load_model(resolved, dtype="float32", device="cpu")
    if config["structure"]:
        _llama_parts(loaded.model)
        if config["structure"] == "heads":
            plan_heads(loaded.model.config, config["ratio"], config["head_mode"])
    torch.manual_seed(config["calib"]["seed"])
    need_calib = bool(config["structure"]) or config["method"] != "magnitude"
    c, ev = config["calib"], config["eval"]
    data = prepare_data(loaded.tokenizer, c["data"], c["samples"], c["seqlen"], c["seed"], ev["data"], ev["tokens"],
                        need_calib=need_calib)
    params_before = count_params(loaded.model)
    ppl_before = known_ppl_before  # a caller that scored the same parent on the same text
    if data.eval_text and ppl_before is None:
        say("perplexity before")
        ppl_before = held_out_perplexity(loaded.model, loaded.tokenizer, data.eval_text, ev["seqlen"])
    started = time.perf_counter()
    say("pruning")
    facts = prune_in_memory(loaded, config, data.windows, progress=say)
    seconds = round(time.perf_counter() - started, 1)
    ppl_after = None
    if data.eval_text:
        say("perplexity after")
        ppl_after = held_out_perplexity(loaded.model, loaded.tokenizer, data.eval_text, ev["seqlen"])
    parent = resolved.name
    with registry.new_model_dir(name, force=force) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        measured = measure_sparsity(tmp)
        if config["structure"]:
            from transformers import AutoModelForCausalLM

            reloaded = AutoModelForCausalLM.from_pretrained(tmp)  # the config must describe the new shapes
            measured["parameters_reloaded"] = count_params(reloaded)
            del reloaded
        from llmctl.quantize import dir_size_mb

        meta = {"method": None if config["structure"] else config["method"],
                "sparsity_target": None if config["structure"] or config["pattern"] else config["sparsity"],
                "pattern": config["pattern"], "structure": config["structure"], "ratio": config["ratio"],
                **data.describe(), "prune_seconds": seconds, "parameters_before": params_before,
                "parameters_after": count_params(loaded.model), "size_mb": dir_size_mb(tmp),
                "perplexity_before": ppl_before, "perplexity_after": ppl_after, **measured,
                **{k: v for k, v in facts.items() if k != "per_layer"}}
        if facts.get("per_layer"):
            (tmp / "pruned-heads.json").write_text(json.dumps(facts["per_layer"]))
        save_config(config, tmp / "llmctl-config.yaml", command)
        metrics = {"heldout.perplexity": ppl_after} if ppl_after is not None else {}
        registry.add(ModelEntry(name=name, format="hf", path="", parents=[parent] if parent else [],
                                command=command, profile=config, metrics=metrics, meta=meta),
                     staged=tmp, force=force)
    return {"name": name, "parent": parent, "path": str(registry.model_dir(name)), **meta}

