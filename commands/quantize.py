"""`llmctl quantize`: a smaller model from a registry model, saved in its library's format and registered.

Examples:
    llmctl quantize --model smollm2-135m-instruct --algo gptq --bits 4 --group-size 128 \
        --calib-data ../shared/data/wikitext-2-raw/wiki.test.raw --name smol-gptq4
    llmctl quantize --model M --backend openvino --bits 8 --name M-ov8
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli._common import DryRunOpt, ForceOpt, JsonOpt, ProfileOpt, SetOpt, command_line, emit_json, err, resolve


def quantize(
    name: Annotated[str, typer.Option("--name", "-n", help="Registry name of the quantized model.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name or path of the full-precision model.")] = "smollm2-135m-instruct",
    backend: Annotated[Optional[str], typer.Option("--backend", help="inc (neural-compressor), openvino or bnb.")] = None,
    algo: Annotated[Optional[str], typer.Option("--algo", help="inc: rtn|gptq|awq|teq|autoround|smoothquant|dynamic-int8; bnb: nf4|fp4|int8.")] = None,
    bits: Annotated[Optional[int], typer.Option("--bits", help="Weight bits: 2, 3, 4 or 8 (as the backend supports).")] = None,
    group_size: Annotated[Optional[int], typer.Option("--group-size", help="Weights per quantization group; -1 = per channel.")] = None,
    sym: Annotated[Optional[bool], typer.Option("--sym/--asym", help="Symmetric or asymmetric (zero-point) weight grid.")] = None,
    calib_data: Annotated[Optional[str], typer.Option("--calib-data", help="Calibration text file, JSONL or registry data name.")] = None,
    calib_samples: Annotated[Optional[int], typer.Option("--calib-samples", help="Calibration windows.")] = None,
    calib_seqlen: Annotated[Optional[int], typer.Option("--calib-seqlen", help="Tokens per calibration window.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for picking calibration windows.")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="Held-out text for perplexity (default: tail of the calibration data).")] = None,
    eval_tokens: Annotated[Optional[int], typer.Option("--eval-tokens", help="Held-out tokens to score (0 = skip perplexity).")] = None,
    act_order: Annotated[Optional[bool], typer.Option("--act-order/--no-act-order", help="GPTQ: columns by decreasing Hessian diagonal.")] = None,
    true_sequential: Annotated[Optional[bool], typer.Option("--true-sequential/--no-true-sequential", help="GPTQ: sub-layers in order within a block.")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="SmoothQuant migration strength in [0, 1].")] = None,
    awq: Annotated[Optional[bool], typer.Option("--awq", help="OpenVINO: data-aware AWQ (needs --calib-data).")] = None,
    scale_estimation: Annotated[Optional[bool], typer.Option("--scale-estimation", help="OpenVINO: data-aware scale estimation.")] = None,
    max_loss: Annotated[Optional[float], typer.Option("--max-loss", help="Accuracy-aware: largest relative perplexity increase (0.01 = 1%).")] = None,
    max_trials: Annotated[Optional[int], typer.Option("--max-trials", help="Accuracy-aware: configurations to try at most.")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Quantize a model (INC RTN/GPTQ/AWQ/TEQ/AutoRound, int8, OpenVINO, bitsandbytes) and register it.

    Examples:
        llmctl quantize --model smollm2-135m-instruct --algo gptq --bits 4 --group-size 128 --calib-data wiki.test.raw --name smol-gptq4
        llmctl quantize --model M --algo rtn --bits 8 --name M-rtn8
        llmctl quantize --model M --algo smoothquant --alpha 0.5 --calib-data FILE --name M-sq
        llmctl quantize --model M --backend openvino --bits 4 --awq --scale-estimation --group-size 64 --calib-data FILE --name M-ov4
        llmctl quantize --model M --algo gptq --bits 4 --max-loss 0.01 --max-trials 10 --calib-data FILE --name M-tuned
    """
    from llmctl.quantize import quantize as run

    explicit = {
        "backend": backend, "algo": algo, "bits": bits, "group_size": group_size, "sym": sym,
        "calib.data": calib_data, "calib.samples": calib_samples, "calib.seqlen": calib_seqlen, "calib.seed": seed,
        "eval.data": eval_data, "eval.tokens": eval_tokens, "gptq.act_order": act_order,
        "gptq.true_sequential": true_sequential, "smoothquant.alpha": alpha, "openvino.awq": awq,
        "openvino.scale_estimation": scale_estimation, "max_loss": max_loss, "max_trials": max_trials,
    }
    if bits == 8 and group_size is None and backend == "openvino":
        explicit["group_size"] = -1
    config = resolve("quantize", profile, set_, explicit, dry_run, json_out)
    with err.status("Quantizing …") as status:
        result = run(model, name, config, command=command_line(), force=force,
                     progress=lambda msg: status.update(f"Quantizing: {msg} …"))
    if json_out:
        emit_json(result)
        return
    _render(result)


def _render(result: dict) -> None:
    from rich.table import Table

    if result.get("trials"):
        table = Table(title="accuracy-aware trials", title_justify="left")
        for col in ("trial", "config", "perplexity", "rel. increase", "within max-loss"):
            table.add_column(col)
        for t in result["trials"]:
            table.add_row(str(t["trial"]), t["label"], f"{t['perplexity']:.3f}", f"{t['relative_increase']:+.2%}",
                          "yes" if t["ok"] else "no")
        err.print(table)
    before, after = result.get("perplexity_before"), result.get("perplexity_after")
    ppl = f", perplexity {before:.3f} → {after:.3f}" if before and after else ""
    group = f" g{result['group_size']}" if result.get("group_size", -1) > 0 and result["bits"] < 8 else ""
    err.print(f"Registered {result['name']} ({result['format']}, {result['algo']} {result['bits']}-bit{group}) "
              f"from {result['parent']}: {result['size_mb']} MB on disk{ppl}, {result['quantize_seconds']} s")
