"""The one perplexity implementation: sliding-window log-likelihood over a text.

Reports token perplexity, bits per byte and word perplexity (words = whitespace-separated pieces,
as lm-eval's wikitext task counts them). Used by `eval --tasks perplexity`, `quantize` and `prune`.

Examples:
    text = read_text(Path("wiki.test.raw"))
    perplexity(model, tokenizer, text, seqlen=2048, stride=512)["perplexity"]
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.runtime.progress import Progress


def read_text(path: Path, what: str = "text file", option: str | None = None) -> str:
    """Read a UTF-8 text file for scoring (llmctl/data/records.py: missing, empty or binary files are clear errors)."""
    from llmctl.data.records import read_text as read

    return read(path, what=what, option=option)


def model_max_length(model) -> int | None:
    """The positions a loaded model (or a reader with a `config`) declares (llmctl.models.rope.positions)."""
    from llmctl.models.rope import positions

    return positions(getattr(model, "config", None))


def _windows(n: int, seqlen: int, stride: int) -> list[tuple[int, int, int]]:
    """[begin, end) windows with the first token each scores: every token after the first scored once."""
    windows, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + seqlen, n)
        target_from = max(prev_end, begin + 1)  # the first token of the text has no context
        if end > target_from:
            windows.append((begin, end, target_from))
        prev_end = end
        if end == n:
            break
    return windows


def _check_buckets(buckets: list[int], n: int, limit: int | None, hard_limit: bool) -> None:
    if sorted(set(buckets)) != list(buckets) or buckets[0] < 2:
        raise LlmctlError(f"length buckets {buckets} must be increasing token counts of at least 2")
    if n < buckets[-1]:
        raise LlmctlError(
            f"the text has {n} tokens; length buckets up to {buckets[-1]} need at least that many",
            hint="give a longer text, or lower the last bucket",
        )
    if hard_limit and limit and buckets[-1] > limit:
        raise LlmctlError(
            f"length bucket {buckets[-1]} is beyond the model's {limit} learned positions",
            hint=f"use buckets up to {limit}",
        )


def perplexity(
    model,
    tokenizer,
    text: str,
    seqlen: int = 2048,
    stride: int = 512,
    batch_size: int = 1,
    max_tokens: int | None = None,
    progress: Progress | None = None,
    buckets: list[int] | None = None,
    dist=None,
) -> dict:
    """Score text with overlapping windows of `seqlen` tokens moved by `stride` tokens.

    Each token after the first is scored once, with up to seqlen-1 tokens of context (the window's
    overlap gives later windows context without rescoring it).

    `buckets` (increasing token positions, e.g. [512, 2048, 8192]): windows of the last bucket's length that do
    not overlap, and perplexity per position bucket ([0, 512), [512, 2048), …) in `result["buckets"]`, so one
    sees where a model stops using its context (RoPE models may go past their positions here; the point is to
    see how they do). `dist` (`llmctl.training.dist.Dist`): processes under torchrun share the batches of
    windows and gather them; the sums run in window order, so the numbers equal one process's exactly.

    Examples:
        perplexity(model, tok, "Some text ...", seqlen=256, stride=128)["bits_per_byte"]
        perplexity(model, tok, text, buckets=[512, 2048])["buckets"][1]["perplexity"]
    """
    if seqlen < 2 or stride < 1:
        raise LlmctlError(f"seqlen must be >= 2 and stride >= 1 (got {seqlen}, {stride})")
    if stride > seqlen:
        raise LlmctlError(f"stride {stride} is larger than seqlen {seqlen}", hint="use stride <= seqlen")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    n = ids.numel()
    if n < 2:
        raise LlmctlError("the text has fewer than 2 tokens; nothing to score", hint="give more text")
    seqlen, stride = _window_size(model, n, seqlen, stride, buckets)
    windows = _windows(n, seqlen, stride)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    edges = [0, *(buckets or [])]
    scores = _score_all(model, tokenizer, ids, batches, edges, progress, dist)
    total_nll, scored = 0.0, 0
    per_bucket = [[0.0, 0] for _ in range(len(edges) - 1)]
    for bi in range(len(batches)):  # window order, as one process adds them
        for nll, count, by_bucket in scores[bi]:
            total_nll -= nll
            scored += count
            for k, (b_nll, b_count) in enumerate(by_bucket):
                per_bucket[k][0] -= b_nll
                per_bucket[k][1] += b_count
    n_bytes = len(text.encode("utf-8"))
    n_words = len(re.split(r"\s+", text.strip()))
    out = {
        "perplexity": math.exp(total_nll / scored),
        "bits_per_byte": total_nll / (math.log(2) * n_bytes),
        "word_perplexity": math.exp(total_nll / n_words),
        "nll": total_nll,
        "tokens": int(n),
        "scored_tokens": int(scored),
        "bytes": n_bytes,
        "words": n_words,
        "seqlen": seqlen,
        "stride": stride,
    }
    if buckets:
        out["buckets"] = [
            {"from": edges[k], "to": edges[k + 1], "tokens": c, "perplexity": math.exp(nll / c) if c else None}
            for k, (nll, c) in enumerate(per_bucket)
        ]
    return out


def _window_size(model, n: int, seqlen: int, stride: int, buckets: list[int] | None) -> tuple[int, int]:
    """(seqlen, stride) as scored: the last bucket's length with buckets, else at most the model's positions."""
    limit = model_max_length(model)
    if buckets:
        from llmctl.models.rope import has_rope

        _check_buckets(list(buckets), n, limit, not has_rope(getattr(model, "config", None)))
        return buckets[-1], buckets[-1]
    if limit and seqlen > limit:
        return limit, min(stride, limit)  # the model cannot attend further; windows shrink to its positions
    return seqlen, stride


def _score_all(model, tokenizer, ids, batches: list, edges: list[int], progress, dist) -> dict[int, list]:
    """Batch index → per window [nll, count, [nll, count] per bucket]; under torchrun each process scores every
    world-th batch and all gather them."""
    import torch

    rank, world = (dist.rank, dist.world) if dist is not None and dist.active else (0, 1)
    device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
    scores: dict[int, list] = {}
    model_was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    with torch.inference_mode():
        for done, bi in enumerate(range(rank, len(batches), world)):
            scores[bi] = _score_batch(model, tokenizer, ids, batches[bi], device, edges)
            if progress:
                scored = min((done + 1) * world, len(batches))
                progress(f"perplexity: batch {scored}/{len(batches)}", scored, len(batches))
    if model_was_training:
        model.train()
    if world > 1:
        for part in dist.gather(scores):
            scores.update(part)
    return scores


def _score_batch(model, tokenizer, ids, chunk, device, edges: list[int]) -> list:
    """Per window of one batch: (summed log-prob of its targets, their count, the same per position bucket)."""
    import torch

    width = max(e - b for b, e, _ in chunk)
    batch = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, (b, e, _) in enumerate(chunk):
        batch[row, : e - b] = ids[b:e]
        mask[row, : e - b] = 1
    logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch[:, 1:].to(logprobs.device)
    token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = []
    for row, (b, e, t) in enumerate(chunk):
        # position p in the row predicts token b+p+1; score targets t..e-1
        lo, hi = t - b - 1, e - b - 1
        by_bucket = []
        for k in range(len(edges) - 1):  # a target's position in its window is p + 1 (its context length)
            blo, bhi = max(lo, edges[k] - 1), min(hi, edges[k + 1] - 1)
            by_bucket.append([float(token_lp[row, blo:bhi].sum()) if bhi > blo else 0.0, max(0, bhi - blo)])
        out.append((float(token_lp[row, lo:hi].sum()), hi - lo, by_bucket))
    return out
