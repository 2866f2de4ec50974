"""`llmctl quantize`: weight-only and int8 quantization with neural-compressor 3.x, OpenVINO or bitsandbytes.

Backends and what each saves (each in a format its own library loads back):
- inc (neural-compressor 3.x torch API): rtn, gptq, awq, teq, autoround → INC `save` folder
  (qconfig.json + quantized_weight.pt), format "inc-woq".
- torch int8 (W8A8, dynamic activations): dynamic-int8 and smoothquant (SmoothQuant smoothing folded
  into the norms, then torch dynamic int8 Linear) → state dict of the quantized model, format "inc-int8".
- openvino (optimum-intel + NNCF weight compression, int4/int8, AWQ, scale estimation) → OpenVINO IR.
- bnb (bitsandbytes NF4/FP4/int8, applied at load time) → HF folder with a quantization_config.

Examples:
    result = quantize("smollm2-135m-instruct", "smol-gptq4", config, command="llmctl quantize ...")
    result["perplexity_after"], result["size_mb"]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from llmctl.errors import LlmctlError

# backend → algo → supported bits
SUPPORTED: dict[str, dict[str, tuple[int, ...]]] = {
    "inc": {"rtn": (2, 3, 4, 8), "gptq": (2, 3, 4, 8), "awq": (2, 3, 4, 8), "teq": (2, 3, 4, 8),
            "autoround": (2, 3, 4, 8), "smoothquant": (8,), "dynamic-int8": (8,)},
    "openvino": {"weight-compression": (4, 8)},
    "bnb": {"nf4": (4,), "fp4": (4,), "int8": (8,)},
}
DEFAULT_ALGO = {"inc": "rtn", "openvino": "weight-compression", "bnb": None}
CALIB_ALGOS = {"gptq", "awq", "teq", "autoround", "smoothquant"}
QUANTIZED_FORMATS = ("inc-woq", "inc-int8", "openvino", "bnb")
INC_WEIGHT_FILE = "quantized_weight.pt"


def supported_table() -> str:
    """One line listing every backend/algo/bits combination, for error messages."""
    parts = []
    for backend, algos in SUPPORTED.items():
        for algo, bits in algos.items():
            parts.append(f"{backend}/{algo}: {','.join(map(str, bits))}")
    return "; ".join(parts)


def check_combination(backend: str, algo: str | None, bits: int) -> str:
    """The algo to use for backend/bits, or a clear error naming the supported combinations."""
    if backend not in SUPPORTED:
        raise LlmctlError(f"unknown backend {backend!r}", hint="use inc, openvino or bnb")
    algos = SUPPORTED[backend]
    if algo is None:
        algo = DEFAULT_ALGO[backend] or ("int8" if bits == 8 else "nf4")
    if algo not in algos:
        raise LlmctlError(f"backend {backend} has no algorithm {algo!r}",
                          hint=f"supported: {', '.join(f'{a} (bits {sorted(b)})' for a, b in algos.items())}")
    if bits not in algos[algo]:
        raise LlmctlError(f"{backend}/{algo} does not support {bits}-bit",
                          hint=f"supported combinations: {supported_table()}")
    return algo


@contextlib.contextmanager
def quiet_stdout():
    """neural-compressor prints progress to stdout; keep stdout for results (--json)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# ---- loading the input model --------------------------------------------------------------------

def describe_quantized(resolved) -> str:
    meta = resolved.entry.meta if resolved.entry else {}
    bits = f" {meta['bits']}-bit" if meta.get("bits") else ""
    algo = f" {meta['algo']}" if meta.get("algo") else ""
    return f"{resolved.format}{algo}{bits}".strip()


def load_source(model: str):
    """Resolve and load the full-precision input model on CPU (fp32); quantized inputs are refused."""
    from llmctl.loading import load_model
    from llmctl.resolve import resolve_model

    resolved = resolve_model(model)
    if resolved.format in QUANTIZED_FORMATS:
        parent = resolved.parents[0] if resolved.parents else None
        raise LlmctlError(
            f"{resolved.label} is already quantized ({describe_quantized(resolved)})",
            hint=f"quantize its full-precision parent{f' {parent!r}' if parent else ''} instead")
    if resolved.format not in ("hf", "gguf"):
        raise LlmctlError(f"{resolved.label} is a {resolved.format!r} entry, not a full model",
                          hint="quantize an HF model (merge adapters first with `llmctl merge-lora`)")
    if resolved.format == "hf" and Path(resolved.path).is_dir():
        cfg = Path(resolved.path) / "config.json"
        if cfg.is_file() and "quantization_config" in json.loads(cfg.read_text()):
            raise LlmctlError(f"{resolved.label} is already quantized (its config.json has a quantization_config)",
                              hint="quantize the full-precision model it came from")
    loaded = load_model(resolved, dtype="float32", device="cpu")
    return loaded


