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
from typing import Callable

from llmctl.errors import LlmctlError


def read_text(path: Path) -> str:
    """Read a UTF-8 text file for scoring; a missing, empty or binary file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise LlmctlError(f"text file {path} not found", hint="check the --data path")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise LlmctlError(f"{path} looks binary, not text", hint="give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlmctlError(f"{path} is not UTF-8 text", hint="convert it to UTF-8") from exc
    if not text.strip():
        raise LlmctlError(f"text file {path} is empty", hint="give a file with some text in it")
    return text


def model_max_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def perplexity(model, tokenizer, text: str, seqlen: int = 2048, stride: int = 512, batch_size: int = 1,
               max_tokens: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Score text with overlapping windows of `seqlen` tokens moved by `stride` tokens.

    Each token after the first is scored once, with up to seqlen-1 tokens of context (the window's
    overlap gives later windows context without rescoring it).

    Examples:
        perplexity(model, tok, "Some text ...", seqlen=256, stride=128)["bits_per_byte"]
    """
    import torch

    if seqlen < 2 or stride < 1:
        raise LlmctlError(f"seqlen must be >= 2 and stride >= 1 (got {seqlen}, {stride})")
    if stride > seqlen:
        raise LlmctlError(f"stride {stride} is larger than seqlen {seqlen}", hint="use stride <= seqlen")
    limit = model_max_length(model)
    if limit and seqlen > limit:
        seqlen = limit  # the model cannot attend further; windows shrink to its positions
        stride = min(stride, seqlen)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    n = ids.numel()
    if n < 2:
        raise LlmctlError("the text has fewer than 2 tokens; nothing to score", hint="give more text")
    # Windows: [begin, end) with targets the tokens not scored by earlier windows.
    windows = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + seqlen, n)
        target_from = max(prev_end, begin + 1)  # the first token of the text has no context
        if end > target_from:
            windows.append((begin, end, target_from))
        prev_end = end
        if end == n:
            break
    device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
    total_nll = 0.0
    scored = 0
    model_was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
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
            for row, (b, e, t) in enumerate(chunk):
                # position p in the row predicts token b+p+1; score targets t..e-1
                lo, hi = t - b - 1, e - b - 1
                total_nll -= float(token_lp[row, lo:hi].sum())
                scored += hi - lo
            if progress:
                progress(min(start + batch_size, len(windows)), len(windows))
    if model_was_training:
        model.train()
    n_bytes = len(text.encode("utf-8"))
    n_words = len(re.split(r"\s+", text.strip()))
    return {
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
