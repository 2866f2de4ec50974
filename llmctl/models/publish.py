"""The save half of every command that makes a model from another (quantize, tune, prune, merge-lora,
export --name, finetune, pretrain): with the files staged, write the run's config, build the registry entry
with its lineage and publish it in one step.

The setup half of the compression commands (load, calibration data, baseline perplexity) is
`llmctl.compress.recipe`; the name is reserved before any work (`Registry().reserve`), so a taken name is
refused at once, not after an hour of work.

Examples:
    reservation = Registry().reserve("smol-w50", force=False)
    with reservation.staging() as tmp:
        model.save_pretrained(tmp)
        publish_model(reservation, tmp, "hf", parents=["smollm2-135m-instruct"], config=config, command=cmd)
"""

from __future__ import annotations

from pathlib import Path


def publish_model(
    reservation,
    staged: Path,
    fmt: str,
    *,
    parents: list[str | None],
    config: dict,
    command: str = "",
    metrics: dict | None = None,
    meta: dict | None = None,
    **marker_facts,
):
    """Write `config` into the staged folder, register it as `reservation.name` (format `fmt`) and return the
    entry; `parents` may hold None (an unregistered source), left out; `marker_facts` go to the folder's marker.

    Examples:
        publish_model(res, tmp, "bnb", parents=[parent], config=cfg, meta=meta, bnb_config=bnb)
    """
    from llmctl.config.profiles import save_run_config
    from llmctl.models.registry import ModelEntry

    save_run_config(config, staged, command)
    entry = ModelEntry(
        name=reservation.name,
        format=fmt,
        path="",
        parents=[p for p in parents if p],
        command=command,
        profile=config,
        metrics=metrics or {},
        meta=meta or {},
    )
    return reservation.publish(entry, staged, **marker_facts)