def hf_dir_of(loaded, tmp_root: Path) -> str:
    """A folder with the model in HF format (OpenVINO export and bnb need one on disk)."""
    path = Path(loaded.resolved.path)
    if path.is_dir() and (path / "config.json").is_file():
        return str(path)
    dest = tmp_root / "hf-source"
    loaded.model.save_pretrained(dest, safe_serialization=True)
    loaded.tokenizer.save_pretrained(dest)
    return str(dest)


# ---- INC weight-only ----------------------------------------------------------------------------

def _run_fn(windows, kv_cache: bool = False):
    """Calibration forwards over the windows, without a KV cache unless asked.

    INC AWQ keeps the decoder-layer kwargs it captures (a DynamicCache among them) and replays them per
    block, so every replay grew the cache and attended to earlier windows (24 GB RSS and OOM at 32x512
    tokens on the 135M default model). auto-round captures block inputs itself and needs the default call.
    """
    import torch

    def run(model):
        with torch.no_grad():
            for w in windows:
                model(w) if kv_cache else model(w, use_cache=False)
    return run


def llama_absorb_map(model) -> dict[str, list[str]]:
    """Norm → Linear layers it feeds, for LLaMA-style blocks (TEQ folds its scales into these norms)."""
    absorb = {}
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise LlmctlError(f"TEQ here supports LLaMA-style models (got {model.config.model_type})",
                          hint="use --algo rtn, gptq or awq for this architecture")
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}"
        if not all(hasattr(layer, a) for a in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")):
            raise LlmctlError(f"TEQ here supports LLaMA-style models (got {model.config.model_type})",
                              hint="use --algo rtn, gptq or awq for this architecture")
        absorb[f"{p}.input_layernorm"] = [f"{p}.self_attn.q_proj", f"{p}.self_attn.k_proj", f"{p}.self_attn.v_proj"]
        absorb[f"{p}.post_attention_layernorm"] = [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"]
    return absorb


def awq_absorb_dict(model) -> dict:
    """AWQ's scale-absorption pairs per LLaMA-style block, relative to the block ({} = let INC trace).

    INC finds them by jit-tracing the model, which fails on transformers 4.57 LLaMA ("Jit trace in
    GraphTrace failed, absorb layer detection is skipped"): AWQ then searches no scales at all, only
    clipping. The pairs are AutoAWQ's: norm → q/k/v, norm → gate/up, up → down, and v → o when
    every query head has its own kv head (with GQA, v's outputs do not line up with o's inputs).
    """
    layers = getattr(getattr(model, "model", None), "layers", None) if model is not None else None
    if layers is None or not hasattr(layers[0], "input_layernorm") or not hasattr(layers[0], "mlp") \
            or not hasattr(layers[0].mlp, "up_proj"):
        return {}
    pairs = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
             "mlp.up_proj": ("mlp.down_proj",)}
    cfg = model.config
    if getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) == cfg.num_attention_heads:
        pairs["self_attn.v_proj"] = ("self_attn.o_proj",)
    return pairs


