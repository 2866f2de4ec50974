"""The `passkey` task: a number hidden at a depth of filler text, and whether the model retrieves it.

The prompt (after Mohtashami & Jaggi 2023, "Landmark Attention", and LongLoRA's passkey test) is an instruction,
repeated filler sentences with "The pass key is 68042. Remember it. 68042 is the pass key." placed at a depth
(0 = the start of the filler, 1 = its end), and "What is the pass key? The pass key is". Each prompt is exactly
`length` tokens (built from token ids, so no re-tokenization shifts it). A cell (length, depth) holds `samples`
prompts, each with another key. A prompt counts as retrieved when greedy decoding would write the key's tokens
first: one forward pass with the key appended checks that every key token is the argmax (teacher forcing; the
same answer greedy generation gives, without a cache and with logits for the last positions only).

Results: accuracy per (length, depth) — a table and a heat-map PNG — and `passkey.acc`, `passkey.acc@LENGTH`.
Under torchrun the prompts are shared among processes and gathered: the accuracies equal one process's.

Examples:
    res = run_passkey(loaded, config["passkey"], seed=0)
    res["block"]["acc@4096,none"], res["config"]["table"]
    plot_heatmap(res["config"], Path("passkey.png"), title="M")
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from llmctl.errors import LlmctlError

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def make_key(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def cells(pconfig: dict, seed: int) -> list[dict]:
    """Every prompt of the task: {length, depth, sample, key}, in a fixed order (lengths, then depths, samples)."""
    rng = random.Random(seed)
    return [
        {"length": n, "depth": d, "sample": k, "key": make_key(rng, pconfig["digits"])}
        for n in pconfig["context_lengths"]
        for d in pconfig["depths"]
        for k in range(pconfig["samples"])
    ]


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def build(tok, length: int, depth: float, key: str) -> tuple[list[int], list[int]]:
    """(prompt ids, exactly `length` of them; the key's ids as the answer)."""
    intro, filler, needle, question = (
        _ids(tok, INTRO),
        _ids(tok, FILLER),
        _ids(tok, NEEDLE.format(key=key)),
        _ids(tok, QUESTION),
    )
    fill = length - len(intro) - len(needle) - len(question)
    if fill < 0:
        raise LlmctlError(
            f"passkey length {length} is too short for the prompt's fixed parts "
            f"({length - fill} tokens with this tokenizer)",
            hint=f"use --context-lengths of at least {length - fill}",
        )
    stream = (filler * (fill // len(filler) + 1))[:fill]
    at = int(round(depth * fill / len(filler))) * len(filler)  # at a sentence-group boundary
    at = min(at, fill)
    return intro + stream[:at] + needle + stream[at:] + question, _ids(tok, " " + key)


def retrieved(model, prompt: list[int], answer: list[int], device) -> bool:
    """Whether greedy decoding after `prompt` writes `answer` first (one teacher-forced forward pass)."""
    import inspect

    import torch

    x = torch.tensor([prompt + answer[:-1]], device=device)
    want = torch.tensor(answer, device=device)
    keep = len(answer)
    kwargs = {"input_ids": x, "use_cache": False}
    forward = getattr(model, "get_base_model", lambda: model)().forward
    if "logits_to_keep" in inspect.signature(forward).parameters:
        kwargs["logits_to_keep"] = keep  # no length x vocab logits for a long prompt
    with torch.inference_mode():
        logits = model(**kwargs).logits[0, -keep:]
    return bool(torch.equal(logits.argmax(-1), want))


def run_passkey(
    loaded, pconfig: dict, seed: int | None = None, dist=None, progress: Callable[[str], None] | None = None
) -> dict:
    """Score every prompt; the results block (lm-eval's layout) and the table behind the heat-map."""
    todo = cells(pconfig, 0 if seed is None else seed)
    rank, world = (dist.rank, dist.world) if dist is not None and dist.active else (0, 1)
    model, tok = loaded.model, loaded.tokenizer
    if hasattr(model, "eval"):
        model.eval()
    mine: dict[int, bool] = {}
    for done, i in enumerate(range(rank, len(todo), world)):
        c = todo[i]
        prompt, answer = build(tok, c["length"], c["depth"], c["key"])
        mine[i] = retrieved(model, prompt, answer, loaded.device)
        if progress:
            progress(f"passkey {min((done + 1) * world, len(todo))}/{len(todo)} (length {c['length']})")
    if world > 1:
        for part in dist.gather(mine):
            mine.update(part)
    lengths, depths = pconfig["context_lengths"], pconfig["depths"]
    table = [
        [
            sum(mine[i] for i, c in enumerate(todo) if c["length"] == n and c["depth"] == d) / pconfig["samples"]
            for n in lengths
        ]
        for d in depths
    ]
    block: dict = {"alias": "passkey", "acc,none": sum(mine.values()) / len(todo)}
    for j, n in enumerate(lengths):
        block[f"acc@{n},none"] = sum(row[j] for row in table) / len(depths)
    config = {
        "task": "passkey",
        "context_lengths": list(lengths),
        "depths": list(depths),
        "samples": pconfig["samples"],
        "digits": pconfig["digits"],
        "seed": seed,
        "table": table,
        "table_rows": "depths",
        "table_columns": "context_lengths",
    }
    return {"block": block, "config": config}


def metric_names(pconfig: dict) -> set[str]:
    """The metrics the task reports (for checking --fail-under before the run)."""
    return {"acc", *(f"acc@{n}" for n in pconfig["context_lengths"])}


def plot_heatmap(config: dict, path: Path, title: str = "passkey retrieval") -> Path:
    """A PNG heat-map: depth (rows) x context length (columns), accuracy 0..1 written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmctl.paths import atomic_file

    table, lengths, depths = config["table"], config["context_lengths"], config["depths"]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.5 * len(depths) + 1.8))
    im = ax.imshow(table, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth of the key")
    for r, row in enumerate(table):
        for c, value in enumerate(row):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"accuracy ({config['samples']} per cell)")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_file(Path(path), mode="wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
