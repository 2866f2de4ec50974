"""`llmctl quantize`: weight-only and int8 quantization with neural-compressor 3.x, OpenVINO or bitsandbytes.

Backends and what each saves (each in a format of `llmctl.models.formats`, loaded back by name everywhere); with no
backend asked for, rtn/gptq/awq run on llmctl's own cores and the rest on the one backend that has them:
- llmctl (llmctl.compress's cores, `llmctl.quantize.cores`): rtn, gptq, awq → compressed-tensors pack-quantized.
- inc (neural-compressor 3.x torch API): rtn, gptq, awq, teq → compressed-tensors pack-quantized folder (format
  "compressed-tensors": transformers and vLLM load it; `save_format: inc` keeps INC's `save` layout, "inc-woq");
  autoround → auto-round's HF folder ("inc-woq").
- torch int8 (W8A8, dynamic activations): dynamic-int8 and smoothquant (SmoothQuant smoothing folded
  into the norms, then torch dynamic int8 Linear) → safetensors int8 weights, format "inc-int8".
- openvino (optimum-intel + NNCF weight compression, int4/int8, AWQ, scale estimation) → OpenVINO IR.
- bnb (bitsandbytes NF4/FP4/int8, applied at load time) → HF folder with the bitsandbytes config.

Examples:
    result = quantize("smollm2-135m-instruct", "smol-gptq4", config, command="llmctl quantize ...")
    result["perplexity_after"], result["size_mb"]
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmctl.paths import dir_size_mb, temp_prefix, weights_size_mb
from llmctl.quantize.support import (
    CALIB_ALGOS,
    SUPPORTED,
    WEIGHT_ONLY,
    algo_for,
    backend_for,
    check_linear_layers,
    hf_dir_of,
)
from llmctl.runtime.progress import Progress, quiet
from llmctl.runtime.quiet import stdout_to_stderr


def quantize_in_memory(loaded, algo: str, cfg: dict, windows: list, progress: Progress | None = None):
    """Quantize a loaded fp32 model (inc and int8 backends); returns (model, facts)."""
    from llmctl.models.formats.int8 import dynamic_int8
    from llmctl.quantize.inc import inc_weight_only
    from llmctl.quantize.smoothquant import smooth_llama

    facts: dict = {}
    model = loaded.model
    if algo in SUPPORTED["inc"] and algo not in ("smoothquant", "dynamic-int8"):
        return inc_weight_only(model, algo, cfg, windows, progress), facts
    if algo == "smoothquant":
        facts.update(smooth_llama(model, windows, cfg["smoothquant"]["alpha"]))
    return dynamic_int8(model), facts


@dataclass
class _Job:
    """One quantization run: the loaded source, its calibration/held-out data and where to write."""

    loaded: object
    algo: str
    config: dict
    data: object
    tmp: Path
    say: Progress
    name: str = ""  # the entry's name (OpenVINO stages its HF source beside it)

    def perplexity(self, model) -> float | None:
        from llmctl.compress.calibration import held_out_perplexity

        if not self.data.eval_text:
            return None
        self.say("perplexity after")
        return held_out_perplexity(model, self.loaded.tokenizer, self.data.eval_text, self.config["eval"]["seqlen"])


def _run_inc(job: _Job) -> tuple[str, float | None, dict]:
    """INC weight-only or int8: quantize in memory, score, save; returns (format, ppl after, facts)."""
    from llmctl.models.formats import int8
    from llmctl.quantize.inc import save_weight_only

    job.say(f"quantizing with {job.algo} ({job.config['bits']}-bit)")
    qmodel, facts = quantize_in_memory(job.loaded, job.algo, job.config, job.data.windows, job.say)
    facts["_seconds"] = time.perf_counter()
    tokenizer = job.loaded.tokenizer
    if job.algo in ("smoothquant", "dynamic-int8"):
        ppl_after = job.perplexity(qmodel)
        int8.save(qmodel, tokenizer, job.tmp)
        return "inc-int8", ppl_after, facts
    if job.algo == "autoround":  # INC's save cannot write AutoRound's mapping; its HF export loads anywhere
        ppl_after = job.perplexity(qmodel)
        with stdout_to_stderr():
            qmodel.save_pretrained(job.tmp, safe_serialization=True)
        tokenizer.save_pretrained(job.tmp)
        return "inc-woq", ppl_after, facts
    fmt, layout = save_weight_only(qmodel, tokenizer, job.tmp, job.algo, job.config)
    facts.update(layout)
    return fmt, job.perplexity(qmodel), facts


def _run_llmctl(job: _Job) -> tuple[str, float | None, dict]:
    """llmctl's own cores (llmctl.quantize.cores): quantize in place, score, save as compressed-tensors."""
    from llmctl.quantize.cores import quantize_with_cores, save_layers

    job.say(f"quantizing with {job.algo} ({job.config['bits']}-bit, llmctl's cores)")
    layers = quantize_with_cores(job.loaded.model, job.algo, job.config, job.data.windows, job.say)
    seconds = time.perf_counter()
    facts = save_layers(job.loaded.model, layers, job.loaded.tokenizer, job.tmp)
    facts["_seconds"] = seconds
    return "compressed-tensors", job.perplexity(job.loaded.model), facts


