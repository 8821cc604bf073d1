"""Token statistics: how long the examples are, how much of them is trained, and what a max length costs.

The guides' most common silent failure is a max length guessed instead of read from the data: too long wastes
memory on padding, too short cuts responses. The suggestion here is the 99th percentile (the 95th when memory is
short) rounded up to a multiple of 64, with the reason attached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LENGTH_MULTIPLE = 64
PERCENTILES = (50, 90, 95, 99)


def percentiles(values: np.ndarray) -> dict[str, int]:
    found = {f"p{q}": int(math.ceil(np.percentile(values, q))) for q in PERCENTILES}
    return {**found, "max": int(values.max())}


def histogram(values: np.ndarray, bins: int = 12) -> list[dict[str, int]]:
    """Equal-width bins from the shortest to the longest example, each {start, end, count} (end exclusive)."""
    low, top = int(values.min()), int(values.max())
    width = max(1, math.ceil((top - low + 1) / bins))
    counts, edges = np.histogram(values, bins=np.arange(low, top + width + 1, width))
    return [{"start": int(edges[i]), "end": int(edges[i + 1]), "count": int(counts[i])}
            for i in range(len(counts)) if edges[i] <= top]


def suggest_max_length(lengths: np.ndarray, context_length: int | None = None,
                       memory_limited: bool = False) -> tuple[int, str]:
    q = 95 if memory_limited else 99
    value = int(math.ceil(np.percentile(lengths, q)))
    rounded = math.ceil(value / LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    why = (f"{q}th percentile of the training examples' token lengths ({value}) rounded up to a multiple of "
           f"{LENGTH_MULTIPLE}" + (" (the 95th because memory is limited)" if memory_limited else ""))
    if context_length and rounded > context_length:
        return context_length, f"{why}, capped at the model's context length {context_length}"
    return rounded, why


@dataclass(frozen=True)
class Truncation:
    max_length: int
    truncated_examples: int
    """Examples longer than max_length."""
    response_tokens_lost: int
    fully_truncated: int
    """Examples whose every trained token lies beyond max_length (they would train on nothing)."""
