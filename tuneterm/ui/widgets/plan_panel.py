"""The panel beside the wizard that answers "will it fit, and how long is it": recomputed on every change.

It shows what the per-keystroke planning stage returns and nothing it works out itself: the memory breakdown as
a bar against each GPU's free memory (or the host's RAM without a GPU) with the verdict and the largest
micro-batch that fits at the same effective batch, the step arithmetic, and the planned learning-rate curve.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

from tuneterm.plan.memory import size
from tuneterm.plan.planner import Plan
from tuneterm.plan.schedule import learning_rates
from tuneterm.ui.widgets.chart import LineChart

# Breakdown parts shown on their own (the rest is summed as "other"), each with a theme colour. The weights a
# sharding process gathers while it computes (FSDP, ZeRO-3) are shown apart from its own shard.
_PARTS = (("weights", "primary"), ("gathered_weights", "primary-darken-3"), ("activations", "accent"),
          ("optimizer", "secondary"), ("gradients", "success"), ("adapters", "warning"))
_VERDICT_COLOURS = {"fits": "$success", "tight": "$warning", "will not fit": "$error"}


def _parts(breakdown: dict[str, float]) -> list[tuple[str, str, float]]:
    """(label, theme colour, bytes) of the parts shown, the small ones summed as "other"."""
    known = dict(_PARTS)
    other = sum(value for name, value in breakdown.items() if name not in known)
    return [(name.replace("_", " "), colour, breakdown.get(name, 0.0)) for name, colour in _PARTS] + [
        ("other", "foreground-muted", other)]


def memory_bar(breakdown: dict[str, float], capacity: float, width: int) -> str:
    """One line of coloured blocks, one run per part, scaled so that `width` cells are the free memory (or the
    need, when it is larger)."""
    scale = max(capacity, sum(breakdown.values()), 1.0) / width
    cells, used = [], 0
    for _, colour, value in _parts(breakdown):
        count = min(max(round(value / scale), 1 if value > 0 else 0), width - used)
        if count:
            cells.append(f"[${colour}]{'█' * count}[/]")
            used += count
    return "".join(cells) + f"[$panel-lighten-2]{'░' * (width - used)}[/]"


def memory_legend(breakdown: dict[str, float]) -> list[str]:
    return [f"[${colour}]■[/] {name} {size(value)}" for name, colour, value in _parts(breakdown) if value >= 1e6]


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
        lines.append(f"[$text-muted]at {setup.seq_len} tokens x micro-batch {setup.micro_batch}, {setup.precision}, "
                     f"checkpointing {'on' if setup.gradient_checkpointing else 'off'}[/]")
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
                f"{s.train_examples:,} train / {s.eval_examples:,} eval examples")
