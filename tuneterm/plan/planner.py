"""Planning in three stages, each cached, so a screen recomputes only what a change touches.

1. Model facts (plan/model.py): config.json on the meta device, cached per model path and revision.
2. The data summary (data/summary.py): one streaming pass over the data with the model's tokenizer and chat
   template, cached per data settings, tokenizer and the files' size and modification time (in memory here, and
   on disk with the prepared tokens: data/store.py); cancellable, with progress. Changing max_length, val_size,
   the seed or max_samples afterwards reuses it, and so does the run started from these settings.
3. plan_run: resolve, schedule, memory estimate and advice from facts + summary + settings: pure arithmetic,
   well under a millisecond (bench/plan_latency.py), run on every keystroke.

`tuneterm plan` runs the three in order (make_plan); the app runs 1 and 2 in workers and 3 as the person types.
Planning needs no data at all: without it the plan has the memory at the chosen length and batch, the parameter
counts and the advice, and says that the schedule needs the data.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.config import AUTO, RunConfig, output_dir_problem
from tuneterm.data.prepare import refuse_blocking, summarise, view_of
from tuneterm.data.summary import DataSummary, DataView
from tuneterm.data.tokenizer import load_tokenizer
from tuneterm.errors import ConfigError, DataError, LoadError, Location, Problem
from tuneterm.hardware import GpuSurvey, HostReading, device_from_survey, read_gpus, read_host
from tuneterm.hub import looks_like_hub_id
from tuneterm.plan.advice import Advice, Context, LengthStats, advise
from tuneterm.plan.flops import mean_context, training_flops_per_token
from tuneterm.plan.memory import (
    BatchAdvice,
    MemoryEstimate,
    MemorySetup,
    Strategy,
    Verdict,
    estimate_memory,
    largest_micro_batch,
    verdict,
)
from tuneterm.plan.model import LoraShape, ModelFacts, load_model_facts, peft_total_params, trainable_params
from tuneterm.plan.packing import Tokens
from tuneterm.plan.resolve import flattens_rows, resolve, schedule_of, tokens_of
from tuneterm.plan.schedule import Schedule
from tuneterm.work import Work

UNKNOWN_LENGTH = 1024
"""Sequence length the memory is estimated at when max_length is auto and there is no data to measure (or the
model's context length, when shorter)."""


@dataclass(frozen=True)
class MemoryTarget:
    """One device the run could use, with what the estimate means there."""

    name: str
    free_bytes: float
    verdict: Verdict
    largest_micro_batch: BatchAdvice


@dataclass
class Plan:
    config: RunConfig
    """Resolved as far as the known facts allow."""
    facts: ModelFacts
    trainable_params: int
    total_params: int
    memory: MemoryEstimate
    memory_setup: MemorySetup
    targets: list[MemoryTarget]
    gpus: GpuSurvey
    advice: list[Advice]
    schedule: Schedule | None = None
    """None without data: the step counts need the number of examples."""
    data: DataView | None = None
    summary: DataSummary | None = None
    problems: list[Problem] = field(default_factory=list)
    """Errors (a run could not start), warnings and notes, each with the key it concerns."""
    length_why: str = "max_length"
    """Why the memory is planned at its sequence length (planned_length)."""
    tokens: Tokens | None = None
    """Rows, real tokens per step and padding under the packing settings; None without data."""
    flops_per_token: float = 0.0
    """Model FLOPs of training one real token (plan/flops.py), for the MFU a run can reach."""

    @property
    def blocking(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]


def model_facts(config: RunConfig) -> ModelFacts:
    """Stage 1, cached per model."""
    return load_model_facts(config.get("model.path"), config.get("model.revision"),
                            bool(config.get("model.trust_remote_code")))


# --------------------------------------------------------------------------------------------------------------
# Stage 2: the data summary


_SUMMARIES: OrderedDict[tuple[Any, ...], DataSummary] = OrderedDict()
_SUMMARIES_LOCK = threading.Lock()
_KEPT_SUMMARIES = 4


def _file_state(source: str | None) -> tuple[int, int] | None:
    """Size and modification time, so that a file edited since is read again."""
    if not source or not Path(source).exists():
        return None
    stat = os.stat(source)
    return stat.st_size, stat.st_mtime_ns


def data_key(config: RunConfig) -> tuple[Any, ...]:
    """Everything the data summary depends on."""
    columns = config.get("data.columns")
    return (config.get("data.train"), config.get("data.eval"), config.get("data.format"),
            tuple(sorted(columns.items())) if isinstance(columns, dict) else columns, config.get("data.train_on"),
            config.get("data.reasoning"), config.get("model.path"), config.get("model.revision"),
            config.get("model.chat_template"),
            bool(config.get("model.trust_remote_code")),
            _file_state(config.get("data.train")), _file_state(config.get("data.eval")))


def data_summary(config: RunConfig, work: Work | None = None,
                 loaded: tuple[Any, list[str]] | None = None) -> DataSummary:
    """Stage 2, cached per data_key (and on disk by the data pass itself: data/store.py). Raises DataError or
    LoadError, or Cancelled when `work` is cancelled. `loaded`: what load_tokenizer returned, when it was called."""
    key = data_key(config)
    with _SUMMARIES_LOCK:
        if key in _SUMMARIES:
            _SUMMARIES.move_to_end(key)
            return _SUMMARIES[key]
    tokenizer, template_warnings = loaded or load_tokenizer(config)
    summary = summarise(config, tokenizer, work, template_warnings)
    with _SUMMARIES_LOCK:
        _SUMMARIES[key] = summary
        while len(_SUMMARIES) > _KEPT_SUMMARIES:
            _SUMMARIES.popitem(last=False)
    return summary


# --------------------------------------------------------------------------------------------------------------
# Stage 3: the per-keystroke plan


def startup_problems(config: RunConfig, need_data: bool = True) -> list[Problem]:
    """What stops a run before anything is loaded: no data, a missing local file, an output directory in use.
    A plan does not need data (`need_data=False`): it covers the model and the memory without it."""
    problems = []
    if need_data and not config.get("data.train"):
        problems.append(Problem("choose the training data (a file, a directory or a hub dataset id)",
                                Location(key="data.train")))
    model = config.get("model.path")
    if model and not Path(model).exists() and not looks_like_hub_id(model):
        problems.append(Problem(f"{model}: no such directory, and not a hub id (org/name)", Location(key="model.path")))
    for key in ("data.train", "data.eval"):
        value = config.get(key)
        if value and not Path(value).exists() and not looks_like_hub_id(value):
            problems.append(Problem(f"{value}: no such file or directory", Location(key=key)))
    output = config.get("training.output_dir")
    problem = output_dir_problem(output) if output else None
    return problems + ([problem] if problem else [])


def check_before_start(config: RunConfig, work: Work | None = None) -> None:
    """What would stop a run before it trains, found before anything of it is written: a missing file or an output
    directory in use (ConfigError), and data that cannot be read, is invalid or would train on nothing (DataError;
    LoadError for the tokenizer), read as the run will read it (the data summary, stage 2)."""
    problems = startup_problems(config)
    if problems:
        raise ConfigError(problems)
    refuse_blocking(view_of(data_summary(config, work), config, model_facts(config).context_length))


def plan_run(config: RunConfig, facts: ModelFacts, summary: DataSummary | None, gpus: GpuSurvey,
             world_size: int = 1, host: HostReading | None = None, strategy: Strategy = "ddp") -> Plan:
    """Stage 3: everything that follows from the facts, the data summary and the settings. Raises ConfigError
    for settings this machine cannot run (fp16 without a GPU). With several GPUs (`world_size` processes sharing
    the work by `strategy`), the memory is per GPU and `gpus` are those the run is to use (GpuSurvey.only)."""
    device = device_from_survey(gpus)
    view = view_of(summary, config, facts.context_length) if summary is not None else None
    resolved = resolve(config, device, data_max_length=(view.max_length, view.max_length_why) if view else None,
                       world_size=world_size, strategy=strategy, train_lengths=view.train_lengths if view else None)
    tokens = tokens_of(resolved, view.train_lengths) if view else None
    schedule = schedule_of(resolved, view.train_examples, view.eval_examples, world_size,
                           tokens.sequences) if view and tokens else None
    setup = memory_setup(resolved, facts.context_length, world_size, "cuda" if gpus.gpus else "cpu", strategy)
    problems = list(view.findings) if view else []
    if resolved.get("training.max_length") == AUTO:
        problems.append(Problem(f"max_length is auto and there is no data to measure: memory is estimated at "
                                f"{setup.seq_len} tokens", Location(key="training.max_length"), "info"))
    estimate = estimate_memory(facts, setup)
    effective_batch = setup.micro_batch * resolved.get("training.gradient_accumulation_steps") * world_size
    targets = [MemoryTarget(f"GPU {g.index} {g.name}", g.memory_free, verdict(estimate, g.memory_free),
                            largest_micro_batch(facts, setup, g.memory_free, effective_batch)) for g in gpus.gpus]
    if not targets:
        available = (host or read_host()).memory_available
        targets.append(MemoryTarget(f"CPU RAM (no GPU: {gpus.reason})", available, verdict(estimate, available),
                                    largest_micro_batch(facts, setup, available, effective_batch)))
    lengths = LengthStats(view.lengths["p95"], view.lengths["p99"], view.train_examples) if view else None
    advice = advise(Context(resolved, schedule, facts, lengths, device, world_size, tokens, estimate))
    shape = lora_shape(resolved)
    context = mean_context(view.train_lengths) if view else (setup.seq_len + 1) / 2
    return Plan(resolved, facts, trainable_params(facts, resolved.method, shape),
                peft_total_params(facts, resolved.method, shape), estimate, setup, targets, gpus, advice, schedule,
                view, summary, problems, planned_length(resolved, facts.context_length)[1], tokens,
                training_flops_per_token(facts, resolved.method, shape, context))


def make_plan(config: RunConfig, world_size: int = 1, gpus: GpuSurvey | None = None, work: Work | None = None,
              host: HostReading | None = None, strategy: Strategy = "ddp") -> Plan:
    """The three stages in order, as `tuneterm plan` runs them. Raises LoadError when the model cannot be read;
    data that cannot be read becomes problems of the plan, which is made without it."""
    facts = model_facts(config)
    problems = startup_problems(config, need_data=False)
    summary = None
    if config.get("data.train") and not any(p.location.key in ("data.train", "data.eval") for p in problems):
        try:
            summary = data_summary(config, work)
        except (DataError, LoadError) as exc:
            problems.append(Problem(exc.summary, Location(key="data.train")))
            problems += exc.problems[:20]
    plan = plan_run(config, facts, summary, gpus if gpus is not None else read_gpus(), world_size, host, strategy)
    plan.problems[:0] = problems
    return plan


def lora_shape(config: RunConfig) -> LoraShape:
    if config.method == "full":
        return LoraShape()
    targets = config.get("lora.target_modules")
    return LoraShape(config.get("lora.r"), tuple(targets) if isinstance(targets, list) else targets,
                     config.get("lora.use_dora"), config.get("lora.bias"))


def planned_length(config: RunConfig, context_length: int | None) -> tuple[int, str]:
    """The sequence length memory is planned at, and why: max_length, never beyond the model's context length."""
    length = config.get("training.max_length")
    if not isinstance(length, int):
        return ((context_length, "the model's context length: max length is auto and no data is read")
                if context_length and context_length < UNKNOWN_LENGTH else
                (UNKNOWN_LENGTH, "max length is auto and no data is read"))
    if context_length and length > context_length:
        return context_length, f"the model's context length; the max length is {length}"
    return length, "the max length"


def memory_setup(config: RunConfig, context_length: int | None, world_size: int = 1, device: str = "cuda",
                 strategy: Strategy = "ddp") -> MemorySetup:
    eval_batch = config.get("training.per_device_eval_batch_size")
    return MemorySetup(
        method=config.method,
        micro_batch=config.get("training.per_device_train_batch_size"),
        seq_len=planned_length(config, context_length)[0],
        eval_batch=eval_batch if isinstance(eval_batch, int) else None,
        gradient_checkpointing=config.get("training.gradient_checkpointing"),
        attn_implementation=config.get("model.attn_implementation"),
        optim=config.get("training.optim"),
        precision=config.get("training.precision") if config.get("training.precision") != AUTO else "bf16",
        lora=lora_shape(config),
        quant_type=config.get("quantization.bnb_4bit_quant_type") or "nf4",
        double_quant=bool(config.get("quantization.bnb_4bit_use_double_quant", True)),
        world_size=world_size,
        strategy=strategy,
        device=device,
        fused_lm_head=not config.get("training.label_smoothing_factor"),
        padding_free=flattens_rows(config),
        activation_offloading=bool(config.get("training.activation_offloading")),
    )
