"""Step arithmetic, exactly as the Hugging Face Trainer will do it.

Why a module of its own: the plan screen, `tuneterm plan` and the engine must agree to the step on how many
examples are held out, how many optimizer steps an epoch has and when evaluation happens. A prediction that
is off by one makes "eval every 20% of an epoch" or a warmup fraction quietly wrong. Pure arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    train_sequences: int = 0
    """What the Trainer iterates in an epoch: the packed rows when packing (plan/packing.py), else the examples."""


def schedule_for(micro_batch: int, accumulation: int, epochs: float, max_steps: int, warmup: float | int,
                 eval_steps: int | None, save_steps: int, train_examples: int, eval_examples: int,
                 world_size: int = 1, train_sequences: int | None = None) -> Schedule:
    """The whole schedule of a resolved run; max_steps above 0 overrides epochs, as in TrainingArguments. The steps
    follow from `train_sequences` (packed rows) when given, else from the examples."""
    sequences = train_examples if train_sequences is None else train_sequences
    per_epoch = steps_per_epoch(sequences, micro_batch, accumulation, world_size)
    total = max_steps if max_steps and max_steps > 0 else total_steps(per_epoch, epochs)
    return Schedule(effective_batch_size=micro_batch * accumulation * world_size, train_examples=train_examples,
                    eval_examples=eval_examples, steps_per_epoch=per_epoch, total_steps=total,
                    warmup_steps=warmup_steps(total, warmup), eval_steps=eval_steps if eval_examples else None,
                    save_steps=save_steps, train_sequences=sequences)


# The learning-rate schedules of transformers.optimization, as multipliers of the base rate at a step.
_SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress))),
    "cosine_with_restarts": lambda progress: (0.0 if progress >= 1.0
                                              else 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0)))),
    "constant_with_warmup": lambda progress: 1.0,
}


def learning_rates(scheduler: str, base_rate: float, warmup: int, total: int,
                   points: int | None = None) -> list[tuple[int, float]] | None:
    """The learning rate each optimizer step runs with (what the Trainer logs for it), as transformers'
    schedulers compute it: (step, rate) from step 1 to `total`, thinned to about `points` points. None for a
    scheduler whose curve depends on the run (reduce_lr_on_plateau) or on extra arguments."""
    if scheduler == "constant":
        return [(1, base_rate), (max(total, 1), base_rate)]
    shape = _SCHEDULES.get(scheduler)
    if shape is None or total <= 0:
        return None
    stride = max(1, total // points) if points else 1
    steps = sorted({*range(1, total + 1, stride), *(s for s in (warmup, warmup + 1, total) if 1 <= s <= total)})
    curve = []
    for step in steps:
        done = step - 1  # step N runs with the rate the scheduler set after N - 1 steps
        factor = done / max(1, warmup) if done < warmup else shape((done - warmup) / max(1, total - warmup))
        curve.append((step, base_rate * factor))
    return curve
