"""`llmctl quantize`: a smaller model from a registry model, saved in its library's format and registered.

Examples:
    llmctl quantize --model smollm2-135m-instruct --algo gptq --bits 4 --group-size 128 \
        --calib-data ../shared/data/wikitext-2-raw/wiki.test.raw --name smol-gptq4
    llmctl quantize --model M --backend openvino --bits 8 --name M-ov8
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli._common import (
    CALIB_OPTIONS,
    DEFAULT_MODEL_NAME,
    CalibDataOpt,
    CalibSamplesOpt,
    CalibSeqlenOpt,
    DryRunOpt,
    EvalDataOpt,
    EvalTokensOpt,
    ForceOpt,
    JsonOpt,
    ModelOpt,
    NameOpt,
    ProfileOpt,
    SeedOpt,
    SetOpt,
    command_line,
    emit_json,
    err,
    resolve,
    schema_options,
)

# Option → profile key: every value given here is checked by llmctl/schemas/quantize.py.
OPTIONS = {
    **CALIB_OPTIONS,
    "act_order": "gptq.act_order",
    "true_sequential": "gptq.true_sequential",
    "alpha": "smoothquant.alpha",
    "awq": "openvino.awq",
    "scale_estimation": "openvino.scale_estimation",
}


@schema_options("quantize", OPTIONS)
def quantize(
    ctx: typer.Context,
    name: NameOpt,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    backend: Annotated[str | None, typer.Option("--backend")] = None,
    algo: Annotated[str | None, typer.Option("--algo")] = None,
    bits: Annotated[int | None, typer.Option("--bits")] = None,
    group_size: Annotated[int | None, typer.Option("--group-size")] = None,
    sym: Annotated[bool | None, typer.Option("--sym/--asym")] = None,
    calib_data: CalibDataOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seqlen: CalibSeqlenOpt = None,
    seed: SeedOpt = None,
    eval_data: EvalDataOpt = None,
    eval_tokens: EvalTokensOpt = None,
    act_order: Annotated[bool | None, typer.Option("--act-order/--no-act-order")] = None,
    true_sequential: Annotated[bool | None, typer.Option("--true-sequential/--no-true-sequential")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha")] = None,
    awq: Annotated[bool | None, typer.Option("--awq")] = None,
    scale_estimation: Annotated[bool | None, typer.Option("--scale-estimation")] = None,
    max_loss: Annotated[float | None, typer.Option("--max-loss")] = None,
    max_trials: Annotated[int | None, typer.Option("--max-trials")] = None,
    save_format: Annotated[str | None, typer.Option("--save-format")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Quantize a model (INC RTN/GPTQ/AWQ/TEQ/AutoRound, int8, OpenVINO, bitsandbytes) and register it.

    Examples:
        llmctl quantize --model smollm2-135m-instruct --algo gptq --bits 4 --calib-data FILE --name smol-gptq4
        llmctl quantize --model M --algo rtn --bits 8 --name M-rtn8
        llmctl quantize --model M --algo smoothquant --alpha 0.5 --calib-data FILE --name M-sq
        llmctl quantize --model M --backend openvino --bits 4 --awq --scale-estimation --calib-data FILE --name M-ov4
        llmctl quantize --model M --algo gptq --bits 4 --max-loss 0.01 --max-trials 10 --calib-data FILE --name M-tuned
    """
    from llmctl.quantize import quantize as run

    # OpenVINO 8-bit is per channel unless a group size is asked for (a flag-level default, as before)
    extra = {"group_size": -1} if bits == 8 and group_size is None and backend == "openvino" else None
    from llmctl.quantize.service import estimate

    config = resolve(ctx, "quantize", OPTIONS, extra, estimate=lambda c: estimate(model, c))
    with err.status("Quantizing …") as status:
        result = run(
            model,
            name,
            config,
            command=command_line(),
            force=force,
            progress=lambda msg: status.update(f"Quantizing: {msg} …"),
        )
    if json_out:
        emit_json(result)
        return
    _render(result, model)


def _render(result: dict, model: str) -> None:
    from rich.table import Table

    if result.get("trials"):
        table = Table(title="accuracy-aware trials", title_justify="left")
        for col in ("trial", "config", "perplexity", "rel. increase", "within max-loss"):
            table.add_column(col)
        for t in result["trials"]:
            table.add_row(
                str(t["trial"]),
                t["label"],
                f"{t['perplexity']:.3f}",
                f"{t['relative_increase']:+.2%}",
                "yes" if t["ok"] else "no",
            )
        err.print(table)
    before, after = result.get("perplexity_before"), result.get("perplexity_after")
    ppl = f", perplexity {before:.3f} → {after:.3f}" if before and after else ""
    group = f" g{result['group_size']}" if result.get("group_size", -1) > 0 and result["bits"] < 8 else ""
    err.print(
        f"Registered {result['name']} ({result['format']}, {result['algo']} {result['bits']}-bit{group}) "
        f"from {result['parent'] or model}: {result['size_mb']} MB on disk{ppl}, {result['quantize_seconds']} s"
    )
