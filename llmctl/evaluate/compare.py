"""`llmctl eval compare`: the same tasks on several models (or their stored results), as a table and a PNG.

Examples:
    table = compare(["base", "base-gptq"], ["hellaswag"], config, from_registry=True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from llmctl.errors import LlmctlError, UsageError
from llmctl.evaluate.service import run_eval


def compare(
    models: list[str],
    tasks: list[str],
    config: dict,
    *,
    from_registry: bool = False,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate several models on the same tasks (or read their stored metrics) → {columns, rows}.

    Examples:
        compare(["base", "base-gptq"], ["hellaswag"], config)["rows"][0]["metrics"]
    """
    from llmctl.models.registry import Registry

    if len(models) < 1:
        raise UsageError(
            "eval compare needs at least one model", hint="e.g. llmctl eval compare M1 M2 --tasks hellaswag"
        )
    rows = []
    for model in models:
        if from_registry:
            entry = Registry().get(model)
            metrics = {k: v for k, v in entry.metrics.items() if k.split(".", 1)[0] in tasks}
            missing = [t for t in tasks if not any(k.startswith(t + ".") for k in metrics)]
            if missing:
                raise LlmctlError(
                    f"model {model!r} has no stored results for {', '.join(missing)}",
                    hint=f"run `llmctl eval --model {model} --tasks {','.join(missing)}` first, "
                    "or drop --from-registry",
                )
        else:
            if progress:
                progress(f"[{len(rows) + 1}/{len(models)}] {model}")
            metrics = run_eval(model, tasks, config, command=command, progress=progress).metrics
        rows.append({"model": model, "metrics": metrics})
    columns = []
    for row in rows:
        for key in row["metrics"]:
            if key not in columns:
                columns.append(key)
    columns.sort(key=lambda k: (tasks.index(k.split(".", 1)[0]) if k.split(".", 1)[0] in tasks else 99, k))
    return {"tasks": tasks, "columns": columns, "rows": rows}


def plot_compare(table: dict, path: Path) -> Path:
    """A PNG bar chart: one panel per metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmctl.paths import atomic_file

    columns = table["columns"]
    if not columns:
        raise LlmctlError("nothing to plot: the models have no metrics for these tasks")
    models = [r["model"] for r in table["rows"]]
    n = len(columns)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, col in enumerate(columns):
        ax = axes[i // ncols][i % ncols]
        values = [r["metrics"].get(col, float("nan")) for r in table["rows"]]
        bars = ax.bar(range(len(models)), values, color=[colors[j % len(colors)] for j in range(len(models))])
        ax.set_title(col, fontsize=10)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        for bar, v in zip(bars, values):
            if v == v:
                ax.annotate(
                    f"{v:.3g}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.tight_layout()
    with atomic_file(path, mode="wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path
