"""Failures of a running training, explained: what happened, what is kept, and what to do.

Out of GPU memory (in training or in evaluation), a full disk, and a loss or weights that stopped being numbers
each become a RunFailure: one sentence that names what overflowed or what broke (from the plan's memory
breakdown, the config, the step), the last good checkpoint, and remedies as config changes, each saying
whether the run can resume with it or must start again. The app offers the remedies as a one-key retry; the
command line prints them as --set arguments.

A full disk does not always say so: safetensors and Python's own writes carry ENOSPC, but torch.save's C++
writer loses the errno ("basic_ios::clear: iostream error", "[enforce fail at inline_container.cc] unexpected
pos"). So a save that fails is also put down to the disk when the run directory's filesystem has less room left
than a checkpoint takes: a write that fails part-way leaves less free space than it needed.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig, set_argument
from tuneterm.engine.launch import distributed
from tuneterm.engine.rundir.fingerprint import CHANGEABLE_ON_RESUME
from tuneterm.engine.rundir.layout import MARKER_FILE, checkpoints, last_complete_checkpoint
from tuneterm.errors import TuneTermError
from tuneterm.plan.memory import estimate_memory, size
from tuneterm.plan.planner import memory_setup, model_facts


class RunFailure(TuneTermError):
    """A training that could not go on, with what to change and the checkpoint that is kept."""

    def __init__(self, summary: str, remedies: list[dict[str, Any]] | None = None,
                 last_good_checkpoint: Path | None = None):
        super().__init__(summary)
        self.remedies = remedies or []
        self.last_good_checkpoint = last_good_checkpoint


def remedy(changes: dict[str, Any], why: str, checkpoint: Path | None) -> dict[str, Any]:
    """A change that lets the run go on: resumed from the checkpoint when the change leaves what is trained
    alone, else started again."""
    return {"set": changes, "why": why, "resume": checkpoint is not None and set(changes) <= CHANGEABLE_ON_RESUME}


def _kept(run_dir: Path) -> tuple[Path | None, str]:
    checkpoint, _ = last_complete_checkpoint(run_dir)
    if checkpoint is None:
        return None, "No checkpoint was saved before it."
    return checkpoint, f"The last good checkpoint, {checkpoint.name}, is kept."


_FIXED = ("cuda_context", "allocator_slack")
"""Parts of the estimate that follow from the others: never what to shrink."""


def _functions_raised_through(exc: BaseException) -> Iterator[str]:
    """The names of the functions the exception was raised through, from the outermost."""
    traceback = exc.__traceback__
    while traceback is not None:
        yield traceback.tb_frame.f_code.co_name
        traceback = traceback.tb_next


def raised_in_evaluation(exc: BaseException) -> bool:
    """Whether the exception came from inside an evaluation (the Trainer's evaluation loop)."""
    return any(name in ("evaluation_loop", "prediction_step", "evaluate") for name in _functions_raised_through(exc))


def raised_while_saving(exc: BaseException) -> bool:
    """Whether the exception came from inside a save: the Trainer's, PEFT's, torch's and safetensors' writers are
    all named save... (_save_checkpoint, save_pretrained, save, save_file)."""
    return any(name.lstrip("_").startswith("save") for name in _functions_raised_through(exc))


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and the ones it was raised from or while handling."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


LOW_DISK_SPACE = 16 * 2**20
"""Free space below which a failed save is put down to the disk even before a first checkpoint says what one
takes: less than any real model's checkpoint."""


def is_disk_full(exc: BaseException | None, run_dir: Path | None = None) -> bool:
    """Whether the exception is the disk running out: ENOSPC said anywhere in its chain or, given the run
    directory, a save that failed without an errno of its own where less room is left than a checkpoint takes."""
    chain = list(_chain(exc))
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC or "no space left on device" in str(e).lower()
           for e in chain):
        return True
    if run_dir is None or exc is None or not raised_while_saving(exc):
        return False
    if any(isinstance(e, OSError) and e.errno is not None for e in chain):
        return False  # a save refused for its own reason (permission, a missing directory) says which
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return False
    return free < max(LOW_DISK_SPACE, _checkpoint_size(run_dir))


def _checkpoint_size(run_dir: Path) -> int:
    """The bytes the newest completed checkpoint takes, about what the next one needs (its files are not read:
    this is a size, not a check)."""
    completed = [c for c in checkpoints(run_dir) if (c / MARKER_FILE).is_file()]
    return sum(f.stat().st_size for f in completed[-1].rglob("*") if f.is_file()) if completed else 0


