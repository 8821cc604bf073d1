"""The panel beside the wizard that answers "will it fit, and how long is it": recomputed on every change.

It shows what the per-keystroke planning stage returns and nothing it works out itself: the memory breakdown as
a bar against each GPU's free memory (or the host's RAM without a GPU) with the verdict and the largest
micro-batch that fits at the same effective batch, the step arithmetic, and the planned learning-rate curve.
"""

from __future__ import annotations

import itertools

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

from tuneterm.plan.memory import parts_adding_up, size
from tuneterm.plan.planner import Plan
from tuneterm.plan.report import tokens_line
from tuneterm.plan.schedule import learning_rates
from tuneterm.ui.widgets.chart import LineChart

# A theme colour for each part of the estimate (plan/memory.py); the weights a sharding process gathers while it
# computes (FSDP, ZeRO-3) are shown apart from its own shard, and what the parts too small to show add up to is
# "other".
PART_COLOURS = {"weights": "primary", "gathered weights": "primary-darken-3", "adapters": "warning",
                "gradients": "success", "gradient buckets": "success-darken-2", "optimizer": "secondary",
                "activations": "accent", "attention scores": "accent-darken-2", "logits": "accent-lighten-2",
                "evaluation": "accent-darken-3", "allocator slack": "foreground-muted",
                "cuda context": "foreground-darken-3", "other": "foreground-muted"}
_VERDICT_COLOURS = {"fits": "$success", "tight": "$warning", "will not fit": "$error"}


def memory_bar(breakdown: dict[str, float], capacity: float, width: int) -> str:
    """One line of `width` cells for the free memory (or the need, when it is larger, with the end of the free
    memory marked), a run of coloured blocks per part; a need too small for one cell is said in words instead."""
    need = sum(breakdown.values())
    scale = max(capacity, need, 1.0) / width
    if round(need / scale) == 0:
        return f"[$text-muted]▏ {need / max(capacity, 1.0):.2%} of the free memory: too little to draw[/]"
    cells: list[tuple[str, str]] = []
    running = 0.0
    for name, value in breakdown.items():
        running += value
        colour = PART_COLOURS.get(name.replace("_", " "), "foreground-muted")
        cells += [(colour, "█")] * (round(running / scale) - len(cells))
    cells += [("panel-lighten-2", "░")] * (width - len(cells))
    if need > capacity:
        cells[min(width - 1, round(capacity / scale))] = ("error", "┃")
    runs = [(colour, "".join(c for _, c in group)) for colour, group in itertools.groupby(cells, key=lambda c: c[0])]
    return "".join(f"[${colour}]{text}[/]" for colour, text in runs)


def memory_legend(breakdown: dict[str, float]) -> list[str]:
    """Every part, in the unit of the total and adding up to it (plan/memory.py parts_adding_up)."""
    return [f"[${PART_COLOURS.get(name, 'foreground-muted')}]■[/] {name} {written}"
            for name, written in parts_adding_up(breakdown)]


class PlanPanel(VerticalScroll):
    """Shows a Plan; show(None, why) says what is missing instead."""

    def compose(self) -> ComposeResult:
        yield Static("Memory", classes="panel-title")
        yield Static(id="plan-memory")
        yield Static("Schedule", classes="panel-title")
        yield Static(id="plan-schedule")
        yield Static("Learning rate", classes="panel-title")
        yield LineChart(id="plan-lr")

    def show(self, plan: Plan | None, waiting: str = "") -> None:
        memory, schedule = self.query_one("#plan-memory", Static), self.query_one("#plan-schedule", Static)
        chart = self.query_one(LineChart)
        if plan is None:
            memory.update(f"[$text-muted]{waiting}[/]")
            schedule.update("")
            chart.remove_series("planned")
            return
        memory.update(self._memory_text(plan))
        schedule.update(self._schedule_text(plan))
        curve = None
        if plan.schedule is not None:
            curve = learning_rates(plan.config.get("training.lr_scheduler_type"),
                                   plan.config.get("training.learning_rate"), plan.schedule.warmup_steps,
                                   plan.schedule.total_steps, points=200)
        if curve:
            steps, rates = zip(*curve)
            chart.set_series("planned", "planned", steps, rates, "accent")
        else:
            chart.remove_series("planned")

    def _memory_text(self, plan: Plan) -> str:
        width = max(10, self.size.width - 3)
        estimate = plan.memory
        setup = plan.memory_setup
        lines = [f"[b]per GPU[/b], {setup.world_size} GPUs sharing the work by {setup.strategy}"] \
            if setup.world_size > 1 else []
        for target in plan.targets:
            name = target.name if plan.gpus.gpus else "host RAM (no GPU)"
            lines.append(f"[b]{escape(name)}[/b]: {size(target.free_bytes)} free")
            lines.append(memory_bar(estimate.breakdown, target.free_bytes, width))
            colour = _VERDICT_COLOURS[target.verdict.level]
            lines.append(f"[{colour}][b]{target.verdict.level.upper()}[/b][/] {target.verdict.why}")
            batch = target.largest_micro_batch
            if batch.micro_batch:
                lines.append(f"largest micro-batch that fits: [b]{batch.micro_batch}[/b] "
                             f"(accumulation {batch.accumulation}, same effective batch)")
        if not plan.gpus.gpus:
            lines.append(f"[$text-muted]{escape(plan.gpus.reason)}: training runs on the CPU[/]")
        legend = memory_legend(estimate.breakdown)
        per_line = 2 if width >= 40 else 1
        lines += ["   ".join(legend[i:i + per_line]) for i in range(0, len(legend), per_line)]
        lines.append(f"[$text-muted]at {setup.seq_len} tokens ({escape(plan.length_why)}) x micro-batch "
                     f"{setup.micro_batch}, {setup.precision}, checkpointing "
                     f"{'on' if setup.gradient_checkpointing else 'off'}[/]")
        return "\n".join(lines)

    @staticmethod
    def _schedule_text(plan: Plan) -> str:
        config = plan.config
        accumulation = config.get("training.gradient_accumulation_steps")
        micro = config.get("training.per_device_train_batch_size")
        if plan.schedule is None:
            return (f"effective batch [b]{micro * accumulation}[/b] ({micro} x {accumulation})\n"
                    "[$text-muted]steps, warmup and evaluation follow once the data is read[/]")
        s = plan.schedule
        evaluation = ("[$warning]no evaluation[/]" if not s.eval_steps else "eval every step" if s.eval_steps == 1
                      else f"eval every [b]{s.eval_steps}[/b] steps")
        return (f"effective batch [b]{s.effective_batch_size}[/b] ({micro} x {accumulation})\n"
                f"[b]{s.steps_per_epoch:,}[/b] steps per epoch, [b]{s.total_steps:,}[/b] in total\n"
                f"warmup [b]{s.warmup_steps}[/b] steps, {evaluation}\n"
                f"{s.train_examples:,} train / {s.eval_examples:,} eval examples\n"
                f"[$text-muted]{escape(tokens_line(plan, brief=True))}[/]")
