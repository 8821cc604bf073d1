"""Packing and padding, exactly as TRL and the Trainer will do them: how many rows a packed dataset has, and how
much of what a step computes is padding.

Why a module of its own: packing changes the number of sequences the Trainer iterates, so the steps per epoch, the
warmup, the evaluation interval and the total all follow from the packed row count; a plan that counted examples
would be wrong by a factor of three on short chat data. TRL packs with `datasets.map(batched=True)`: best-fit
decreasing within each batch of 1000 examples (each of `dataset_num_proc` contiguous shards batched on its own),
never across batches. This module reproduces that count, and the padding a step carries with and without packing.
Pure arithmetic over the examples' token lengths.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MAP_BATCH = 1000
"""The batch size of `datasets.Dataset.map(batched=True)`, which TRL's pack_dataset leaves at its default."""

STRATEGIES = ("bfd", "bfd_split", "wrapped")
PADDING_FREE_STRATEGIES = ("bfd", "bfd_split")
"""TRL turns padding-free on for these: each packed row is flattened with position ids restarting per example."""


def attention_is_varlen(attn_implementation: str) -> bool:
    """Whether the attention implementation runs packed, flattened rows as separate sequences without a dense mask:
    flash attention (the flash-attn package or a kernels-hub build) through its variable-length kernel, and
    flex_attention through a block mask that skips what one sequence may not see. SDPA and eager keep the
    sequences apart too (transformers builds a block-diagonal mask from the position ids), but through a dense
    N x N mask over the flattened micro-batch, and SDPA then cannot use its flash kernel."""
    return "flash" in attn_implementation or attn_implementation == "flex_attention"


def _shards(count: int, processes: int | None) -> Iterator[tuple[int, int]]:
    """(start, end) of each contiguous shard `datasets.map(num_proc=...)` processes, as Dataset.shard cuts them."""
    shards = max(1, processes or 1)
    base, extra = divmod(count, shards)
    start = 0
    for index in range(shards):
        end = start + base + (1 if index < extra else 0)
        if end > start:
            yield start, end
        start = end


def _best_fit_decreasing(lengths: np.ndarray, capacity: int) -> int:
    """Bins TRL's BFD fills: each length, longest first, goes into the bin with the least room that holds it."""
    room: Counter[int] = Counter()  # room left -> bins with that room (full bins are dropped)
    rooms: list[int] = []  # the distinct rooms of open bins, sorted
    bins = 0
    for length in sorted((int(x) for x in lengths if x > 0), reverse=True):
        length = min(length, capacity)
        at = bisect.bisect_left(rooms, length)
        if at < len(rooms):
            space = rooms[at]
            room[space] -= 1
            if not room[space]:
                del rooms[at]
        else:
            space = capacity
            bins += 1
        left = space - length
        if left:
            if not room[left]:
                bisect.insort(rooms, left)
            room[left] += 1
    return bins


@functools.lru_cache(maxsize=32)
def _rows(lengths: bytes, capacity: int, strategy: str, processes: int | None) -> int:
    values = np.frombuffer(lengths, dtype=np.int64)
    rows = 0
    for start, end in _shards(len(values), processes):
        for batch in range(start, end, MAP_BATCH):
            chunk = values[batch:min(batch + MAP_BATCH, end)]
            if strategy == "wrapped":
                rows += math.ceil(int(chunk.sum()) / capacity)
            else:  # bfd_split splits only examples longer than a row, and tuneterm cuts those to max_length first
                rows += _best_fit_decreasing(chunk, capacity)
    return rows


def packed_rows(lengths: np.ndarray, max_length: int, strategy: str = "bfd", processes: int | None = None) -> int:
    """Rows TRL's pack_dataset makes of examples of these token lengths (in dataset order), `max_length` per row."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown packing strategy {strategy!r}")
    return _rows(np.asarray(lengths, dtype=np.int64).tobytes(), max_length, strategy, processes)


@dataclass(frozen=True)
class Tokens:
    """What the training data gives each optimizer step under a packing setting."""

    sequences: int
    """What the Trainer iterates: packed rows, or the examples themselves."""
    real_per_step: float
    """Non-padding tokens per optimizer step, on average (per process)."""
    padding_share: float
    """Expected share of the tokens a step computes that are padding (0 for padding-free rows)."""
    padding_free: bool
    """Each micro-batch is flattened into one row (packing with bfd, or padding_free): no padding at all."""
    flattened_length: int
    """The longest row a micro-batch becomes: micro-batch x max_length when flattened, else max_length."""


def expected_padded_length(lengths: np.ndarray, micro_batch: int) -> float:
    """The expected longest example of a micro-batch drawn at random from these lengths, which the collator pads
    every example of the batch to: E[max] = sum over x of P(max >= x), drawing with replacement."""
    values = np.sort(np.asarray(lengths, dtype=np.int64))
    if not len(values) or micro_batch <= 1:
        return float(values.mean()) if len(values) else 0.0
    distinct = np.unique(values)
    below = np.searchsorted(values, distinct, side="left") / len(values)  # P(one draw < x)
    previous = np.concatenate(([0], distinct[:-1]))
    return float(np.sum((distinct - previous) * (1 - below ** micro_batch)))


def tokens_per_step(lengths: np.ndarray, max_length: int, micro_batch: int, accumulation: int, packing: bool,
                    strategy: str = "bfd", padding_free: bool = False, processes: int | None = None) -> Tokens:
    """Real tokens per optimizer step and the padding share, for the training examples' token lengths (already cut
    to max_length, as tuneterm cuts them)."""
    values = np.minimum(np.asarray(lengths, dtype=np.int64), max_length)
    real = float(values.mean()) if len(values) else 0.0
    if packing:
        rows = packed_rows(values, max_length, strategy, processes)
        per_row = float(values.sum()) / max(rows, 1)
        flattened = strategy in PADDING_FREE_STRATEGIES
        # Rows of "wrapped" packing are full; bfd rows are flattened into one row per micro-batch: neither is padded.
        return Tokens(rows, per_row * micro_batch * accumulation, 0.0, flattened,
                      micro_batch * max_length if flattened else max_length)
    if padding_free:
        return Tokens(len(values), real * micro_batch * accumulation, 0.0, True, micro_batch * max_length)
    padded = expected_padded_length(values, micro_batch)
    share = 1 - real / padded if padded else 0.0
    return Tokens(len(values), real * micro_batch * accumulation, max(0.0, share), False, max_length)