def out_of_memory(config: RunConfig, step: int, evaluating: bool, run_dir: Path,
                  data_p95: int | None = None) -> RunFailure:
    """Names the largest parts of the plan's memory breakdown, and the remedies that keep the effective batch.
    An evaluation that ran out never changes the training batch."""
    world_size, strategy = distributed.world_size(), distributed.strategy()
    facts = model_facts(config)
    estimate = estimate_memory(facts, memory_setup(config, facts.context_length, world_size, strategy=strategy))
    largest = sorted(((v, k) for k, v in estimate.breakdown.items() if v > 0 and k not in _FIXED), reverse=True)[:3]
    parts = ", ".join(f"{name.replace('_', ' ')} {size(value)}" for value, name in largest)
    if world_size > 1:
        parts += f" (on each GPU: {strategy} over {world_size} processes)"
    micro = config.get("training.per_device_train_batch_size")
    accumulation = config.get("training.gradient_accumulation_steps")
    eval_batch = config.get("training.per_device_eval_batch_size")
    eval_batch = eval_batch if isinstance(eval_batch, int) else micro
    remedies = []
    checkpoint, kept = _kept(run_dir)
    if evaluating:
        if eval_batch > 1:
            remedies.append(remedy({"training.per_device_eval_batch_size": max(1, eval_batch // 2)},
                                   "evaluation holds a whole eval batch at once; a smaller one does not change "
                                   "training at all", checkpoint))
    else:
        if micro > 1:
            remedies.append(remedy({"training.per_device_train_batch_size": micro // 2,
                                    "training.gradient_accumulation_steps": accumulation * 2},
                                   f"half the micro-batch with twice the accumulation keeps the effective batch of "
                                   f"{micro * accumulation}", checkpoint))
        if not config.get("training.gradient_checkpointing"):
            remedies.append(remedy({"training.gradient_checkpointing": True},
                                   "recomputing activations in backward instead of keeping them trades about 20% "
                                   "speed for most of the activation memory", checkpoint))
        length = config.get("training.max_length")
        if isinstance(length, int) and data_p95 and data_p95 < length:
            shorter = max(64, -(-data_p95 // 64) * 64)
            if shorter < length:
                remedies.append(remedy({"training.max_length": shorter},
                                       f"the data's 95th percentile is {data_p95} tokens: activations grow with the "
                                       "sequence length", checkpoint))
        if config.method == "lora":
            remedies.append(remedy({"method": "qlora"}, "4-bit base weights take about a quarter of the memory",
                                   checkpoint))
    where = "evaluation" if evaluating else "training"
    return RunFailure(f"Out of GPU memory during {where} at step {step}. The plan's largest parts: {parts}. {kept}",
                      remedies, checkpoint)


def disk_full(run_dir: Path, step: int) -> RunFailure:
    """The checkpoint kept, and the incomplete ones after it, whose space can be given back first."""
    checkpoint, kept = _kept(run_dir)
    found = checkpoints(run_dir)
    after_kept = found.index(checkpoint) + 1 if checkpoint is not None else 0
    incomplete = [c.name for c in found[after_kept:]]
    deletable = f" The incomplete {', '.join(incomplete)} can be deleted." if incomplete else ""
    return RunFailure(f"The disk is full (no space left on device) while saving at step {step} in {run_dir}. {kept}"
                      f"{deletable} Free some space, then continue with: tuneterm train --resume {run_dir}", [],
                      checkpoint)


def diverged(config: RunConfig, step: int, what: str, run_dir: Path) -> RunFailure:
    """The loss, the gradients or the weights stopped being numbers: nothing after it is saved."""
    rate = config.get("training.learning_rate")
    causes = []
    remedies = []
    checkpoint, kept = _kept(run_dir)
    recommended = 2e-5 if config.method == "full" else 2e-4
    if rate > 1.5 * recommended:
        causes.append(f"the learning rate {rate:g} is high")
        lower = recommended if rate > 10 * recommended else rate / 10
        remedies.append(remedy({"training.learning_rate": lower},
                               f"a lower rate keeps the updates from blowing up (the guides start "
                               f"{'full fine-tuning' if config.method == 'full' else 'LoRA'} at {recommended:g})",
                               checkpoint))
    if config.get("training.precision") == "fp16":
        causes.append("fp16 overflows above 65,504")
        remedies.append(remedy({"training.precision": "bf16"}, "bf16 has fp32's range (on Ampere or newer GPUs)",
                               checkpoint))
    causes.append("or bad data in the last batches")
    return RunFailure(f"Training stopped at step {step}: {what} became NaN or infinite. Likely causes: "
                      f"{'; '.join(causes)}. Nothing after it was saved as the adapter. {kept}", remedies, checkpoint)


def remedies_as_arguments(remedies: list[dict[str, Any]]) -> list[str]:
    return [" ".join(set_argument(k, v) for k, v in item["set"].items()) for item in remedies]
