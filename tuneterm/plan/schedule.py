"""Step arithmetic, exactly as the Hugging Face Trainer will do it.

Why a module of its own: the plan screen, `tuneterm plan` and the engine must agree to the step on how many
examples are held out, how many optimizer steps an epoch has and when evaluation happens. A prediction that
is off by one makes "eval every 20% of an epoch" or a warmup fraction quietly wrong. Pure arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Schedule:
    effective_batch_size: int
    train_examples: int
    eval_examples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_steps: int | None
    """None when there is no eval split."""
    save_steps: int


def schedule_for(micro_batch: int, accumulation: int, epochs: float, max_steps: int, warmup: float | int,
                 eval_steps: int | None, save_steps: int, train_examples: int, eval_examples: int,
                 world_size: int = 1) -> Schedule:
    """The whole schedule of a resolved run; max_steps above 0 overrides epochs, as in TrainingArguments."""
    per_epoch = steps_per_epoch(train_examples, micro_batch, accumulation, world_size)
    total = max_steps if max_steps and max_steps > 0 else total_steps(per_epoch, epochs)
    return Schedule(effective_batch_size=micro_batch * accumulation * world_size, train_examples=train_examples,
                    eval_examples=eval_examples, steps_per_epoch=per_epoch, total_steps=total,
                    warmup_steps=warmup_steps(total, warmup), eval_steps=eval_steps if eval_examples else None,
                    save_steps=save_steps)
