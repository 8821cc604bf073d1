"""Before anything runs: each variation's plan, what the whole experiment costs, and what cannot run.

Each variation is planned as `tuneterm plan` plans a run (the same three stages: its model facts and data summary
come from the planner's caches, so the variations of one model and one dataset read them once): its steps, its
memory against the free memory of the GPU it will train on (every GPU, side by side) or the host's RAM, and its
time, when a run of the same model and method has trained on this device before (in the runs directory, or an
earlier variation of an experiment there): planned tokens at the rate that run measured. A variation that cannot
run is named with why: its config is invalid, something would stop `tuneterm train` (no data, a missing file, data
it cannot train on), it will not fit, or it is the same as another.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tuneterm.config import RunConfig
from tuneterm.engine.after.report import clock, tokens_seen, training_seconds
from tuneterm.engine.events import EVENTS_FILE, RunStarted, read_events
from tuneterm.engine.experiment.definition import ExperimentSpec, Variation, check_variations, short_name, value_text
from tuneterm.engine.rundir.runs import list_runs
from tuneterm.errors import Location, Problem, TuneTermError
from tuneterm.hardware import GpuSurvey
from tuneterm.plan.memory import size
from tuneterm.plan.planner import Plan, startup_problems

RATE_STATUSES = ("completed", "early_stopped", "stopped")
"""Runs whose time and tokens say how fast this machine trains (a failed run's may stop anywhere)."""


@dataclass(frozen=True)
class MeasuredRate:
    """How fast a run trained: tokens trained per second of its run, evaluation and saving included."""

    tokens_per_second: float
    run_dir: Path

    def describe(self) -> str:
        return f"{self.tokens_per_second:,.0f} tokens/s, as {self.run_dir.name} trained (evaluations included)"


@dataclass(frozen=True)
class VariationPlan:
    variation: Variation
    config: RunConfig | None
    """None when the config is invalid."""
    plan: Plan | None
    problems: list[Problem]
    """Why it cannot run; empty when it can."""
    tokens: int | None = None
    """Training tokens planned (padding excluded, each example cut at max length), epochs or max_steps included."""
    seconds: float | None = None
    """Estimated from a measured rate; None without one."""

    @property
    def runnable(self) -> bool:
        return self.config is not None and not self.problems

    @property
    def not_run(self) -> str:
        """Why it does not run, in one line ("" when it does)."""
        return "; ".join(str(problem) for problem in self.problems)


@dataclass
class ExperimentPlan:
    spec: ExperimentSpec
    variations: list[VariationPlan]
    rate: MeasuredRate | None

    @property
    def runnable(self) -> list[VariationPlan]:
        return [v for v in self.variations if v.runnable]

    @property
    def total_steps(self) -> int:
        return sum(v.plan.schedule.total_steps for v in self.runnable if v.plan and v.plan.schedule)

    @property
    def total_seconds(self) -> float | None:
        """Until the last variation ends: their sum one after another; side by side, each starting on the first GPU
        that is free. None when a runnable variation's time is unknown."""
        times = [v.seconds for v in self.runnable]
        if not times or any(t is None for t in times):
            return None
        gpus = [0.0] * max(1, len(self.spec.gpus))
        for seconds in times:
            heapq.heapreplace(gpus, gpus[0] + (seconds or 0.0))
        return max(gpus)


def plan_experiment(spec: ExperimentSpec, plan_of: Callable[[RunConfig], Plan],
                    rate: MeasuredRate | None = None) -> ExperimentPlan:
    """Every variation checked and planned with `plan_of` (make_plan on the GPUs it will use, or the wizard's
    stage 3 over the facts and data it has read). It must fit every memory target of its plan."""
    planned = []
    for checked in check_variations(spec):
        if checked.config is None:
            planned.append(VariationPlan(checked.variation, None, None, checked.problems))
            continue
        try:
            plan = plan_of(checked.config)
        except TuneTermError as exc:
            planned.append(VariationPlan(checked.variation, checked.config, None,
                                         [Problem(exc.summary)] + exc.problems[:3]))
            continue
        # (Each variation gets a run directory of its own in the experiment: the base's output_dir is not used.)
        starting = [p for p in startup_problems(checked.config) if p.location.key != "training.output_dir"]
        problems = list({str(p): p for p in [*starting, *plan.blocking]}.values())
        problems += [Problem(f"will not fit on {t.name}: {t.verdict.why}") for t in plan.targets
                     if t.verdict.level == "will not fit"]
        tokens = planned_tokens(plan)
        seconds = tokens / rate.tokens_per_second if rate is not None and tokens is not None else None
        planned.append(VariationPlan(checked.variation, checked.config, plan, problems, tokens, seconds))
    return ExperimentPlan(spec, planned, rate)


def planned_tokens(plan: Plan) -> int | None:
    """The tokens its training will take in: every training example up to the max length, once per epoch (or as
    many steps as max_steps runs)."""
    if plan.schedule is None or plan.data is None or plan.summary is None:
        return None
    lengths = plan.summary.train.lengths[plan.data.train_indices]
    per_epoch = int(np.minimum(lengths, plan.data.max_length).sum())
    return round(per_epoch * plan.schedule.total_steps / max(1, plan.schedule.steps_per_epoch))


def measured_rate(config: RunConfig, device: str, roots: Sequence[Path]) -> MeasuredRate | None:
    """The rate of the newest run under `roots` (runs directories, experiments) that trained the same model with
    the same method on the same device, to the end or until it was stopped; None when there is none."""
    candidates = [summary for root in roots for summary in list_runs(root)
                  if summary.status in RATE_STATUSES and summary.model == config.get("model.path")
                  and summary.method == config.method]
    for summary in sorted(candidates, key=lambda s: s.updated, reverse=True)[:10]:
        events = read_events(summary.run_dir / EVENTS_FILE, lambda skipped: None)
        started = next((e for e in reversed(events) if isinstance(e, RunStarted)), None)
        seconds, tokens = training_seconds(events), tokens_seen(summary.run_dir)
        if started is not None and started.device == device and seconds > 0 and tokens:
            return MeasuredRate(tokens / seconds, summary.run_dir)
    return None


def side_by_side_problems(gpus: tuple[int, ...], survey: GpuSurvey) -> list[Problem]:
    """GPUs asked for that this machine does not have (NVML's numbers)."""
    present = {g.index for g in survey.gpus}
    missing = [gpu for gpu in gpus if gpu not in present]
    if not missing:
        return []
    have = ", ".join(str(g) for g in sorted(present)) or f"none ({survey.reason})"
    return [Problem(f"no GPU {', '.join(map(str, missing))} here (this machine's GPUs: {have})",
                    Location(key="--gpus"))]


def format_experiment_plan(plan: ExperimentPlan) -> str:
    """The plan as `tuneterm experiment` prints it: a line per variation, the total, and what does not run."""
    heading, table, notes = plan_parts(plan)
    return "\n".join([heading, *table, *notes])


def plan_parts(plan: ExperimentPlan) -> tuple[str, list[str], list[str]]:
    """The plan's heading, its table (a line per variation, then the total; never to be wrapped) and its notes (the
    time's source, what does not run and why)."""
    spec = plan.spec
    first = next((v.plan for v in plan.variations if v.plan is not None), None)
    where = (f"one per GPU side by side (GPUs {', '.join(map(str, spec.gpus))})" if spec.gpus else
             f"one after another on {first.targets[0].name.split(' (')[0]}" if first is not None and first.targets else
             "one after another")
    heading = (f"Experiment {spec.name}: {len(plan.runnable)} of {len(plan.variations)} variations of "
               f"{spec.base_source} run, {where}")
    keys = spec.varied
    header = ["variation", *(short_name(key) for key in keys), "steps", "memory", "", "time"]
    rows = [header]
    for v in plan.variations:
        values = [value_text(v.variation.overrides.get(key, spec.base.get(key))) for key in keys]
        schedule = v.plan.schedule if v.plan is not None else None
        verdict = v.plan.targets[0].verdict.level if v.plan is not None and v.plan.targets else ""
        rows.append([v.variation.name, *values, f"{schedule.total_steps:,}" if schedule else "?",
                     size(v.plan.memory.total_bytes) if v.plan is not None else "-",
                     verdict if v.runnable else "NOT RUN",
                     clock(v.seconds) if v.seconds is not None else "?" if v.runnable else "-"])
    total = plan.total_seconds
    rows.append(["total", *([""] * len(keys)), f"{plan.total_steps:,}", "", "",
                 clock(total) if total is not None else "?"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    table = ["  " + "  ".join(cell.ljust(width) if i == 0 or i > len(keys) + 2 else cell.rjust(width)
                              for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    notes = [f"  time at {plan.rate.describe()}" if plan.rate is not None else
             "  time: no run of this model and method has trained on this device yet; the first variation "
             "measures the rate the others are estimated at"]
    reasons: dict[str, list[str]] = {}
    for v in plan.variations:
        if not v.runnable:
            reasons.setdefault(v.not_run, []).append(v.variation.name)
    if reasons:
        notes.append("Not run:")
        notes += [f"  {', '.join(names)}: {reason}" for reason, names in reasons.items()]
    return heading, table, notes


def with_not_run(plan: ExperimentPlan) -> list[tuple[Variation, RunConfig | None]]:
    """The variations as experiment.yaml keeps them: each with its config, and why it does not run."""
    return [(replace(v.variation, not_run=v.not_run), v.config) for v in plan.variations]
