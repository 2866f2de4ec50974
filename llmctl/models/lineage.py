"""A model's lineage in the registry: the model, then its parents, breadth first.

Examples:
    [name for name, entry in ancestry(Registry(), "smol-gptq4")]   # ["smol-gptq4", "smollm2-135m-instruct"]
"""

from __future__ import annotations


def ancestry(registry, name: str, limit: int | None = None) -> list[tuple[str, object | None]]:
    """(name, entry) of the model and then its parents, breadth first; None for one no longer registered."""
    out, queue, seen = [], [name], set()
    while queue and (limit is None or len(out) < limit):
        current = queue.pop(0)
        if current not in seen:
            seen.add(current)
            entry = registry.find(current)
            out.append((current, entry))
            queue.extend(entry.parents if entry else [])
    return out
