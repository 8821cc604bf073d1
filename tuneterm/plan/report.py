"""Everything knowable before training, in one object: what `tuneterm plan` prints and the plan screen shows.

make_plan() gathers the model facts (config.json only), the data statistics (when the data and the tokenizer
are at hand), the schedule, the memory estimate with a verdict for every GPU (or the host's RAM on a machine
without one) and the advice, all from the same resolution the engine will apply. Nothing here needs a GPU or
the network beyond what the model path itself needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.config import AUTO, RunConfig
from tuneterm.hardware import GpuSurvey, device_from_survey, read_gpus, read_host
from tuneterm.plan.advice import Advice, Context, LengthStats, advise
from tuneterm.plan.memory import (BatchAdvice, MemoryEstimate, MemorySetup, Verdict, estimate_memory,
                                  largest_micro_batch, size, verdict)
from tuneterm.plan.model import LoraShape, ModelFacts, load_model_facts, peft_total_params, trainable_params
from tuneterm.plan.resolve import resolve, schedule_of
from tuneterm.plan.schedule import Schedule

UNKNOWN_LENGTH = 1024
"""Sequence length the memory is estimated at when max_length is auto and the data cannot be read."""


@dataclass(frozen=True)
class DataSummary:
    train_file: str
    format: str
    evidence: str
    train_examples: int
    eval_examples: int
    lengths: dict[str, int]
    """p50, p90, p95, p99 and max token length of the training examples (before truncation)."""
    max_length: int
    max_length_why: str
    warnings: list[str]


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
    facts: ModelFacts
    trainable_params: int
    total_params: int
    memory: MemoryEstimate
    memory_setup: MemorySetup
    targets: list[MemoryTarget]
    gpus: GpuSurvey
    advice: list[Advice]
    schedule: Schedule | None = None
    data: DataSummary | None = None
    problems: list[str] = field(default_factory=list)
    """What could not be worked out (unreadable data, no tokenizer...), each in a sentence."""


def make_plan(config: RunConfig, world_size: int = 1, gpus: GpuSurvey | None = None) -> Plan:
    facts = load_model_facts(config.get("model.path"), config.get("model.revision"),
                             config.get("model.trust_remote_code"))
    gpus = gpus if gpus is not None else read_gpus()
    device = device_from_survey(gpus)
    problems: list[str] = []
    data = _summarise_data(config, facts, problems)
    resolved = resolve(config, device, train_examples=data.train_examples if data else None,
                       data_max_length=(data.max_length, data.max_length_why) if data else None,
                       world_size=world_size)
    schedule = schedule_of(resolved, data.train_examples, data.eval_examples, world_size) if data else None
    setup = memory_setup(resolved, world_size, "cuda" if gpus.gpus else "cpu")
    if resolved.get("training.max_length") == AUTO:
        problems.append(f"max_length is auto and the data could not be measured: memory is estimated at "
                        f"{UNKNOWN_LENGTH} tokens")
    estimate = estimate_memory(facts, setup)
    effective_batch = setup.micro_batch * resolved.get("training.gradient_accumulation_steps") * world_size
    targets = [MemoryTarget(f"GPU {g.index} {g.name}", g.memory_free, verdict(estimate, g.memory_free),
                            largest_micro_batch(facts, setup, g.memory_free, effective_batch)) for g in gpus.gpus]
    if not targets:
        available = read_host().memory_available
        targets.append(MemoryTarget("CPU RAM (no GPU: " + gpus.reason + ")", available, verdict(estimate, available),
                                    largest_micro_batch(facts, setup, available, effective_batch)))
    lengths = LengthStats(data.lengths["p95"], data.lengths["p99"], data.train_examples) if data else None
    advice = advise(Context(resolved, schedule, facts, lengths, device, world_size))
    shape = lora_shape(resolved)
    return Plan(resolved, facts, trainable_params(facts, resolved.method, shape),
                peft_total_params(facts, resolved.method, shape), estimate, setup, targets, gpus, advice, schedule,
                data, problems)


def lora_shape(config: RunConfig) -> LoraShape:
    if config.method == "full":
        return LoraShape()
    targets = config.get("lora.target_modules")
    return LoraShape(config.get("lora.r"), tuple(targets) if isinstance(targets, list) else targets,
                     config.get("lora.use_dora"), config.get("lora.bias"))


def memory_setup(config: RunConfig, world_size: int = 1, device: str = "cuda") -> MemorySetup:
    length = config.get("training.max_length")
    eval_batch = config.get("training.per_device_eval_batch_size")
    return MemorySetup(
        method=config.method,
        micro_batch=config.get("training.per_device_train_batch_size"),
        seq_len=length if isinstance(length, int) else UNKNOWN_LENGTH,
        eval_batch=eval_batch if isinstance(eval_batch, int) else None,
        gradient_checkpointing=config.get("training.gradient_checkpointing"),
        attn_implementation=config.get("model.attn_implementation"),
        optim=config.get("training.optim"),
        precision=config.get("training.precision") if config.get("training.precision") != AUTO else "bf16",
        lora=lora_shape(config),
        quant_type=config.get("quantization.bnb_4bit_quant_type") or "nf4",
        double_quant=bool(config.get("quantization.bnb_4bit_use_double_quant", True)),
        world_size=world_size,
        device=device,
    )


def _summarise_data(config: RunConfig, facts: ModelFacts, problems: list[str]) -> DataSummary | None:
    from tuneterm.data.prepare import prepare
    from tuneterm.data.records import DataError, looks_like_hub_id

    train = config.get("data.train")
    if not train or not (Path(train).exists() or looks_like_hub_id(train)):
        problems.append(f"data.train {train} does not exist: no data statistics or schedule")
        return None
    from tuneterm.data.stats import percentiles
    from tuneterm.engine.loading import LoadError, load_tokenizer

    try:
        tokenizer, template_warnings = load_tokenizer(config)
        prepared = prepare(config, tokenizer, facts.context_length)
    except (DataError, LoadError) as exc:
        problems.append(str(exc))
        return None
    return DataSummary(train, prepared.detection.format, prepared.detection.evidence, len(prepared.train.examples),
                       len(prepared.eval.examples) if prepared.eval else 0, percentiles(prepared.lengths),
                       prepared.max_length, prepared.max_length_why, template_warnings + prepared.warnings)


# --------------------------------------------------------------------------------------------------------------
# Output


def plan_to_json(plan: Plan) -> dict[str, Any]:
    first = plan.targets[0]
    return {
        "config": plan.config.to_nested(),
        "defaulted": sorted(plan.config.defaulted),
        "derived": plan.config.notes,
        "model": {**{k: v for k, v in asdict(plan.facts).items() if k != "linear"},
                  "all_linear_names": plan.facts.all_linear_names, "total_params": plan.total_params,
                  "base_params": plan.facts.total_params, "trainable_params": plan.trainable_params},
        "data": asdict(plan.data) if plan.data else None,
        "schedule": asdict(plan.schedule) if plan.schedule else None,
        "memory": {
            "total_bytes": plan.memory.total_bytes,
            "peak_allocated_bytes": plan.memory.peak_allocated,
            "peak_reserved_bytes": plan.memory.peak_reserved,
            "paged_optimizer_bytes": plan.memory.paged_optimizer_bytes,
            "breakdown": plan.memory.breakdown,
            "setup": asdict(plan.memory_setup),
            "verdict": {"level": first.verdict.level, "why": first.verdict.why, "device": first.name},
            "devices": [{"device": t.name, "free_bytes": t.free_bytes, "verdict": t.verdict.level,
                         "why": t.verdict.why, "largest_micro_batch": t.largest_micro_batch.micro_batch,
                         "accumulation": t.largest_micro_batch.accumulation} for t in plan.targets],
        },
        "gpus": {"driver": plan.gpus.driver, "reason": plan.gpus.reason,
                 "devices": [{**asdict(g), "bf16": g.bf16} for g in plan.gpus.gpus]},
        "advice": [{**asdict(a), "set": a.as_set_arguments()} for a in plan.advice],
        "problems": plan.problems,
    }


def format_plan(plan: Plan) -> str:
    f, s = plan.facts, plan.memory_setup
    lines = [f"Model     {f.architecture} ({f.model_type}): {f.layers} layers, hidden {f.hidden_size}, {f.heads} heads "
             f"({f.kv_heads} KV), vocab {f.vocab_size:,}" + (f", context {f.context_length:,}" if f.context_length else "")]
    share = plan.trainable_params / plan.total_params if plan.total_params else 0
    if plan.config.method == "full":
        lines.append(f"          {f.total_params:,} parameters, all trained (full fine-tuning)")
    else:
        targets = plan.config.get("lora.target_modules")
        resolved = ", ".join(f.all_linear_names) if targets == "all-linear" else targets
        lines.append(f"          {plan.config.method} r{s.lora.r} on {targets} ({resolved}): "
                     f"{plan.trainable_params:,} of {plan.total_params:,} parameters trainable ({share:.2%})")
    if plan.data:
        d = plan.data
        lines.append(f"Data      {d.train_file}: {d.format} ({d.evidence}); {d.train_examples:,} train, "
                     f"{d.eval_examples:,} eval")
        lines.append("          token lengths " + ", ".join(f"{k} {v:,}" for k, v in d.lengths.items()) +
                     f"; max_length {d.max_length} ({d.max_length_why})")
        lines += [f"          warning: {w}" for w in d.warnings]
    if plan.schedule:
        sc = plan.schedule
        evaluation = f"eval every {sc.eval_steps} steps, " if sc.eval_steps else "no evaluation, "
        lines.append(f"Schedule  effective batch {sc.effective_batch_size} ({s.micro_batch} x "
                     f"{plan.config.get('training.gradient_accumulation_steps')} x {s.world_size} GPU{'s' if s.world_size > 1 else ''}); "
                     f"{sc.steps_per_epoch:,} steps per epoch, {sc.total_steps:,} in total; warmup {sc.warmup_steps} "
                     f"steps; {evaluation}checkpoint every {sc.save_steps}")
    lines.append(f"Memory    per {'GPU' if s.device == 'cuda' else 'process'} at {s.seq_len} tokens x micro-batch {s.micro_batch}, {s.precision}, "
                 f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, {s.attn_implementation}, {s.optim}:")
    parts = [(name.replace("_", " "), value) for name, value in plan.memory.breakdown.items() if value >= 1e6]
    for start in range(0, len(parts), 4):
        lines.append("            " + "   ".join(f"{name} {size(value)}" for name, value in parts[start:start + 4]))
    paged = f"; paged optimizer states {size(plan.memory.paged_optimizer_bytes)} can move to host RAM" \
        if plan.memory.paged_optimizer_bytes else ""
    counted = "as nvidia-smi counts it" if s.device == "cuda" else "of RAM"
    lines.append(f"          about {size(plan.memory.total_bytes)} {counted} (peak allocated "
                 f"{size(plan.memory.peak_allocated)}){paged}")
    for target in plan.targets:
        batch = target.largest_micro_batch
        fit = (f"; largest micro-batch with headroom: {batch.micro_batch} (accumulation {batch.accumulation})"
               if batch.micro_batch else "")
        lines.append(f"{'Device':10s}{target.name}: {target.verdict.level.upper()} - {target.verdict.why}{fit}")
    if plan.advice:
        lines.append("Advice")
        for a in plan.advice:
            lines.append(f"  {a.level:8s}{a.field}: {a.message}")
            lines.append(f"          why: {a.why} ({a.source})")
            if a.fix:
                lines.append(f"          fix: {a.as_set_arguments()}")
    for problem in plan.problems:
        lines.append(f"Note      {problem}")
    lines.append("")
    lines.append("Resolved config (values you did not set are marked default or derived):")
    lines.append(plan.config.to_yaml().split("\n", 2)[2].rstrip())
    return "\n".join(lines)
