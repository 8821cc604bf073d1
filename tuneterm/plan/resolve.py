"""Turning every "auto" of a config into the value a run will use, with the reason.

The engine resolves a config this way right before training, and `tuneterm plan` and the plan screen the same
way before it, so what a person is shown is what will run. Pure: it takes the facts it needs (example count,
the data's length statistics, the device) as arguments.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from tuneterm.config import AUTO, RunConfig
from tuneterm.errors import ConfigError, Location, Problem
from tuneterm.hardware import Device, resolve_precision
from tuneterm.plan import schedule
from tuneterm.plan.memory import PAGED_OPTIMIZERS, SHARDED_STATES, SHARDED_WEIGHTS, Strategy
from tuneterm.plan.packing import PADDING_FREE_STRATEGIES, Tokens, attention_is_varlen, tokens_per_step
from tuneterm.plan.schedule import Schedule

_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve(config: RunConfig, device: Device, train_examples: int | None = None,
            data_max_length: tuple[int, str] | None = None, world_size: int = 1,
            strategy: Strategy = "ddp", train_lengths: np.ndarray | None = None) -> RunConfig:
    """Fill what can be filled: precision from the device, packing from the attention implementation, lengths and
    intervals from the data when known, and what sharding across processes needs (`strategy`, see
    plan/memory.py). The intervals count what the Trainer iterates: the training examples (`train_examples`), or
    when packing, the rows their token lengths (`train_lengths`, as trained) pack into. Raises ConfigError for
    settings this device cannot run."""
    _refuse_for_device(config, device)
    changes: dict[str, tuple[Any, str]] = {}
    precision = config.get("training.precision")
    if precision == AUTO:
        changes["training.precision"] = resolve_precision(AUTO, device)
        precision = changes["training.precision"][0]
    else:
        resolve_precision(precision, device)  # raises when the device cannot train in it
    if config.get("quantization.bnb_4bit_compute_dtype") == AUTO:
        changes["quantization.bnb_4bit_compute_dtype"] = (_DTYPE_NAMES[precision],
                                                          f"follows training.precision ({precision})")
    micro_batch = config.get("training.per_device_train_batch_size")
    if config.get("training.per_device_eval_batch_size") == AUTO:
        changes["training.per_device_eval_batch_size"] = (micro_batch, "the training micro-batch")
    if config.get("training.max_length") == AUTO and data_max_length is not None:
        changes["training.max_length"] = data_max_length
    if config.get("training.packing") == AUTO:
        changes["training.packing"] = packing_by_attention(config.get("model.attn_implementation"))
    if train_lengths is not None:
        sequences = tokens_of(config.resolved(changes), train_lengths).sequences
        changes.update(_intervals(config, sequences, world_size))
    elif train_examples is not None:
        if config.resolved(changes).get("training.packing") is True:
            raise ValueError("packing: the intervals need the examples' lengths (train_lengths)")
        changes.update(_intervals(config, train_examples, world_size))
    if world_size > 1:
        changes.update(_for_sharding(config, precision, strategy))
    return config.resolved(changes)


def packing_by_attention(attn_implementation: str) -> tuple[bool, str]:
    """What packing "auto" becomes, and why."""
    if attention_is_varlen(attn_implementation):
        return True, (f"auto: {attn_implementation} runs a packed micro-batch as separate sequences without padding "
                      "or a dense mask")
    return False, (f"auto: {attn_implementation} would keep packed sequences apart only through a dense mask over "
                   "each whole micro-batch, without its fastest kernel; packing: true packs all the same, and "
                   "flash_attention_2/3, a kernels-hub flash build or flex_attention pack without that cost")


def _refuse_for_device(config: RunConfig, device: Device) -> None:
    """Levers that need what this device lacks, refused before anything loads."""
    problems = []
    if config.get("training.activation_offloading") and device.kind != "cuda":
        problems.append(Problem(f"activation offloading moves activations from a CUDA GPU to host memory; "
                                f"{device.name} trains in host memory already: set it to false",
                                Location(key="training.activation_offloading")))
    if config.get("training.use_liger_kernel"):
        if importlib.util.find_spec("liger_kernel") is None:
            problems.append(Problem("the Liger kernels need the liger-kernel package: pip install liger-kernel, or "
                                    "set use_liger_kernel: false", Location(key="training.use_liger_kernel")))
        elif device.kind != "cuda":
            problems.append(Problem(f"the Liger kernels are Triton kernels for a CUDA GPU, and this run trains on "
                                    f"{device.name}: set use_liger_kernel: false",
                                    Location(key="training.use_liger_kernel")))
    if problems:
        raise ConfigError(problems)


def flattens_rows(config: RunConfig) -> bool:
    """Whether TRL will flatten each micro-batch into one padding-free row: packing with bfd, or padding_free."""
    strategy = config.get("training.packing_strategy")
    return config.get("training.packing") is True and strategy in PADDING_FREE_STRATEGIES \
        or bool(config.get("training.padding_free"))


def tokens_of(config: RunConfig, train_lengths: np.ndarray) -> Tokens:
    """What the data gives each step under a resolved config: rows, real tokens, padding (plan/packing.py)."""
    processes = config.get("training.dataset_num_proc")
    return tokens_per_step(train_lengths, config.get("training.max_length"),
                           config.get("training.per_device_train_batch_size"),
                           config.get("training.gradient_accumulation_steps"), bool(config.get("training.packing")),
                           config.get("training.packing_strategy"), bool(config.get("training.padding_free")),
                           processes if isinstance(processes, int) else None)


def _for_sharding(config: RunConfig, precision: str, strategy: Strategy) -> dict[str, tuple[Any, str]]:
    """FSDP and ZeRO-3 shard only floating-point tensors of one dtype, so a 4-bit model keeps its packed weights
    in the dtype it computes in (float32 under fp16, whose loss scaler needs fp32 parameters); and sharded
    optimizer state cannot be a paged 8-bit optimizer's (PEFT's FSDP guide; DeepSpeed refuses untested ones)."""
    changes: dict[str, tuple[Any, str]] = {}
    storage_set = config.get("quantization.bnb_4bit_quant_storage")
    if config.method == "qlora" and strategy in SHARDED_WEIGHTS and not storage_set:
        storage = "float32" if precision == "fp16" else _DTYPE_NAMES[precision]
        changes["quantization.bnb_4bit_quant_storage"] = (
            storage, f"{strategy} shards floating-point tensors of one dtype: 4-bit weights are packed in {storage}")
    if strategy in SHARDED_STATES and "training.optim" in config.defaulted \
            and config.get("training.optim") in PAGED_OPTIMIZERS:
        changes["training.optim"] = ("adamw_torch", f"{strategy} shards the optimizer state, which a paged 8-bit "
                                                    "optimizer cannot be")
    return changes


def _intervals(config: RunConfig, train_sequences: int, world_size: int) -> dict[str, tuple[Any, str]]:
    epoch_steps = schedule.steps_per_epoch(train_sequences, config.get("training.per_device_train_batch_size"),
                                           config.get("training.gradient_accumulation_steps"), world_size)
    fraction = config.get("training.eval_interval_epochs")
    interval = schedule.interval_steps(epoch_steps, fraction)
    why = f"{fraction:.0%} of an epoch of {epoch_steps} steps"
    changes: dict[str, tuple[Any, str]] = {}
    eval_steps = config.get("training.eval_steps")
    if eval_steps == AUTO:
        eval_steps = interval
        changes["training.eval_steps"] = (interval, why)
    if config.get("training.save_steps") == AUTO:
        has_eval = bool(config.get("data.eval")) or bool(config.get("data.val_size"))
        changes["training.save_steps"] = (eval_steps, "same as eval_steps") if has_eval else (interval, why)
    return changes


def schedule_of(config: RunConfig, train_examples: int, eval_examples: int, world_size: int = 1,
                train_sequences: int | None = None) -> Schedule:
    """The schedule of a config resolved with resolve(...); `train_sequences`: the packed rows when packing."""
    eval_steps = config.get("training.eval_steps")
    return schedule.schedule_for(
        micro_batch=config.get("training.per_device_train_batch_size"),
        accumulation=config.get("training.gradient_accumulation_steps"),
        epochs=config.get("training.num_train_epochs"),
        max_steps=config.get("training.max_steps", -1),
        warmup=config.get("training.warmup_steps"),
        eval_steps=eval_steps if isinstance(eval_steps, int) else None,
        save_steps=config.get("training.save_steps"),
        train_examples=train_examples, eval_examples=eval_examples, world_size=world_size,
        train_sequences=train_sequences)
