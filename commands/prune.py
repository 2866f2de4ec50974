"""`llmctl prune`: sparse (unstructured, N:M) or structurally smaller models, registered with lineage.

Examples:
    llmctl prune --model smollm2-135m-instruct --method wanda --sparsity 0.5 --calib-data FILE --name smol-w50
    llmctl prune --model M --structure heads --ratio 0.25 --calib-data FILE --name M-heads
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

# Option → profile key: every value given here is checked by llmctl/schemas/prune.py.
OPTIONS = dict(CALIB_OPTIONS)  # the rest are named like their keys (see schema_options)


@schema_options("prune", OPTIONS)
def prune(
    ctx: typer.Context,
    name: NameOpt,
    model: ModelOpt = DEFAULT_MODEL_NAME,
    method: Annotated[str | None, typer.Option("--method")] = None,
    sparsity: Annotated[float | None, typer.Option("--sparsity")] = None,
    pattern: Annotated[str | None, typer.Option("--pattern")] = None,
    structure: Annotated[str | None, typer.Option("--structure")] = None,
    ratio: Annotated[float | None, typer.Option("--ratio")] = None,
    true_sequential: Annotated[bool | None, typer.Option("--true-sequential/--no-true-sequential")] = None,
    calib_data: CalibDataOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_seqlen: CalibSeqlenOpt = None,
    seed: SeedOpt = None,
    eval_data: EvalDataOpt = None,
    eval_tokens: EvalTokensOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Prune a model (magnitude, Wanda, SparseGPT; N:M; heads/channels) and register it.

    Examples:
        llmctl prune --model smollm2-135m-instruct --method wanda --sparsity 0.5 --calib-data FILE --name smol-w50
        llmctl prune --model M --method sparsegpt --pattern 2:4 --calib-data FILE --name M-sgpt24
        llmctl prune --model M --method wanda --sparsity 0.5 --true-sequential --calib-data FILE --name M-w50s
        llmctl prune --model M --method magnitude --sparsity 0.5 --name M-mag50
        llmctl prune --model M --structure channels --ratio 0.25 --calib-data FILE --name M-ch25
    """
    from llmctl.prune.service import estimate
    from llmctl.prune.service import prune as run

    config = resolve(ctx, "prune", OPTIONS, estimate=lambda c: estimate(model, c))
    with err.status("Pruning …") as status:
        result = run(
            model,
            name,
            config,
            command=command_line(),
            force=force,
            progress=lambda msg: status.update(f"Pruning: {msg} …"),
        )
    if json_out:
        emit_json(result)
        return
    if result["structure"]:
        what = f"{result['structure']} ratio {result['ratio']}"
    else:
        what = f"{result['method']} {result['pattern'] or result['sparsity_target']}"
    before, after = result.get("perplexity_before"), result.get("perplexity_after")
    ppl = f", perplexity {before:.3f} → {after:.3f}" if before and after else ""
    err.print(
        f"Registered {result['name']} ({what}) from {result['parent'] or model}: sparsity "
        f"{result['overall_sparsity']:.1%}, parameters {result['parameters_before']:,} → "
        f"{result['parameters_after']:,}{ppl}"
    )
    layers = result["per_layer_sparsity"]
    if layers:
        err.print("per-layer sparsity: " + " ".join(f"{k}:{v:.2f}" for k, v in layers.items()))