def _teq_train_fn(windows, steps: int, lr: float):
    import torch

    def train(model):
        alphas = [p for p in model._trained_alphas.values()] if hasattr(model, "_trained_alphas") else \
            [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(alphas, lr=lr)
        model.train()
        for step in range(steps):
            x = windows[step % len(windows)]
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    return train


def gptq_block(cfg: dict) -> int:
    """GPTQ's lazy-update block, capped at the group size.

    INC (like the reference code) picks a group's scale from the not-yet-updated weights when the
    group starts inside a block; with INC's default block of 2048 columns and groups of 128, every
    group but the first in a block gets scales from stale weights. Blocks no wider than a group fix it.
    """
    block = cfg["gptq"]["block_size"]
    return min(block, cfg["group_size"]) if cfg["group_size"] > 0 else block


def inc_config(algo: str, cfg: dict, model=None):
    """The neural-compressor config object for an INC weight-only algo and a resolved quantize config."""
    from neural_compressor.torch.quantization import AWQConfig, GPTQConfig, RTNConfig, TEQConfig

    common = dict(bits=cfg["bits"], use_sym=cfg["sym"], group_size=cfg["group_size"])
    if algo == "rtn":
        return RTNConfig(**common, use_layer_wise=False, use_mse_search=cfg["rtn"]["mse_search"])
    if algo == "gptq":
        g = cfg["gptq"]
        return GPTQConfig(**common, act_order=g["act_order"], true_sequential=g["true_sequential"],
                          percdamp=g["percdamp"], block_size=gptq_block(cfg), use_mse_search=g["mse_search"])
    if algo == "awq":
        a = cfg["awq"]
        return AWQConfig(**common, use_auto_scale=a["auto_scale"], use_auto_clip=a["auto_clip"],
                         absorb_layer_dict=awq_absorb_dict(model))
    if algo == "teq":
        return TEQConfig(**common, absorb_to_layer=llama_absorb_map(model), folding=True)
    if algo == "autoround":
        try:
            import auto_round  # noqa: F401
        except ImportError as exc:
            raise LlmctlError("autoround needs the auto-round package", hint="pip install auto-round==0.16.1") from exc
        from neural_compressor.torch.quantization import AutoRoundConfig

        r = cfg["autoround"]
        return AutoRoundConfig(**common, iters=r["iters"], lr=r["lr"], batch_size=1, amp=False,
                               nsamples=cfg["calib"]["samples"], seqlen=cfg["calib"]["seqlen"])
    raise LlmctlError(f"unknown INC weight-only algorithm {algo!r}")


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
        groups = len(self.analyze_true_sequential(self.gptq_related_blocks["transformers"][0])) \
            if self.find_true_sequential_config() else 1
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
# Every linear is clipped, q/k included, as neural-compressor does. AutoAWQ leaves q/k unclipped (their
# output feeds the softmax); on the default model clipping them measured better (wikitext ppl 36.45 → 36.13
# at 8×512 calibration).


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
    top = torch.stack([w[:, a:b].abs().amax(dim=1) for a, b in spans], dim=1)      # [rows, groups]
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
def awq_fixes(progress: Callable[[str], None] | None = None):
    """Patch INC's AWQ to match the paper and AutoAWQ where INC 3.10 differs (measured in quantize_quality).

    - Clip search per output row and group, down to 0.5 of |w|max, on the inputs the scaled layers really see.
      INC searches one ratio per layer (1.0 down to 0.91) on the activations captured *before* the scales
      were applied, while the weights already carry them: the error is weighted by x·s instead of x/s.
    - Linears that share no scale (o_proj under grouped-query attention) still get the clip search, as in
      AutoAWQ; INC skips every layer outside its scale tuples.

    progress, when given, hears "AWQ block i/n" as each decoder block starts (the whole search takes about
    30 min on the default model on 2 CPU cores).
    """
    import torch
    import neural_compressor.torch.algorithms.weight_only.awq as inc_awq
    from neural_compressor.torch.algorithms.weight_only.modules import MulLinear
    from neural_compressor.torch.algorithms.weight_only.utility import fetch_module, quant_tensor

    cls = inc_awq.ActAwareWeightQuant
    originals = (cls.search_scale, cls.apply_scale, cls.search_clip)

    def search_scale(self, block, block_name, module_list, input_values):
        if progress:
            progress(f"AWQ block {int(block_name.rsplit('.', 1)[-1]) + 1}/{self.block_num}")
        # the block still sees its own inputs here: record what the linears outside every tuple get
        tupled = {n for t in module_list for n in t}
        self._llmctl_loose = {f"{block_name}.{rel}": [] for rel, m in block.named_modules()
                              if isinstance(m, torch.nn.Linear) and f"{block_name}.{rel}" not in tupled}
        hooks = [fetch_module(self.model, name).register_forward_pre_hook(
            lambda _m, args, name=name: self._llmctl_loose[name].append(args[0].detach()))
            for name in self._llmctl_loose]
        try:
            if hooks:
                self.block_inference(block)
        finally:
            for h in hooks:
                h.remove()
        return originals[0](self, block, block_name, module_list, input_values)

    def apply_scale(self, scale_info):
        originals[1](self, scale_info)
        self._llmctl_scales = scale_info    # this block's scales; its search_clip comes next

    def clip(self, name, gram):
        c = self.weight_config.get(name, {})
        bits, group, scheme = (c.get("bits", self.bits), c.get("group_size", self.group_size),
                               c.get("scheme", self.scheme))
        if bits < 0:
            return
        module = fetch_module(self.model, name)
        linear = module.linear if isinstance(module, MulLinear) else module
        w = linear.weight.data
        maxima = awq_clip_maxima(w, gram, lambda t: quant_tensor(
            t, bits=bits, group_size=group, scheme=scheme, dtype=c.get("dtype", self.data_type),
            full_range=self.use_full_range), group)
        w.copy_(clamp_groups(w, maxima, quant_groups(w.shape[1], group)))
        key = name + ".linear" if isinstance(module, MulLinear) else name
        self.weight_config[key] = {**self.weight_config.pop(name, {"bits": bits, "group_size": group,
                                                                     "scheme": scheme}), "quantile": 1.0}

    def gram_of(inputs, scale=None):
        x = torch.cat([t.reshape(-1, t.shape[-1]).float() for t in inputs])
        if scale is not None:       # the scaled layers' inputs are x / s (norm or MulLinear absorbs 1/s)
            x = x / scale.float().view(1, -1)
        return x.T @ x

    @torch.no_grad()
    def search_clip(self, block_name, module_list, input_values):
        scales = getattr(self, "_llmctl_scales", {})
        for module_tuple in module_list:
            gram = gram_of(input_values[module_tuple[0].split(block_name + ".")[1]]["input"],
                           scales.get(module_tuple))
            for name in module_tuple:
                clip(self, name, gram)
        for name, inputs in getattr(self, "_llmctl_loose", {}).items():
            clip(self, name, gram_of(inputs))
        self._llmctl_loose = {}

    cls.search_scale, cls.apply_scale, cls.search_clip = search_scale, apply_scale, search_clip
    try:
        yield
    finally:
        cls.search_scale, cls.apply_scale, cls.search_clip = originals


def inc_weight_only(model, algo: str, cfg: dict, windows: list,
                    progress: Callable[[str], None] | None = None):
    """Quantize model in place with INC's prepare/convert; returns the quantized model."""
    import torch
    from neural_compressor.torch.quantization import convert, prepare

    qc = inc_config(algo, cfg, model)
    with quiet_stdout():
        if algo == "rtn":
            return convert(prepare(model, qc))
        if algo in ("gptq", "autoround"):
            q = prepare(model, qc)
            with gptq_rtn_grid(algo == "gptq" and cfg["gptq"]["rtn_grid"]), gptq_block_inputs_fix():
                _run_fn(windows, kv_cache=algo == "autoround")(q)
                return convert(q)
        q = prepare(model, qc, example_inputs=windows[0])
        if algo == "teq":
            with torch.enable_grad():
                _teq_train_fn(windows, cfg["teq"]["steps"], cfg["teq"]["lr"])(q)
            return convert(q)
        _run_fn(windows)(q)
        with awq_fixes(progress):
            return convert(q)


def save_inc_woq(qmodel, tokenizer, dest: Path, act_order: bool) -> None:
    """INC `save` plus config/tokenizer so the folder loads by itself (see load_inc_woq)."""
    with quiet_stdout():
        qmodel.save(str(dest))
    qcfg = dest / "qconfig.json"
    if act_order and qcfg.is_file():
        # INC's loader builds g_idx buffers only when a layer's config says desc_act (GPTQ's
        # name); its GPTQ config records act_order. Without this the channel order is lost on reload.
        data = json.loads(qcfg.read_text())
        for value in data.values():
            if isinstance(value, dict):
                for algo_cfg in value.values():
                    if isinstance(algo_cfg, dict) and "act_order" in algo_cfg:
                        algo_cfg["desc_act"] = bool(algo_cfg["act_order"])
        qcfg.write_text(json.dumps(data, indent=2))
    qmodel.config.save_pretrained(dest)
    if getattr(qmodel, "generation_config", None) is not None:
        qmodel.generation_config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _empty_model(path: str):
    """The model architecture from config.json with uninitialized weights (filled by the loader)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    return model


def load_inc_woq(path: str):
    """Load an INC weight-only folder with neural_compressor.torch.quantization.load.

    AutoRound results are HF folders with an auto-round quantization_config (transformers loads them).
    """
    import torch
    from neural_compressor.torch.quantization import load

    if not (Path(path) / "qconfig.json").is_file():
        from transformers import AutoModelForCausalLM

        with quiet_stdout():
            return AutoModelForCausalLM.from_pretrained(path)

    model = _empty_model(path)
    with quiet_stdout():
        qmodel = load(path, original_model=model)
    # INC loads the non-quantized weights itself only for AWQ/TEQ or meta models; load the rest here.
    state = torch.load(Path(path) / INC_WEIGHT_FILE, weights_only=True, map_location="cpu")
    missing = qmodel.load_state_dict(state, strict=False)
    leftover = [k for k in missing.missing_keys if not k.endswith("inv_freq")]
    if getattr(qmodel.config, "tie_word_embeddings", False):
        leftover = [k for k in leftover if k != "lm_head.weight"]
        qmodel.tie_weights()
    if leftover:
        raise LlmctlError(f"quantized weights in {path} are incomplete (missing {leftover[0]})",
                          hint="re-create the model with `llmctl quantize`")
    return qmodel


# ---- int8 W8A8: dynamic and SmoothQuant --------------------------------------------------------

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
        _run_fn(windows)(model)
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


def dynamic_int8(model):
    """Linear layers → int8 weights with per-token-dynamic int8 activations (torch fbgemm kernels)."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skip = {"lm_head"} if getattr(model.config, "tie_word_embeddings", False) else set()
        targets = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
        return quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)


