"""Deterministic micro-batches for finetuning: packed SFT rows, or preference pairs (chosen then rejected).

Examples:
    plan = sft_plan(examples, config, pad_id=2, packed=True, seed=1)
    batch = plan.batch(0)      # {"input_ids", "attention_mask", "labels", "tokens", ...}
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from llmctl.data.sft import collate, collate_pairs, pack


class Plan:
    """Deterministic micro-batch order: micro-batch g is epoch g // per_epoch, slot g % per_epoch."""

    def __init__(self, items: list, rows: list[list[int]], batch_size: int, seed: int, make: Callable):
        self.items, self.rows, self.bs, self.seed, self.make = items, rows, batch_size, seed, make
        self.per_epoch = max(1, math.ceil(len(rows) / batch_size))
        self._epoch, self._order = -1, []

    def batch(self, g: int):
        epoch, slot = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            self._order = list(range(len(self.rows)))
            random.Random(self.seed * 1000003 + epoch).shuffle(self._order)
            self._epoch = epoch
        chosen = self._order[slot * self.bs : (slot + 1) * self.bs]
        return self.make([self.rows[r] for r in chosen])


def sft_plan(examples, config, pad_id, packed, seed):
    rows = pack(examples, config["train"]["seq_len"], None) if packed else [[i] for i in range(len(examples))]
    return Plan(
        examples,
        rows,
        config["train"]["batch_size"],
        seed,
        lambda rows: collate([[examples[i] for i in row] for row in rows], pad_id, packed),
    )


def pref_plan(pairs, config, pad_id, seed):
    return Plan(
        pairs,
        [[i] for i in range(len(pairs))],
        config["train"]["batch_size"],
        seed,
        lambda rows: collate_pairs([pairs[row[0]] for row in rows], pad_id),
    )


def to_device(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