def _run_openvino(job: _Job) -> tuple[str, float | None, dict]:
    from llmctl.models.formats import openvino
    from llmctl.quantize.openvino import openvino_compress

    openvino.require_openvino()
    tokenizer = job.loaded.tokenizer
    texts = [tokenizer.decode(w[0]) for w in job.data.windows] if job.data.windows else None
    job.say(f"exporting to OpenVINO with {job.config['bits']}-bit weight compression")
    src_root = job.tmp.parent / f"{temp_prefix(job.tmp.parent / job.name)}src"
    try:
        openvino_compress(hf_dir_of(job.loaded, src_root), job.tmp, job.config, texts)
    finally:
        shutil.rmtree(src_root, ignore_errors=True)
    tokenizer.save_pretrained(job.tmp)
    seconds = time.perf_counter()
    return "openvino", job.perplexity(openvino.load(str(job.tmp), None, "cpu")[0]), {"_seconds": seconds}


def _run_bnb(job: _Job) -> tuple[str, float | None, dict]:
    """bitsandbytes: weights stay full precision on disk and are quantized when loaded."""
    from llmctl.models.formats import bnb, write_marker

    job.loaded.model.save_pretrained(job.tmp, safe_serialization=True)
    job.loaded.tokenizer.save_pretrained(job.tmp)
    facts = {"bnb_config": bnb.bnb_config_dict(job.config["bnb"], job.algo), "_seconds": time.perf_counter()}
    write_marker(job.tmp, "bnb", bnb_config=facts["bnb_config"])  # the loader reads it; publish rewrites it
    job.say("perplexity after (quantizing at load time)")
    return "bnb", job.perplexity(bnb.load(str(job.tmp), None, "cpu")[0]), facts


# backend → how it runs and saves: (format, perplexity after, facts with "_seconds" when the work ended)
_RUNS = {"inc": _run_inc, "llmctl": _run_llmctl, "openvino": _run_openvino, "bnb": _run_bnb}


def estimate(model: str, config: dict) -> dict:
    """What `--dry-run` shows: the estimated peak memory of quantizing `model` (weights, calibration, Hessians).

    Examples:
        estimate("smollm2-135m-instruct", resolve_config("quantize"))["peak_bytes"]
    """
    from llmctl.training.estimate import dry_run_compress

    return dry_run_compress(model, config, "quantize")


def quantize(
    model: str,
    name: str,
    config: dict,
    command: str = "",
    force: bool = False,
    progress: Progress | None = None,
    known_ppl_before: float | None = None,
) -> dict:
    """Quantize a registry model, save it in its library's format, register it with lineage and metrics.

    Examples:
        quantize("smollm2-135m-instruct", "smol-rtn4", resolve_config("quantize", sets=["algo=rtn"]))
    """
    from llmctl.compress.recipe import load_source
    from llmctl.models.registry import Registry

    say = progress or quiet
    reservation = Registry().reserve(name, force)
    backend, algo = backend_for(config), algo_for(config)
    if config["max_loss"] is not None:
        from llmctl.quantize.tune import tune

        return tune(model, reservation, config, command=command, progress=progress)
    src = load_source(
        model,
        config,
        "quantize",
        need_calib=_needs_calib(config, backend, algo),
        say=say,
        check=lambda loaded: _check_layout(loaded, config, backend, algo),
        known_ppl_before=known_ppl_before,
    )
    started = time.perf_counter()
    with reservation.staging() as tmp:
        fmt, ppl_after, facts = _RUNS[backend](_Job(src.loaded, algo, config, src.data, tmp, say, name))
        meta = _meta(config, backend, algo, src, tmp, facts.pop("_seconds") - started, ppl_after, facts)
        marker = {"bnb_config": facts["bnb_config"]} if fmt == "bnb" else {}
        src.publish(reservation, tmp, fmt, config, command, ppl_after, meta, **marker)
    ppl_before = src.ppl_before
    rel = round(ppl_after / ppl_before - 1, 4) if ppl_before and ppl_after else None
    return {
        "name": name,
        "format": fmt,
        "parent": src.parent,
        "path": str(reservation.path),
        "relative_ppl_increase": rel,
        **meta,
    }


def _needs_calib(config: dict, backend: str, algo: str) -> bool:
    """Calibrated algorithms, and OpenVINO's data-aware options, read calibration windows."""
    ov = config["openvino"]
    return algo in CALIB_ALGOS or (backend == "openvino" and (ov["awq"] or ov["scale_estimation"]))


def _check_layout(loaded, config: dict, backend: str, algo: str) -> None:
    """Refuse a model the asked save layout cannot hold before any data is read."""
    if backend in ("inc", "llmctl") and algo in WEIGHT_ONLY and config["save_format"] == "compressed-tensors":
        check_linear_layers(loaded.model)


def _meta(config: dict, backend: str, algo: str, src, tmp: Path, seconds: float, ppl_after, facts: dict) -> dict:
    """The registry entry's facts: settings, data, time (s), sizes (MB) and perplexity before/after."""
    meta = {
        "algo": algo,
        "backend": backend,
        "bits": config["bits"],
        "group_size": config["group_size"],
        "sym": config["sym"],
        **src.data.describe(),
        "quantize_seconds": round(seconds, 1),
        "size_mb": dir_size_mb(tmp),
        "weights_mb": weights_size_mb(tmp),
        "perplexity_before": src.ppl_before,
        "perplexity_after": ppl_after,
        **facts,
    }
    if algo == "gptq":
        meta["gptq"] = config["gptq"]
    if backend == "openvino":
        meta["openvino"] = config["openvino"]
    return meta