def save_int8(qmodel, tokenizer, dest: Path) -> None:
    import torch

    torch.save(qmodel.state_dict(), dest / "int8_state_dict.pt")
    qmodel.config.save_pretrained(dest)
    if getattr(qmodel, "generation_config", None) is not None:
        qmodel.generation_config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def load_int8(path: str):
    import torch

    model = _empty_model(path)
    model.tie_weights()
    qmodel = dynamic_int8(model)
    state = torch.load(Path(path) / "int8_state_dict.pt", weights_only=False, map_location="cpu")
    qmodel.load_state_dict(state, strict=False)
    if getattr(qmodel.config, "tie_word_embeddings", False):
        qmodel.tie_weights()
    return qmodel


# ---- OpenVINO ------------------------------------------------------------------------------------

def require_openvino():
    try:
        import openvino  # noqa: F401
        from optimum.intel import OVModelForCausalLM  # noqa: F401
    except ImportError as exc:
        raise LlmctlError("the OpenVINO backend needs optimum-intel and openvino, which are not installed",
                          hint="pip install 'llmctl[openvino]' (optimum-intel[openvino]==1.27.0)") from exc


def openvino_compress(src_dir: str, dest: Path, cfg: dict, calib_texts: list[str] | None) -> None:
    """Export to OpenVINO IR with NNCF weight compression (int8 per-channel, int4 grouped, AWQ, scale estimation)."""
    require_openvino()
    import logging

    import nncf
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    nncf.set_log_level(logging.WARNING)  # NNCF logs its tables to stdout; stdout is for results
    for handler in logging.getLogger("nncf").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.stream = sys.stderr  # (setStream would flush a stream that may be closed)
    ov = cfg["openvino"]
    kwargs = dict(bits=cfg["bits"], sym=cfg["sym"])
    if cfg["bits"] == 4:
        # "adjust": a layer whose inputs the group size does not divide (576 = 4.5 × 128 on the default
        # model) gets the largest group that fits, instead of NNCF refusing the whole model
        kwargs.update(group_size=cfg["group_size"], ratio=ov["ratio"], group_size_fallback="adjust")
        if ov["awq"] or ov["scale_estimation"]:
            if not calib_texts:
                raise LlmctlError("--awq and --scale-estimation need calibration data",
                                  hint="pass --calib-data FILE")
            kwargs.update(dataset=calib_texts, tokenizer=src_dir, num_samples=len(calib_texts),
                          scale_estimation=ov["scale_estimation"])
            if ov["awq"]:
                kwargs["quant_method"] = "awq"
    qc = OVWeightQuantizationConfig(**kwargs)
    import warnings

    import torch

    with quiet_stdout(), warnings.catch_warnings():
        # the export traces the model once; its TracerWarnings are about shapes the IR keeps dynamic anyway
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = OVModelForCausalLM.from_pretrained(src_dir, export=True, quantization_config=qc, compile=False)
        model.save_pretrained(dest)


