"""The monitor's panes, each drawn from the RunView: the run's status, the sentinels, the loss and learning-rate
charts, early stopping, gradient norms, the machine and the log.

Why widgets of their own: what a pane says about a run lives with the pane, and the monitor screen keeps only
its keys, its workers and the wiring between them. Each pane is handed the view (and, for the machine, a
reading) and works nothing out that the view does not hold. The text panes update only when their text changed:
an update costs a layout pass of the screen, and the monitor redraws every second.
"""

from __future__ import annotations

import math
from pathlib import Path

from textual.app import ComposeResult
from textual.markup import escape
from textual.widget import Widget
from textual.widgets import Log, Sparkline, Static

from tuneterm.engine.after.report import clock
from tuneterm.engine.events import RunFailed, RunFinished
from tuneterm.hardware import GpuReading, GpuSurvey, HostReading
from tuneterm.plan.memory import size
from tuneterm.ui.state.run_view import LOG_LINES, RunView
from tuneterm.ui.widgets.chart import LineChart

STATE_COLOURS = {"starting": "$accent", "running": "$accent", "completed": "$success", "early_stopped": "$success",
                 "stopped": "$warning", "failed": "$error", "interrupted": "$error"}
GRADIENT_POINTS = 120
"""The latest gradient norms the sparkline shows."""


def gauge(value: int, total: int, width: int = 10) -> str:
    filled = min(width, round(width * value / total)) if total else 0
    colour = "$error" if value >= total else "$warning" if value else "$success"
    return f"[{colour}]{'■' * filled}[/][$panel-lighten-2]{'□' * (width - filled)}[/]"


