"""`llmctl prune`: sparse (unstructured, N:M) or structurally smaller models, registered with lineage.

Examples:
    llmctl prune --model smollm2-135m-instruct --method wanda --sparsity 0.5 --calib-data FILE --name smol-w50
    llmctl prune --model M --structure heads --ratio 0.25 --calib-data FILE --name M-heads
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmctl.cli._common import (
    DEFAULT_MODEL_NAME,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    ModelOpt,
    ProfileOpt,
    SetOpt,
    choice_option,
    command_line,
    emit_json,
    err,
    resolve,
    schema_field,
)

# Option → profile key: every value given here is checked by llmctl/schemas/prune.py.
OPTIONS = {
    "method": "method",
    "sparsity": "sparsity",
    "pattern": "pattern",
    "structure": "structure",
    "ratio": "ratio",
    "true_sequential": "true_sequential",
    "calib_data": "calib.data",
    "calib_samples": "calib.samples",
    "calib_seqlen": "calib.seqlen",
    "seed": "calib.seed",
    "eval_data": "eval.data",
    "eval_tokens": "eval.tokens",
}


def prune(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="Registry name of the pruned model.")],
    model: ModelOpt = DEFAULT_MODEL_NAME,
    method: Annotated[
        str | None, choice_option("--method", field=schema_field("prune", "method"), help="Pruning criterion")
    ] = None,
    sparsity: Annotated[float | None, typer.Option("--sparsity", help="Share of zero weights, in (0, 1).")] = None,
    pattern: Annotated[
        str | None, typer.Option("--pattern", help="N:M sparsity: N non-zeros per M inputs (2:4, 4:8).")
    ] = None,
    structure: Annotated[
        str | None, choice_option("--structure", field=schema_field("prune", "structure"), help="Remove whole units")
    ] = None,
    ratio: Annotated[
        float | None, typer.Option("--ratio", help="Structured: share of heads/channels to remove.")
    ] = None,
    true_sequential: Annotated[
        bool | None,
        typer.Option(
            "--true-sequential/--no-true-sequential",
            help="Wanda/SparseGPT: score each linear after the block's earlier ones were pruned (one pass, faster).",
        ),
    ] = None,
    calib_data: Annotated[
        str | None, typer.Option("--calib-data", help="Calibration text file, JSONL or registry data name.")
    ] = None,
    calib_samples: Annotated[int | None, typer.Option("--calib-samples", help="Calibration windows.")] = None,
    calib_seqlen: Annotated[int | None, typer.Option("--calib-seqlen", help="Tokens per calibration window.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for picking calibration windows.")] = None,
    eval_data: Annotated[
        str | None,
        typer.Option("--eval-data", help="Held-out text for perplexity (default: tail of the calibration data)."),
    ] = None,
    eval_tokens: Annotated[
        int | None, typer.Option("--eval-tokens", help="Held-out tokens to score (0 = skip perplexity).")
    ] = None,
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
    from llmctl.prune.service import prune as run

    config = resolve(ctx, "prune", OPTIONS)
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