def load_openvino(path: str):
    require_openvino()
    from optimum.intel import OVModelForCausalLM

    with quiet_stdout():
        return OVModelForCausalLM.from_pretrained(path, compile=True)


# ---- bitsandbytes --------------------------------------------------------------------------------

def bnb_config_dict(cfg: dict, algo: str) -> dict:
    b = cfg["bnb"]
    if algo == "int8":
        return {"load_in_8bit": True}
    return {"load_in_4bit": True, "bnb_4bit_quant_type": algo, "bnb_4bit_use_double_quant": b["double_quant"],
            "bnb_4bit_compute_dtype": b["compute_dtype"]}


def load_bnb(path: str, device: str):
    """Load an HF folder with its bitsandbytes quantization_config (quantized at load time)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LlmctlError("this model needs bitsandbytes, which is not installed",
                          hint="pip install bitsandbytes==0.50.2") from exc
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    meta = json.loads((Path(path) / "llmctl-entry.json").read_text())
    bnb = dict(meta["bnb_config"])
    if "bnb_4bit_compute_dtype" in bnb:
        import torch

        bnb["bnb_4bit_compute_dtype"] = getattr(torch, bnb["bnb_4bit_compute_dtype"])
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(**bnb),
                                                device_map={"": device})


# ---- sizes, reports ------------------------------------------------------------------------------

def dir_size_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return round(total / 2**20, 2)


def weights_size_mb(path: Path) -> float:
    """Size of the weight files only (not tokenizer or configs)."""
    exts = (".safetensors", ".bin", ".pt", ".xml")
    total = sum(p.stat().st_size for p in Path(path).rglob("*")
                if p.is_file() and (p.suffix in exts or p.name == "openvino_model.bin"))
    return round(total / 2**20, 2)


def quantize_in_memory(loaded, algo: str, cfg: dict, windows: list,
                       progress: Callable[[str], None] | None = None):
    """Quantize a loaded fp32 model (inc and int8 backends); returns (model, facts)."""
    facts: dict = {}
    model = loaded.model
    if algo in SUPPORTED["inc"] and algo not in ("smoothquant", "dynamic-int8"):
        return inc_weight_only(model, algo, cfg, windows, progress), facts
    if algo == "smoothquant":
        facts.update(smooth_llama(model, windows, cfg["smoothquant"]["alpha"]))
    return dynamic_int8(model), facts


def quantize(model: str, name: str, config: dict, command: str = "", force: bool = False,
             progress: Callable[[str], None] | None = None,
             known_ppl_before: float | None = None) -> dict:
    """Quantize a registry model, save it in its library's format, register it with lineage and metrics.

    Examples:
        quantize("smollm2-135m-instruct", "smol-rtn4", resolve_config("quantize", sets=["algo=rtn"]))
    """
    import torch

    from llmctl.calibration import held_out_perplexity, prepare_data
    from llmctl.profiles import save_config
    from llmctl.registry import ModelEntry, Registry, validate_name

    say = progress or (lambda _msg: None)
    validate_name(name)
    registry = Registry()
    if registry.find(name) is not None and not force:
        raise LlmctlError(f"model {name!r} already exists in the registry",
                          hint="pick another --name or pass --force to replace it")
    backend, bits = config["backend"], config["bits"]
    algo = check_combination(backend, config["algo"], bits)
    if config["group_size"] != -1 and config["group_size"] < 1:
        raise LlmctlError(f"--group-size must be -1 (per channel) or positive, got {config['group_size']}")
    if config["max_loss"] is not None:
        from llmctl.quantize_tune import tune

        return tune(model, name, config, command=command, force=force, progress=progress)
    torch.manual_seed(config["calib"]["seed"])
    say(f"loading {model}")
    loaded = load_source(model)
    tokenizer = loaded.tokenizer
    needs_calib = algo in CALIB_ALGOS or (backend == "openvino" and (config["openvino"]["awq"] or
                                                                     config["openvino"]["scale_estimation"]))
    c, ev = config["calib"], config["eval"]
    data = prepare_data(tokenizer, c["data"], c["samples"], c["seqlen"], c["seed"], ev["data"], ev["tokens"],
                        need_calib=needs_calib)
    ppl_before = known_ppl_before  # a caller that scored the same parent on the same text
    if data.eval_text and ppl_before is None:
        say("perplexity before")
        ppl_before = held_out_perplexity(loaded.model, tokenizer, data.eval_text, ev["seqlen"])
    parent = loaded.resolved.name
    started = time.perf_counter()
    facts: dict = {}
    with registry.new_model_dir(name, force=force) as tmp:
        if backend == "inc":
            say(f"quantizing with {algo} ({bits}-bit)")
            qmodel, facts = quantize_in_memory(loaded, algo, config, data.windows, say)
            seconds = time.perf_counter() - started
            ppl_after = None
            if data.eval_text:
                say("perplexity after")
                ppl_after = held_out_perplexity(qmodel, tokenizer, data.eval_text, ev["seqlen"])
            if algo in ("smoothquant", "dynamic-int8"):
                fmt = "inc-int8"
                save_int8(qmodel, tokenizer, tmp)
            elif algo == "autoround":  # INC's save cannot write AutoRound's mapping; its HF export loads anywhere
                fmt = "inc-woq"
                with quiet_stdout():
                    qmodel.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            else:
                fmt = "inc-woq"
                save_inc_woq(qmodel, tokenizer, tmp, act_order=algo == "gptq" and config["gptq"]["act_order"])
        elif backend == "openvino":
            fmt = "openvino"
            require_openvino()
            texts = [tokenizer.decode(w[0]) for w in data.windows] if data.windows else None
            say(f"exporting to OpenVINO with {bits}-bit weight compression")
            src = hf_dir_of(loaded, tmp.parent / f".{name}.src-{os.getpid()}")
            try:
                openvino_compress(src, tmp, config, texts)
            finally:
                shutil.rmtree(tmp.parent / f".{name}.src-{os.getpid()}", ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            seconds = time.perf_counter() - started
            ppl_after = None
            if data.eval_text:
                say("perplexity after")
                ppl_after = held_out_perplexity(load_openvino(str(tmp)), tokenizer, data.eval_text, ev["seqlen"])
        else:  # bnb: weights stay full precision on disk, quantized when loaded
            fmt = "bnb"
            loaded.model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            facts["bnb_config"] = bnb_config_dict(config, algo)
            (tmp / "llmctl-entry.json").write_text(json.dumps({"format": fmt, "bnb_config": facts["bnb_config"]}))
            seconds = time.perf_counter() - started
            ppl_after = None
            if data.eval_text:
                say("perplexity after (quantizing at load time)")
                ppl_after = held_out_perplexity(load_bnb(str(tmp), "cpu"), tokenizer, data.eval_text, ev["seqlen"])
        meta = {"algo": algo, "backend": backend, "bits": bits, "group_size": config["group_size"],
                "sym": config["sym"], **data.describe(), "quantize_seconds": round(seconds, 1),
                "size_mb": dir_size_mb(tmp), "weights_mb": weights_size_mb(tmp),
                "perplexity_before": ppl_before, "perplexity_after": ppl_after, **facts}
        if algo == "gptq":
            meta["gptq"] = config["gptq"]
        if backend == "openvino":
            meta["openvino"] = config["openvino"]
        entry_file = {"format": fmt, **({"bnb_config": facts["bnb_config"]} if fmt == "bnb" else {})}
        (tmp / "llmctl-entry.json").write_text(json.dumps(entry_file))
        save_config(config, tmp / "llmctl-config.yaml", command)
        metrics = {}
        if ppl_after is not None:
            metrics["heldout.perplexity"] = ppl_after
        entry = ModelEntry(name=name, format=fmt, path="", parents=[parent] if parent else [], command=command,
                           profile=config, metrics=metrics, meta=meta)
        registry.add(entry, staged=tmp, force=force)
    rel = None
    if ppl_before and ppl_after:
        rel = round(ppl_after / ppl_before - 1, 4)
    return {"name": name, "format": fmt, "parent": parent, "path": str(registry.model_dir(name)),
            "relative_ppl_increase": rel, **meta}
