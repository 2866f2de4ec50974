"""Fixes to neural-compressor 3.10's GPTQ and AWQ, applied as scoped patches (measured in quantize_quality).

- GPTQ true-sequential: INC overwrote a block's cached inputs after every sub-layer group (`gptq_block_inputs_fix`).
- GPTQ grid: optional RTN-style symmetric grid (`gptq_rtn_grid`).
- AWQ clip search: per row and group, on the inputs the scaled layers really see, also for linears outside
  every scale pair (`awq_fixes`).

Examples:
    with gptq_block_inputs_fix(), gptq_rtn_grid(False):
        convert(prepared)
"""

from __future__ import annotations

import contextlib

from llmctl.runtime.progress import Progress


@contextlib.contextmanager
def gptq_rtn_grid(enabled: bool):
    """Give INC's GPTQ the same symmetric grid as its RTN: scale = max|w| / (2^(b-1) - 1).

    INC's GPTQ quantizer (like the reference code) uses scale = 2·max|w| / (2^b - 1) with zero point
    2^(b-1), so codes span [-2^(b-1), 2^(b-1) - 1]·scale: at 4 bits the largest positive weight of a
    group lands on 7·scale = 14/15·max|w|, clipped by 6.7 %. RTN's grid represents ±max|w| exactly.
    Scaling the step by (2^b - 1)/(2^b - 2) makes both the same; the stored zero point stays 2^(b-1).
    """
    if not enabled:
        yield
        return
    from neural_compressor.torch.algorithms.weight_only.gptq import Quantizer

    original = Quantizer.find_params

    def find_params(self, x, weight=False):
        original(self, x, weight)
        if getattr(self, "sym", False) and getattr(self, "dtype", "int") == "int" and self.maxq > 1:
            self.scale = self.scale * (self.maxq / (self.maxq - 1))

    Quantizer.find_params = find_params
    try:
        yield
    finally:
        Quantizer.find_params = original


class _BlockInputs(list):
    """Cached hidden states of one decoder block that take the block's outputs only once per block.

    INC 3.10's GPTQ writes a block's outputs over its cached inputs after every true-sequential
    group (q/k/v, o, gate, up, down on LLaMA), so later groups collect Hessians from the block
    applied to its own output and the next block receives block⁵(x) (measured on the default model:
    wikitext ppl 47.8 with true_sequential, RTN 48.8, fp 30.1). Writes are held back until every
    group of the block has written each batch once; reads return the block's inputs until then.
    """

    def __init__(self, items, groups: int):
        super().__init__(items)
        self.groups, self.pending, self.writes = groups, {}, 0

    def __setitem__(self, index, value):
        self.pending[index] = value
        self.writes += 1
        if self.writes == self.groups * len(self):
            for i, v in self.pending.items():
                super().__setitem__(i, v)
            self.pending, self.writes = {}, 0


@contextlib.contextmanager
def gptq_block_inputs_fix():
    """Patch INC's GPTQ so true-sequential groups of a block all see the block's real inputs."""
    from neural_compressor.torch.algorithms.weight_only.gptq import RAWGPTQuantizer

    original = RAWGPTQuantizer.execute_quantization

    def execute_quantization(self, *args, **kwargs):
        groups = (
            len(self.analyze_true_sequential(self.gptq_related_blocks["transformers"][0]))
            if self.find_true_sequential_config()
            else 1
        )
        if "hidden_states" in self.cache_key_arguments:
            self.cache_key_arguments["hidden_states"] = _BlockInputs(self.cache_key_arguments["hidden_states"], groups)
        else:
            self.cache_positional_arguments[0] = _BlockInputs(self.cache_positional_arguments[0], groups)
        return original(self, *args, **kwargs)

    RAWGPTQuantizer.execute_quantization = execute_quantization
    try:
        yield
    finally:
        RAWGPTQuantizer.execute_quantization = original


# AWQ's clip search (Lin et al. 2023, and AutoAWQ): per output row and group, shrink the clipping max
# over 1, 0.95, …, 0.55 of |w|max and keep the one with the least output error.
AWQ_CLIP_GRID = 20

AWQ_CLIP_MAX_SHRINK = 0.5


