"""What `pretrain` reads: the data dir's tokenizer, deterministic batches, and validation loss / bits per byte.

Batches are a pure function of (seed, step, rollbacks): the global batch of a step is the same whatever the
number of processes, and a resumed run sees exactly the data an uninterrupted run would.

Examples:
    offsets = batch_offsets(seed=1, step=10, rollbacks=0, n_tokens=len(tokens), seq_len=256, count=16)
    batch = windows(tokens, offsets, 256)          # (16, 257) int64: inputs and shifted targets
"""

from __future__ import annotations

import math
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.training.dist import Dist


def _tokenizer_sha(folder: Path) -> str | None:
    from llmctl.data.token_data import file_sha256

    tj = folder / "tokenizer.json"
    return file_sha256(tj) if tj.is_file() else None


def resolve_tokenizer(data, tokenizer: str | None) -> tuple[str | None, Path]:
    """The tokenizer to train with: the one the data index records; another one is an error."""
    from llmctl.data.token_data import recorded_tokenizer

    rec = data.tokenizer
    want_sha = rec.get("sha256")
    if tokenizer is not None:
        from llmctl.tokenize import tokenizer_folder

        name, folder = tokenizer_folder(tokenizer)
        sha = _tokenizer_sha(folder)
        rec_label = rec.get("name") or rec.get("path")
        if want_sha and sha and sha != want_sha:
            raise LlmctlError(
                f"tokenizer {tokenizer} does not match the data: {data.dir} was encoded with {rec_label} "
                f"(tokenizer.json sha256 {want_sha[:12]}…, this one {sha[:12]}…)",
                hint=f"drop --tokenizer to use {rec_label}, or re-encode the data with "
                f"`llmctl tokenize encode --tokenizer {tokenizer}`",
            )
        if want_sha and sha:
            _check_vocab(data, folder)
        else:
            from llmctl.models.loading import load_tokenizer

            n = len(load_tokenizer(str(folder)))
            if rec.get("vocab_size") and n != rec["vocab_size"]:
                raise LlmctlError(
                    f"tokenizer {tokenizer} ({n} tokens) does not match the data: {data.dir} was encoded "
                    f"with {rec_label} ({rec['vocab_size']} tokens)",
                    hint="use the tokenizer the data was encoded with, or re-encode the data",
                )
        return name or rec.get("name"), folder
    name, folder = recorded_tokenizer(rec)
    if folder is None:
        raise LlmctlError(
            f"the tokenizer recorded in {data.dir}/index.json ({rec.get('path')}) is missing",
            hint="pass it with --tokenizer NAME_OR_DIR",
        )
    sha = _tokenizer_sha(folder)
    if want_sha and sha and sha != want_sha:
        raise LlmctlError(
            f"the tokenizer at {folder} changed since {data.dir} was encoded (sha256 differs)",
            hint="re-encode the data with the current tokenizer, or restore the old one",
        )
    _check_vocab(data, folder)
    return name, folder


def _check_vocab(data, folder: Path) -> None:
    """The index's vocab_size is the size of the tokenizer it records (counted as `tokenize encode` counts it).

    The tokenizer.json sha256 can match while vocab_size was edited: the model's embedding is sized by it."""
    from llmctl.tokenize import load_tokenizer_spec

    recorded = data.tokenizer.get("vocab_size")
    if recorded is None:
        return
    n = load_tokenizer_spec(str(folder)).vocab_size
    if n != recorded:
        raise LlmctlError(
            f"{data.dir}/index.json records tokenizer.vocab_size {recorded}, but its tokenizer {folder} has {n} tokens",
            hint="the index is damaged or the tokenizer changed; re-encode the data with `llmctl tokenize encode`",
        )


def batch_offsets(seed: int, step: int, rollbacks: int, n_tokens: int, seq_len: int, count: int):
    """Start offsets of the global batch of `step`: a pure function of (seed, step, rollbacks)."""
    import numpy as np

    rng = np.random.default_rng([seed, step, rollbacks])
    return rng.integers(0, n_tokens - seq_len - 1, size=count, endpoint=True)


def windows(tokens, offsets, seq_len: int):
    import numpy as np
    import torch

    arr = np.stack([np.asarray(tokens[o : o + seq_len + 1]) for o in offsets]).astype(np.int64)
    return torch.from_numpy(arr)


def val_bytes_per_token(data, split: str, tok, max_tokens: int = 1 << 22) -> tuple[float | None, str]:
    """Bytes per token of the val split: recorded in the index when available, else measured by decoding
    (its first `max_tokens` tokens)."""
    info = data.index["splits"].get(split, {})
    n = data.num_tokens(split)
    if not n:
        return None, "none"
    if info.get("bytes"):
        return info["bytes"] / n, "index"
    toks = data.tokens(split)
    n = min(n, max_tokens)
    total = 0
    step = 1 << 20
    for i in range(0, n, step):
        text = tok.decode([int(t) for t in toks[i : i + step]], skip_special_tokens=True)
        total += len(text.encode("utf-8"))
    return total / n, "decoded"


def lm_loss(model, batch, ctx):
    import torch.nn.functional as F

    x, y = batch[:, :-1], batch[:, 1:]
    with ctx:
        logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


def evaluate(model, tokens, seq_len: int, batch_size: int, max_windows: int | None, device: str, ctx, d: Dist) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of the val split (spread evenly)."""
    import numpy as np
    import torch

    n = len(tokens)
    starts = np.arange(0, n - seq_len - 1 + 1, seq_len)
    if len(starts) == 0:
        return float("nan")
    if max_windows and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    if d.world > 1:
        starts = starts[: max(d.world, len(starts) // d.world * d.world)]
        starts = starts[d.rank :: d.world]
    was = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            batch = windows(tokens, starts[i : i + batch_size], seq_len).to(device)
            loss = lm_loss(model, batch, ctx)
            k = batch[:, 1:].numel()
            total += torch.tensor([loss.item() * k, k], dtype=torch.float64)
    if d.active:
        import torch.distributed as dist

        dist.all_reduce(total)
    model.train(was)
    return float(total[0] / total[1])


def val_metrics(loss: float, bpt: float | None, prefix: str = "val") -> dict:
    out = {f"{prefix}_loss": round(loss, 6), f"{prefix}_ppl": round(math.exp(min(loss, 50)), 4)}
    if bpt:
        out[f"{prefix}_bpb"] = round(loss / math.log(2) / bpt, 6)
    return out