class TextPane(Static):
    """A pane of console markup that is updated only when its text changed."""

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._text: str | None = None
        """The markup shown, None before the first."""

    def say(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.update(text)


class StatusPane(TextPane):
    """The run's state, step, epoch, times and pace; then how it ended, and what can be done about it."""

    def __init__(self, run_dir: Path, *, id: str | None = None):
        super().__init__(id=id)
        self.run_dir = run_dir
        """Where the run lives, for the command that resumes it."""

    def show(self, view: RunView, resumable: bool) -> None:
        state = view.state
        headline = f"[{STATE_COLOURS[state]}][b]● {state.replace('_', ' ')}[/b][/]"
        if view.stop_requested and view.live:
            headline += " [$warning](stopping after this step)[/]"
        lines = [f"{headline}  {self._progress(view)}"]
        result = view.result
        if isinstance(result, RunFinished):
            lines.append(result_text(result))
        elif isinstance(result, RunFailed):
            log = f" [$text-muted](traceback: {escape(result.log_path)})[/]" if result.log_path else ""
            lines.append(f"[$error]{escape(result.reason)}[/]{log}")
            if result.remedies:
                lines.append("[$accent]r[/]: retry with " + "; or ".join(escape(r["why"]) for r in result.remedies[:2]))
        elif view.process_gone:
            lines.append(f"[$error]The run's process ended without a last event (killed, or its machine went down).[/] "
                         f"Continue it with: tuneterm train --resume {escape(str(self.run_dir))}")
        if resumable:
            lines.append("[$accent]r[/]: resume from the last complete checkpoint")
        self.say("\n".join(lines))

    @staticmethod
    def _progress(view: RunView) -> str:
        """Steps, epoch, times and pace once training began; before, the phase and how far it got."""
        if not (view.started or view.steps):
            progress = view.progress
            done = f": {progress.done:,} records" + (f" ({progress.fraction:.0%})" if progress.fraction else "") \
                if progress else ""
            return f"{escape(view.phase)}{done}"
        epoch = f"epoch {view.started and view.step / max(view.started.steps_per_epoch, 1):.2f}"
        pace = view.tokens_per_second()
        tokens = f"{pace:,.0f} tok/s" if pace is not None else "- tok/s"
        samples = view.samples_per_second()
        return (f"step [b]{view.step:,}[/b]/{view.total_steps or '?':,}  {epoch}  elapsed {clock(view.elapsed())}  "
                f"ETA {clock(view.eta())}  {tokens}  {f'{samples:.1f}' if samples else '-'} samples/s"
                f"{speed_text(view)}")


def speed_text(view: RunView) -> str:
    """What the run gets of the device, where the run says it: the padding share of what it computes, and MFU (or
    why there is none: on a CPU, a GPU whose peak is unknown). Empty for a run recorded before it counted them."""
    padding, (mfu, why) = view.padding_share(), view.mfu()
    parts = [f"padding {padding:.0%}"] if padding is not None else []
    if mfu is not None:
        parts.append(f"MFU [b]{mfu:.0%}[/b]")
    elif why.startswith("n/a"):
        parts.append(f"MFU {escape(why)}")
    return "  " + "  ".join(parts) if parts else ""


def result_text(result: RunFinished) -> str:
    """How a run that ended on its own terms did: its best evaluation, the adapter check, where it is saved."""
    if result.outcome == "improved" and result.best_eval_loss is not None:
        baseline = f" from {result.baseline_eval_loss:.4f}" if result.baseline_eval_loss is not None else ""
        text = f"best eval loss [b]{result.best_eval_loss:.4f}[/b]{baseline}; the adapter is that checkpoint"
    elif result.outcome == "worse_than_baseline":
        text = ("[$warning]no evaluation beat the loss before training: training made the eval loss worse; "
                "nothing is called best[/]")
    else:
        text = "no evaluation"
    check = result.adapter_check or {}
    verdict = ("[$success]adapter weights all changed[/]" if result.adapter_changed
               else f"[$error]adapter check failed: {len(check.get('unchanged', []))} unchanged, "
                    f"{len(check.get('non_finite', []))} non-finite[/]")
    return f"{text}; {verdict}; saved in {escape(result.adapter_dir or '')}"


class SentinelPane(TextPane):
    """The warnings the numbers raise, each with why and where the advice comes from; hidden while there are none."""

    def show(self, view: RunView) -> None:
        sentinels = view.sentinels()
        if self.display != bool(sentinels):
            self.display = bool(sentinels)
        self.say("\n".join(f"[{'$error' if s.level == 'error' else '$warning'}]▲ {escape(s.title)}[/]: "
                           f"{escape(s.why)} [$text-muted]({escape(s.source)})[/]" for s in sentinels))


class LossChart(LineChart):
    """The train loss (its moving average, or every point; on a linear or a log axis), the evaluations, and a line
    at the best one."""

    def __init__(self, *, redraw_interval: float, id: str | None = None):
        super().__init__(redraw_interval=redraw_interval, id=id)
        self.smooth = True
        """The moving average rather than every point."""
        self.log_y = False
        self.set_axes("step", "loss")

    def show(self, view: RunView) -> None:
        self.set_series("train", "train (EMA)" if self.smooth else "train", view.steps,
                        view.smoothed if self.smooth else view.losses, "primary")
        self.set_series("eval", "eval", [e.step for e in view.evals], [e.eval_loss for e in view.evals], "accent",
                        marker="●", joined=False)
        best = view.best
        self.set_vertical("best", best.step if best else None, "success")
        self.set_axes("step", "loss (log)" if self.log_y else "loss", self.log_y)


class RateChart(LineChart):
    """The learning rate the schedule plans against the one each step ran with, and a line at the latest step."""

    def __init__(self, *, redraw_interval: float, id: str | None = None):
        super().__init__(redraw_interval=redraw_interval, id=id)
        self.set_axes("step", "learning rate")

    def show(self, view: RunView) -> None:
        planned = view.planned_rates()
        if planned:
            steps, rates = zip(*planned)
            self.set_series("planned", "planned", steps, rates, "secondary")
        self.set_series("actual", "actual", view.steps, view.rates, "primary")
        self.set_vertical("now", view.step or None, "warning")


class EarlyStoppingPane(TextPane):
    """Early stopping's state: the loss before training, the best since, patience used, what the run will load at
    its end and when it evaluates next."""

    def show(self, view: RunView) -> None:
        lines = ["[b]Early stopping[/b]"]
        if not view.started or not view.started.eval_examples:
            lines.append("[$text-muted]no eval split: off[/]" if view.started else "[$text-muted]waiting[/]")
            self.say("\n".join(lines))
            return
        baseline, best = view.baseline, view.best
        if baseline is not None:
            lines.append(f"before training  {baseline:.4f}")
        lines.append(f"best  [b]{best.eval_loss:.4f}[/b] at step {best.step:,}" if best else
                     "best  [$warning]none beat the baseline yet[/]")
        last = view.evals[-1] if view.evals else None
        patience = view.patience or 0
        if last is not None and patience:
            lines.append(f"no improvement {gauge(last.evals_since_improvement, patience)} "
                         f"{last.evals_since_improvement}/{patience}")
        loads = f"checkpoint-{best.step}" if best else "the last checkpoint (none is best)"
        lines.append(f"loads at the end: {loads}")
        upcoming = view.next_eval_step()
        if upcoming and view.live:
            lines.append(f"next eval in {upcoming - view.step} steps")
        self.say("\n".join(lines))


class GradientPane(Widget):
    """The latest gradient norms as a sparkline, with the latest and the largest of them."""

    DEFAULT_CSS = "GradientPane { height: auto; }"

    def compose(self) -> ComposeResult:
        yield Static("gradient norm", classes="panel-title")
        yield Sparkline([], id="grad-norm")
        yield TextPane(id="grad-text")

    def show(self, view: RunView) -> None:
        norms = [g for g in view.grad_norms[-GRADIENT_POINTS:] if math.isfinite(g)]
        sparkline = self.query_one(Sparkline)
        if sparkline.data != norms:
            sparkline.data = norms
        text = f"latest {norms[-1]:.3f}, max {max(norms):.3f}" if norms else "-"
        self.query_one("#grad-text", TextPane).say(f"[$text-muted]{text}[/]")


class RunLog(Log):
    """The run's log, written as the view logs lines (those that fell out of the view's log are not written)."""

    def __init__(self, *, id: str | None = None):
        super().__init__(max_lines=LOG_LINES, auto_scroll=True, id=id)
        self.logged = 0
        """Lines of the view written so far."""

    def show(self, view: RunView) -> None:
        new_lines = view.new_log_lines(self.logged)
        if new_lines:
            self.write_lines(new_lines)
            self.logged = view.log_count


def _gpu_fields(gpu: GpuReading) -> list[str]:
    """Utilisation, memory, temperature and power, each "n/a" where NVML cannot say."""
    return [f"util {gpu.utilization}%" if gpu.utilization is not None else "util n/a",
            f"{size(gpu.memory_used)} / {size(gpu.memory_total)}",
            f"{gpu.temperature} C" if gpu.temperature is not None else "temp n/a",
            f"{gpu.power_watts:.0f} W" if gpu.power_watts is not None else "power n/a"]


def _rank(gpu: GpuReading, ranks: dict[int, int]) -> str:
    return f" rank {ranks[gpu.index]}" if gpu.index in ranks else ""


def _host_line(host: HostReading) -> str:
    used = host.memory_total - host.memory_available
    return f"CPU {host.cpu_percent:.0f}% of {host.cpu_count} · RAM {size(used)} / {size(host.memory_total)}"


class SystemBrief(TextPane):
    """The overview's lines on the machine: each GPU's use and memory, then the host's CPU and RAM."""

    def show(self, survey: GpuSurvey, host: HostReading, ranks: dict[int, int]) -> None:
        """`survey`: the GPUs to show; `ranks`: NVML index -> rank of the run's process on it."""
        lines = [f"GPU {gpu.index}{_rank(gpu, ranks)}: {' · '.join(_gpu_fields(gpu)[:2])}" for gpu in survey.gpus]
        self.say("\n".join([*lines, _host_line(host)]))


class SystemDetail(TextPane):
    """The System tab: every reading of each GPU, the peak memory it reached while the monitor watched, and the
    plan's estimate beside the GPUs the run trains on; then the host."""

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.peak_memory: dict[int, int] = {}
        """The most memory each GPU (by NVML index) used in the readings so far."""

    def show(self, survey: GpuSurvey, host: HostReading, ranks: dict[int, int], estimate: float | None) -> None:
        """`estimate`: the bytes the run's plan expects each of its processes to use (RunStarted), or None."""
        blocks = []
        for gpu in survey.gpus:
            self.peak_memory[gpu.index] = max(self.peak_memory.get(gpu.index, 0), gpu.memory_used)
            planned = f"; the plan estimated {size(estimate)}" if estimate and gpu.index in ranks else ""
            blocks.append(f"[b]GPU {gpu.index} {escape(gpu.name)}[/b]{_rank(gpu, ranks)}: "
                          f"{' · '.join(_gpu_fields(gpu))}\n   peak used {size(self.peak_memory[gpu.index])}{planned}")
        if not survey.gpus:
            blocks.append(f"[$text-muted]No GPU: {escape(survey.reason)}[/]")
        self.say("\n\n".join([*blocks, _host_line(host)]))