def quant_groups(cols: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges that share a scale, as INC's quant_tensor splits them (a short tail is its own group)."""
    g = group_size if 0 < group_size <= cols else cols
    bounds = list(range(0, cols - cols % g, g)) + ([cols - cols % g] if cols % g else [])
    return [(b, min(b + g, cols)) for b in bounds]


def clamp_groups(w, maxima, spans):
    """w clamped to ±maxima[r, j] in row r and column group j (spans from quant_groups)."""
    import torch

    owner = torch.cat([torch.full((b - a,), j) for j, (a, b) in enumerate(spans)])  # group of each column
    full = maxima[:, owner].to(w.dtype)
    return torch.maximum(torch.minimum(w, full), -full)


def awq_clip_maxima(weight, gram, quantize, group_size: int):
    """Per (row, group) clipping max of `weight` that minimizes the output error on calibration inputs.

    weight: [rows, cols]; gram: Σ xᵀx over calibration tokens of the inputs the layer really sees, [cols, cols];
    quantize: fake-quantizes a [rows, cols] tensor on the final grid. The output error of row r in group j is
    dᵀ G_j d with d the weight error of that row and group and G_j the group's diagonal block of the Gram
    matrix: exact for every calibration token, without keeping the tokens. Returns [rows, groups].

    Examples:
        maxima = awq_clip_maxima(w, x.T @ x, lambda t: quant_tensor(t, bits=4, group_size=128), 128)
    """
    import torch

    w = weight.float()
    spans = quant_groups(w.shape[1], group_size)
    top = torch.stack([w[:, a:b].abs().amax(dim=1) for a, b in spans], dim=1)  # [rows, groups]
    best, best_err = top.clone(), None
    for step in range(int(AWQ_CLIP_MAX_SHRINK * AWQ_CLIP_GRID)):
        m = top * (1 - step / AWQ_CLIP_GRID)
        d = w - quantize(clamp_groups(w, m, spans).to(weight.dtype)).float()
        err = torch.stack([((d[:, a:b] @ gram[a:b, a:b]) * d[:, a:b]).sum(dim=1) for a, b in spans], dim=1)
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best = torch.where(better, m, best)
            best_err = torch.where(better, err, best_err)
    return best


@contextlib.contextmanager
def awq_fixes(progress: Progress | None = None):
    """Patch INC's AWQ to match the paper and AutoAWQ where INC 3.10 differs (measured in quantize_quality).

    - Clip search per output row and group, down to 0.5 of |w|max, on the inputs the scaled layers really see.
      INC searches one ratio per layer (1.0 down to 0.91) on the activations captured *before* the scales
      were applied, while the weights already carry them: the error is weighted by x·s instead of x/s.
    - Linears that share no scale (o_proj under grouped-query attention) still get the clip search, as in
      AutoAWQ; INC skips every layer outside its scale tuples.

    progress, when given, hears "AWQ block i/n" as each decoder block starts (the whole search takes about
    30 min on the default model on 2 CPU cores).
    """
    import neural_compressor.torch.algorithms.weight_only.awq as inc_awq
    import torch

    cls = inc_awq.ActAwareWeightQuant
    originals = (cls.search_scale, cls.apply_scale, cls.search_clip)

    def search_scale(self, block, block_name, module_list, input_values):
        if progress:
            progress(f"AWQ block {int(block_name.rsplit('.', 1)[-1]) + 1}/{self.block_num}")
        _record_loose_inputs(self, block, block_name, module_list)
        return originals[0](self, block, block_name, module_list, input_values)

    def apply_scale(self, scale_info):
        originals[1](self, scale_info)
        self._llmctl_scales = scale_info  # this block's scales; its search_clip comes next

    @torch.no_grad()
    def search_clip(self, block_name, module_list, input_values):
        scales = getattr(self, "_llmctl_scales", {})
        for module_tuple in module_list:
            gram = _gram_of(input_values[module_tuple[0].split(block_name + ".")[1]]["input"], scales.get(module_tuple))
            for name in module_tuple:
                _awq_clip(self, name, gram)
        for name, inputs in getattr(self, "_llmctl_loose", {}).items():
            _awq_clip(self, name, _gram_of(inputs))
        self._llmctl_loose = {}

    cls.search_scale, cls.apply_scale, cls.search_clip = search_scale, apply_scale, search_clip
    try:
        yield
    finally:
        cls.search_scale, cls.apply_scale, cls.search_clip = originals


def _record_loose_inputs(awq, block, block_name: str, module_list) -> None:
    """Run the block once, keeping the inputs of its linears outside every scale tuple (in awq._llmctl_loose);
    the block still sees its own inputs here, before any scale is applied."""
    import torch
    from neural_compressor.torch.algorithms.weight_only.utility import fetch_module

    tupled = {n for t in module_list for n in t}
    awq._llmctl_loose = {
        f"{block_name}.{rel}": []
        for rel, m in block.named_modules()
        if isinstance(m, torch.nn.Linear) and f"{block_name}.{rel}" not in tupled
    }
    hooks = [
        fetch_module(awq.model, name).register_forward_pre_hook(
            lambda _m, args, name=name: awq._llmctl_loose[name].append(args[0].detach())
        )
        for name in awq._llmctl_loose
    ]
    try:
        if hooks:
            awq.block_inference(block)
    finally:
        for h in hooks:
            h.remove()


def _gram_of(inputs, scale=None):
    """XᵀX of a linear's captured inputs; with `scale`, of x / s (norm or MulLinear absorbs 1/s)."""
    import torch

    x = torch.cat([t.reshape(-1, t.shape[-1]).float() for t in inputs])
    if scale is not None:
        x = x / scale.float().view(1, -1)
    return x.T @ x


def _awq_clip(awq, name: str, gram) -> None:
    """Clip one linear's weight per row and group (awq_clip_maxima) and mark it as clipped in INC's config."""
    from neural_compressor.torch.algorithms.weight_only.modules import MulLinear
    from neural_compressor.torch.algorithms.weight_only.utility import fetch_module, quant_tensor

    c = awq.weight_config.get(name, {})
    bits, group, scheme = c.get("bits", awq.bits), c.get("group_size", awq.group_size), c.get("scheme", awq.scheme)
    if bits < 0:
        return
    module = fetch_module(awq.model, name)
    linear = module.linear if isinstance(module, MulLinear) else module
    w = linear.weight.data

    def fake_quant(t):
        dtype = c.get("dtype", awq.data_type)
        return quant_tensor(t, bits=bits, group_size=group, scheme=scheme, dtype=dtype, full_range=awq.use_full_range)

    maxima = awq_clip_maxima(w, gram, fake_quant, group)
    w.copy_(clamp_groups(w, maxima, quant_groups(w.shape[1], group)))
    key = name + ".linear" if isinstance(module, MulLinear) else name
    awq.weight_config[key] = {
        **awq.weight_config.pop(name, {"bits": bits, "group_size": group, "scheme": scheme}),
        "quantile": 1.0,
    }
