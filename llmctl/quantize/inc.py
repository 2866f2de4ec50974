"""neural-compressor weight-only quantization: INC config objects per algorithm, and running prepare/convert.

The INC 3.10 fixes these calls rely on (GPTQ block inputs and grid, AWQ clip search) live in
`llmctl/quantize/inc_patches.py`.

Examples:
    qmodel = inc_weight_only(model, "gptq", config, windows, progress=print)
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.quantize.inc_patches import awq_fixes, gptq_block_inputs_fix, gptq_rtn_grid
from llmctl.runtime.progress import Progress
from llmctl.runtime.quiet import stdout_to_stderr


def calibration_forwards(windows, kv_cache: bool = False):
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
    from llmctl.models.formats.hf import decoder_layers

    absorb = {}
    layers = decoder_layers(model, required=False)
    if not layers:
        raise LlmctlError(
            f"TEQ here supports LLaMA-style models (got {model.config.model_type})",
            hint="use --algo rtn, gptq or awq for this architecture",
        )
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}"
        if not all(hasattr(layer, a) for a in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")):
            raise LlmctlError(
                f"TEQ here supports LLaMA-style models (got {model.config.model_type})",
                hint="use --algo rtn, gptq or awq for this architecture",
            )
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
    if (
        layers is None
        or not hasattr(layers[0], "input_layernorm")
        or not hasattr(layers[0], "mlp")
        or not hasattr(layers[0].mlp, "up_proj")
    ):
        return {}
    pairs = {
        "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.up_proj": ("mlp.down_proj",),
    }
    cfg = model.config
    if getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) == cfg.num_attention_heads:
        pairs["self_attn.v_proj"] = ("self_attn.o_proj",)
    return pairs


def teq_train_fn(windows, steps: int, lr: float, progress: Progress | None = None):
    """TEQ's training of the channel scales: Adam on the LM loss over the calibration windows, `steps` steps.

    INC's TEQ trains the whole model at once (not block by block), so its progress counts steps, ~10 lines in all.
    """
    import torch

    from llmctl.compress.progress import BlockETA

    def train(model):
        alphas = (
            [p for p in model._trained_alphas.values()]
            if hasattr(model, "_trained_alphas")
            else [p for p in model.parameters() if p.requires_grad]
        )
        opt = torch.optim.Adam(alphas, lr=lr)
        model.train()
        eta = BlockETA(progress, "teq", steps, unit="step", every=max(1, steps // 10))
        for step in range(steps):
            eta.start(step)
            x = windows[step % len(windows)]
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        eta.done()
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
        return GPTQConfig(
            **common,
            act_order=g["act_order"],
            true_sequential=g["true_sequential"],
            percdamp=g["percdamp"],
            block_size=gptq_block(cfg),
            use_mse_search=g["mse_search"],
        )
    if algo == "awq":
        a = cfg["awq"]
        return AWQConfig(
            **common,
            use_auto_scale=a["auto_scale"],
            use_auto_clip=a["auto_clip"],
            absorb_layer_dict=awq_absorb_dict(model),
        )
    if algo == "teq":
        return TEQConfig(**common, absorb_to_layer=llama_absorb_map(model), folding=True)
    if algo == "autoround":
        try:
            import auto_round  # noqa: F401
        except ImportError as exc:
            raise LlmctlError("autoround needs the auto-round package", hint="pip install auto-round==0.16.1") from exc
        from neural_compressor.torch.quantization import AutoRoundConfig

        r = cfg["autoround"]
        return AutoRoundConfig(
            **common,
            iters=r["iters"],
            lr=r["lr"],
            batch_size=1,
            amp=False,
            nsamples=cfg["calib"]["samples"],
            seqlen=cfg["calib"]["seqlen"],
        )
    raise LlmctlError(f"unknown INC weight-only algorithm {algo!r}")


def inc_weight_only(model, algo: str, cfg: dict, windows: list, progress: Progress | None = None):
    """Quantize model in place with INC's prepare/convert; returns the quantized model."""
    import torch
    from neural_compressor.torch.quantization import convert, prepare

    qc = inc_config(algo, cfg, model)
    with stdout_to_stderr():
        if algo == "rtn":
            return convert(prepare(model, qc))
        if algo in ("gptq", "autoround"):
            q = prepare(model, qc)
            with gptq_rtn_grid(algo == "gptq" and cfg["gptq"]["rtn_grid"]), gptq_block_inputs_fix():
                calibration_forwards(windows, kv_cache=algo == "autoround")(q)
                return convert(q)
        q = prepare(model, qc, example_inputs=windows[0])
        if algo == "teq":
            with torch.enable_grad():
                teq_train_fn(windows, cfg["teq"]["steps"], cfg["teq"]["lr"], progress)(q)
            return convert(q)
        calibration_forwards(windows)(q)
        with awq_fixes(progress):
            return convert(q)


def save_weight_only(qmodel, tokenizer, dest: Path, algo: str, config: dict) -> tuple[str, dict]:
    """Save an INC weight-only model (rtn/gptq/awq/teq) in the asked layout; return (format, layout facts).

    Its modules first get their exact float32 weights (llmctl.models.formats.woq.exact_weights), so the perplexity
    measured on it afterwards is the saved model's in every layout.
    """
    from llmctl.models.formats import compressed_tensors, inc
    from llmctl.models.formats.woq import WoqModel, exact_weights

    exact_weights(qmodel)
    if config["save_format"] == "inc":
        inc.save(qmodel, tokenizer, dest, act_order=algo == "gptq" and config["gptq"]["act_order"])
        return "inc-woq", {"layout": "neural-compressor"}
    return "compressed-tensors", compressed_tensors.save(WoqModel.from_inc_model(qmodel), tokenizer, dest)
