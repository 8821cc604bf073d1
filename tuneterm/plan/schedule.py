"""Step arithmetic, exactly as the Hugging Face Trainer will do it.

Why a module of its own: the plan screen, `tuneterm plan` and the engine must agree to the step on how many
examples are held out, how many optimizer steps an epoch has and when evaluation happens. A prediction that
is off by one makes "eval every 20% of an epoch" or a warmup fraction quietly wrong. Pure arithmetic.
"""

from __future__ import annotations

import math


def eval_split_size(examples: int, val_size: float | int) -> int:
    """Held-out examples for a val_size (fraction or count); a fraction rounds up, like datasets' split."""
    if isinstance(val_size, float):
        return math.ceil(val_size * examples) if val_size > 0 else 0
    return int(val_size)


def steps_per_epoch(train_examples: int, micro_batch: int, accumulation: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: batches per device, then accumulation (a partial last group still steps)."""
    batches = math.ceil(train_examples / (micro_batch * world_size))
    return max(math.ceil(batches / accumulation), 1)


def total_steps(steps_in_epoch: int, epochs: float) -> int:
    return math.ceil(epochs * steps_in_epoch)


def warmup_steps(total: int, warmup: float | int) -> int:
    """A float below 1 is a fraction of the total steps (rounded up, as transformers does)."""
    return math.ceil(total * warmup) if isinstance(warmup, float) else int(warmup)


def interval_steps(steps_in_epoch: int, fraction_of_epoch: float) -> int:
    """Steps between evaluations for an interval given as a fraction of an epoch (at least 1)."""
    return max(1, round(steps_in_epoch * fraction_of_epoch))
