"""What `tuneterm plan` prints: the plan as text for a person, or as JSON for a script.

The plan itself is made in stages by planner.py, the same stages the app runs; this module only writes it out.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tuneterm.errors import listed
from tuneterm.plan.memory import parts_adding_up, size
from tuneterm.plan.planner import Plan


def plan_to_json(plan: Plan) -> dict[str, Any]:
    first = plan.targets[0]
    return {
        "config": plan.config.to_nested(),
        "defaulted": sorted(plan.config.defaulted),
        "derived": plan.config.notes,
        "model": {**{k: v for k, v in asdict(plan.facts).items() if k != "linear"},
                  "all_linear_names": plan.facts.all_linear_names, "total_params": plan.total_params,
                  "base_params": plan.facts.total_params, "trainable_params": plan.trainable_params},
        "data": _data_json(plan),
        "schedule": asdict(plan.schedule) if plan.schedule else None,
        "tokens": asdict(plan.tokens) if plan.tokens else None,
        "flops_per_token": plan.flops_per_token,
        "memory": {
            "total_bytes": plan.memory.total_bytes,
            "peak_allocated_bytes": plan.memory.peak_allocated,
            "peak_reserved_bytes": plan.memory.peak_reserved,
            "paged_optimizer_bytes": plan.memory.paged_optimizer_bytes,
            "offloaded_activation_bytes": plan.memory.offloaded_bytes,
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
        "problems": [p.to_json() for p in plan.problems],
    }


def _data_json(plan: Plan) -> dict[str, Any] | None:
    if plan.data is None or plan.summary is None:
        return None
    view, train = plan.data, plan.summary.train
    return {"train_file": train.source, "eval_file": plan.summary.eval.source if plan.summary.eval else None,
            "format": train.detection.format, "evidence": train.detection.evidence,
            "train_examples": view.train_examples, "eval_examples": view.eval_examples, "lengths": view.lengths,
            "max_length": view.max_length, "max_length_why": view.max_length_why,
            "truncated_examples": view.truncation.truncated_examples,
            "response_tokens_lost": view.truncation.response_tokens_lost}


_SHARING = {"single": "a full replica each", "ddp": "a full replica each",
            "fsdp": "weights, gradients and optimizer state sharded",
            "deepspeed-zero2": "gradients and optimizer state sharded",
            "deepspeed-zero3": "weights, gradients and optimizer state sharded"}


def tokens_line(plan: Plan, brief: bool = False) -> str:
    """What the data gives a step under the packing settings: the speed that packing buys is read here. `brief`:
    without the reasons and the FLOPs, for a narrow panel."""
    t, config = plan.tokens, plan.config
    if t is None:
        return ""
    if config.get("training.packing") is True:
        packed = (f"packed ({config.get('training.packing_strategy')}) into "
                  f"{t.sequences:,} rows of {config.get('training.max_length')}")
    else:
        packed = "not packed" + (", padding-free" if t.padding_free else "")
    padding = "no padding" if t.padding_free or not t.padding_share else f"{t.padding_share:.0%} of it padding"
    if brief:
        return f"{t.real_per_step:,.0f} real tokens per step, {padding}; {packed}"
    why = config.why("training.packing")
    return (f"{t.real_per_step:,.0f} real tokens per optimizer step, {padding}; {packed}"
            + (f" ({why})" if "training.packing" in config.notes else "")
            + f"; {plan.flops_per_token / 1e9:,.3g} GFLOP of training per real token")


def format_plan(plan: Plan) -> str:
    f, s = plan.facts, plan.memory_setup
    context = f", context {f.context_length:,}" if f.context_length else ""
    lines = [f"Model     {f.architecture} ({f.model_type}): {f.layers} layers, hidden {f.hidden_size}, {f.heads} heads "
             f"({f.kv_heads} KV), vocab {f.vocab_size:,}{context}"]
    share = plan.trainable_params / plan.total_params if plan.total_params else 0
    if plan.config.method == "full":
        lines.append(f"          {f.total_params:,} parameters, all trained (full fine-tuning)")
    else:
        targets = plan.config.get("lora.target_modules")
        resolved = ", ".join(f.all_linear_names) if targets == "all-linear" else targets
        lines.append(f"          {plan.config.method} r{s.lora.r} on {targets} ({resolved}): "
                     f"{plan.trainable_params:,} of {plan.total_params:,} parameters trainable ({share:.2%})")
    lines.append(f"          from {plan.config.get('model.path')}")
    if plan.data and plan.summary:
        d, train = plan.data, plan.summary.train
        evaluation = f" (eval from {plan.summary.eval.source})" if plan.summary.eval else ""
        lines.append(f"Data      {train.source}{evaluation}: {train.detection.format} ({train.detection.evidence}); "
                     f"{d.train_examples:,} train, {d.eval_examples:,} eval")
        lines.append("          token lengths " + ", ".join(f"{k} {v:,}" for k, v in d.lengths.items()) +
                     f"; max_length {d.max_length} ({d.max_length_why})")
    if not plan.schedule:
        lines.append("Schedule  needs the data: steps per epoch, total steps, warmup and the evaluation interval "
                     "follow from the number of examples")
    else:
        sc = plan.schedule
        evaluation = ("no evaluation, " if not sc.eval_steps else "eval every step, " if sc.eval_steps == 1
                      else f"eval every {sc.eval_steps} steps, ")
        gpus = f"{s.world_size} GPU{'s' if s.world_size > 1 else ''}"
        lines.append(f"Schedule  effective batch {sc.effective_batch_size} ({s.micro_batch} x "
                     f"{plan.config.get('training.gradient_accumulation_steps')} x {gpus}); "
                     f"{sc.steps_per_epoch:,} steps per epoch, {sc.total_steps:,} in total; warmup {sc.warmup_steps} "
                     f"steps; {evaluation}checkpoint every {sc.save_steps}")
    if plan.tokens:
        lines.append(f"Tokens    {tokens_line(plan)}")
    per = "GPU" if s.device == "cuda" else "process"
    if s.world_size > 1:
        per += f" of {s.world_size} ({s.strategy}: {_SHARING[s.strategy]})"
    lines.append(f"Memory    per {per} at {s.seq_len} tokens ({plan.length_why}) x micro-batch {s.micro_batch}, "
                 f"{s.precision}, checkpointing {'on' if s.gradient_checkpointing else 'off'}, "
                 f"{s.attn_implementation}, {s.optim}:")
    parts = parts_adding_up(plan.memory.breakdown)
    for start in range(0, len(parts), 4):
        lines.append("            " + "   ".join(f"{name} {written}" for name, written in parts[start:start + 4]))
    paged = f"; paged optimizer states {size(plan.memory.paged_optimizer_bytes)} can move to host RAM" \
        if plan.memory.paged_optimizer_bytes else ""
    if plan.memory.offloaded_bytes:
        paged += f"; activations offloaded to host RAM {size(plan.memory.offloaded_bytes)}"
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
    label = {"error": "Problem", "warning": "Warning", "info": "Note"}
    for problem in sorted(plan.problems, key=lambda p: ("error", "warning", "info").index(p.level)):
        lines.append(f"{label[problem.level]:10s}{problem}")
        details = listed(problem.details, indent=" " * 12)
        if details:
            lines.append(details)
    lines.append("")
    lines.append("Resolved config (values you did not set are marked default or derived):")
    lines.append(plan.config.to_yaml().split("\n", 2)[2].rstrip())
    return "\n".join(lines)
