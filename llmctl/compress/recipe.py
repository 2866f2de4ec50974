"""The setup half shared by quantize, its accuracy-aware tuning and prune: seed, load the full-precision parent,
check it, read calibration and held-out data, score the parent once. The save half (stage, config, entry,
publish) is `llmctl.models.publish`.

Examples:
    src = load_source("smollm2-135m-instruct", config, "prune", need_calib=True, say=print)
    src.loaded.model, src.data.windows, src.ppl_before
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmctl.runtime.progress import Progress


@dataclass
class Source:
    """The parent of a compression run: loaded in fp32 on CPU, its calibration/held-out data, its perplexity."""

    loaded: object
    data: object
    ppl_before: float | None

    @property
    def parent(self) -> str | None:
        """The parent's registry name (None for a folder that is not registered)."""
        return self.loaded.resolved.name

    def publish(self, reservation, staged, fmt: str, config: dict, command: str, ppl_after, meta: dict, **facts):
        """Register the staged result (llmctl.models.publish) with this parent as lineage and its held-out
        perplexity as the entry's metric."""
        from llmctl.models.publish import publish_model

        metrics = {"heldout.perplexity": ppl_after} if ppl_after is not None else {}
        return publish_model(
            reservation,
            staged,
            fmt,
            parents=[self.parent],
            config=config,
            command=command,
            metrics=metrics,
            meta=meta,
            **facts,
        )


def load_source(
    model: str,
    config: dict,
    purpose: str,
    *,
    need_calib: bool,
    say: Progress,
    check: Callable[[object], None] | None = None,
    baseline: bool = True,
    known_ppl_before: float | None = None,
) -> Source:
    """Seed with calib.seed, load `model` for `purpose`, run `check(loaded)` (refusals before data is read),
    prepare config's calib/eval data and (with `baseline`) the parent's held-out perplexity, unless a caller
    that scored the same parent on the same text passes it as `known_ppl_before`.

    Examples:
        load_source("tiny", config, "quantize", need_calib=False, say=print, known_ppl_before=12.3)
    """
    import torch

    from llmctl.compress.calibration import parent_perplexity, prepare_data
    from llmctl.models.loading import load_full_precision

    c, ev = config["calib"], config["eval"]
    from llmctl.training.estimate import compress_check

    compress_check(model, config, purpose)  # refused before loading when the estimated peak does not fit
    torch.manual_seed(c["seed"])
    say(f"loading {model}")
    loaded = load_full_precision(model, purpose)
    if check is not None:
        check(loaded)
    data = prepare_data(
        loaded.tokenizer,
        c["data"],
        c["samples"],
        c["seqlen"],
        c["seed"],
        ev["data"],
        ev["tokens"],
        need_calib=need_calib,
    )
    ppl = known_ppl_before
    if baseline and ppl is None:
        ppl = parent_perplexity(loaded, data.eval_text, ev["seqlen"], say)
    return Source(loaded, data, ppl)
