"""int8 W8A8: SmoothQuant smoothing folded into LLaMA-style norms before torch dynamic int8 quantization.

The int8 modules themselves and their on-disk layout are the `inc-int8` format (`llmctl/models/formats/int8.py`).

Examples:
    facts = smooth_llama(model, windows, alpha=0.5); qmodel = dynamic_int8(model)
"""

from __future__ import annotations

from llmctl.quantize.inc import calibration_forwards, llama_absorb_map


def smooth_llama(model, windows: list, alpha: float) -> dict:
    """SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^α / max|W_j|^(1-α), X/s folded into the norm, W*s.

    Applied to the norm → q/k/v and norm → gate/up pairs of LLaMA-style blocks. Returns stats.
    """
    import torch

    absorb = llama_absorb_map(model)
    names = {n: m for n, m in model.named_modules()}
    act_max: dict[str, torch.Tensor] = {}
    hooks = []
    for norm_name in absorb:

        def hook(_m, _inp, out, key=norm_name):
            cur = out.detach().abs().reshape(-1, out.shape[-1]).amax(dim=0).float()
            act_max[key] = torch.maximum(act_max[key], cur) if key in act_max else cur

        hooks.append(names[norm_name].register_forward_hook(hook))
    try:
        calibration_forwards(windows)(model)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for norm_name, linears in absorb.items():
            mods = [names[n] for n in linears]
            w_max = torch.stack([m.weight.abs().amax(dim=0) for m in mods]).amax(dim=0).float()
            s = (act_max[norm_name].clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            names[norm_name].weight.div_(s.to(names[norm_name].weight.dtype))
            for m in mods:
                m.weight.mul_(s.to(m.weight.dtype))
    return {"smoothed_norms": len(absorb), "alpha": alpha}
