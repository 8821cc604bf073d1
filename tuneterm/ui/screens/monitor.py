"""The monitor: a run's loss, learning rate, early-stopping state, progress and machine, live or replayed.

It does not care where the events come from: the training thread of this app posts them one by one, or a
follower thread reads them from events.jsonl (a detached run, a run in another terminal, a finished run) in
batches. Every event updates the RunView at once (inside one batch update); the panes redraw from a timer, only
when the view moved, and the charts hand the plotting library at most twice their width in points, so the UI
thread stays light while training competes with it for the GIL. The controls reach the run through its
RunControl (a run of this app) or its control channel (any other).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, Sparkline, Static, TabbedContent, TabPane

from tuneterm.engine.after.report import clock
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import Event, RunFailed, RunFinished
from tuneterm.engine.launch.channel import send
from tuneterm.plan.memory import size
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.follow import EventFollower
from tuneterm.ui.run_view import RunView
from tuneterm.ui.services import Services
from tuneterm.ui.widgets.chart import LineChart

REDRAW_SECONDS = 1.0
"""Once a second, as top and nvtop do: each repaint costs the training thread CPU and GIL time (bench/)."""
SYSTEM_SECONDS = 2.0
STATE_COLOURS = {"starting": "$accent", "running": "$accent", "completed": "$success", "early_stopped": "$success",
                 "stopped": "$warning", "failed": "$error", "interrupted": "$error"}


class RunEventsPosted(Message):
    """Events of the run, in order (never collapsed: every loss point is kept). `more` while a replay is still
    catching up with a file: the panes wait until it has."""

    def __init__(self, events: list[Event], more: bool = False):
        super().__init__()
        self.events, self.more = events, more


class RunProcessGone(Message):
    pass


class RunHandle:
    """The controls of a run: directly for a run of this app, through the control channel for any other."""

    def __init__(self, run_dir: Path, control: RunControl | None = None):
        self.run_dir, self.control = run_dir, control

    def stop(self) -> bool:
        if self.control is not None:
            return self.control.request_stop("the monitor's stop key")
        send(self.run_dir, "stop", reason="the monitor's stop key")
        return True

    def save(self) -> None:
        self.control.request_save() if self.control is not None else send(self.run_dir, "save")

    def evaluate(self) -> None:
        self.control.request_evaluate() if self.control is not None else send(self.run_dir, "evaluate")

    def set_patience(self, patience: int) -> None:
        if self.control is not None:
            self.control.set_patience(patience)
        else:
            send(self.run_dir, "patience", patience=patience)


def gauge(value: int, total: int, width: int = 10) -> str:
    filled = min(width, round(width * value / total)) if total else 0
    colour = "$error" if value >= total else "$warning" if value else "$success"
    return f"[{colour}]{'■' * filled}[/][$panel-lighten-2]{'□' * (width - filled)}[/]"


CHART_KEYS = Binding.Group("Chart")
"""Smoothing and log axis share one footer entry, so the footer fits 80 columns."""


class MonitorCommands(ActionCommands):
    COMMANDS = (("Stop the run", "screen.stop", "Finish the step, save a checkpoint and the adapter"),
                ("Save a checkpoint now", "screen.save", ""), ("Evaluate now", "screen.evaluate", ""),
                ("Change patience", "screen.patience", "Early stopping's patience, while it runs"),
                ("Smooth the loss", "screen.smooth", "Exponential moving average on or off"),
                ("Log scale", "screen.log_scale", "The loss on a log axis"),
                ("Retry with a remedy", "screen.retry", "After an out-of-memory or NaN failure"),
                ("Resume the run", "screen.resume", "A stopped or interrupted run, from its last checkpoint"),
                ("Summary", "screen.summary", "After the run: results, chat, stop check, merge"))


class MonitorScreen(Screen[None]):
    COMMANDS = {MonitorCommands}
    BINDINGS = [
        Binding("s", "stop", "Stop", id="stop", tooltip="Finish the current step, save a checkpoint and stop"),
        Binding("c", "save", "Save", id="save", tooltip="Save a checkpoint after the current step"),
        Binding("e", "evaluate", "Eval", id="evaluate", tooltip="Evaluate after the current step"),
        Binding("p", "patience", "Patience", id="patience", tooltip="Change early stopping's patience"),
        Binding("m", "smooth", "Smooth", id="smooth", group=CHART_KEYS, tooltip="The loss's moving average on or off"),
        Binding("g", "log_scale", "Log y", id="log_scale", group=CHART_KEYS, tooltip="The loss on a log axis"),
        Binding("r", "retry", "Retry", id="retry", tooltip="Run again with one of the failure's remedies"),
        Binding("r", "resume", "Resume", id="resume", tooltip="Continue from the last complete checkpoint"),
        Binding("v", "summary", "Summary", id="summary", tooltip="Results, chat with the model, stop check, merge"),
        Binding("1", "tab('overview')", "Overview", show=False),
        Binding("2", "tab('rate')", "Learning rate", show=False),
        Binding("3", "tab('system')", "System", show=False),
        Binding("4", "tab('log')", "Log", show=False),
        Binding("escape", "leave", "Back", id="leave", tooltip="Back to the previous screen; the run goes on"),
    ]

    def __init__(self, services: Services, run_dir: Path, control: RunControl | None = None,
                 again: Callable[[Path, dict[str, Any], bool], None] | None = None):
        super().__init__()
        self.services, self.run_dir = services, run_dir
        self.handle = RunHandle(run_dir, control)
        self.in_app = control is not None
        self.again = again
        """again(run_dir, settings, resume): the run again with changed settings, resumed or started anew."""
        self.view = RunView()
        self.drawn_version = -1
        self.shown: dict[str, str] = {}
        self.logged = 0
        self.smooth, self.log_y = True, False
        self.follower: EventFollower | None = None
        self.catching_up = False
        self.peak_memory: dict[int, int] = {}
        self.estimate: float | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="run-status")
        yield Static(id="sentinels")
        with TabbedContent(id="panes"):
            with TabPane("Overview", id="overview"):
                with Horizontal(id="overview-body"):
                    yield LineChart(id="loss-chart", redraw_interval=REDRAW_SECONDS)
                    with Vertical(id="side"):
                        yield Static(id="early-stopping")
                        yield Static("gradient norm", classes="panel-title")
                        yield Sparkline([], id="grad-norm")
                        yield Static(id="grad-text")
                        yield Static(id="system-brief")
            with TabPane("Learning rate", id="rate"):
                yield LineChart(id="rate-chart", redraw_interval=REDRAW_SECONDS)
            with TabPane("System", id="system"):
                yield Static(id="system-detail")
            with TabPane("Log", id="log"):
                yield Log(id="run-log", max_lines=2000, auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = str(self.run_dir.name)
        self.query_one("#loss-chart", LineChart).set_axes("step", "loss")
        self.query_one("#rate-chart", LineChart).set_axes("step", "learning rate")
        self.set_interval(REDRAW_SECONDS, self.redraw)
        self.set_interval(SYSTEM_SECONDS, self.read_system)
        self.read_system()
        if not self.in_app:
            self.follower = EventFollower(self.run_dir,
                                          lambda events, more: self.post_message(RunEventsPosted(events, more)),
                                          lambda: self.post_message(RunProcessGone()))
            self.follower.start()
        self.redraw()

    def on_unmount(self) -> None:
        if self.follower is not None:
            self.follower.stop()

    # Events --------------------------------------------------------------------------------------------------

    @on(RunEventsPosted)
    def _events(self, message: RunEventsPosted) -> None:
        had_start, was_live = self.view.started, self.view.live
        for event in message.events:
            self.view.apply(event)
        self.catching_up = message.more
        if message.more:
            return
        if self.view.started is not had_start:
            self.estimate_memory()
        if self.view.live != was_live:  # the run started or ended: its keys change, and its state shows at once
            self.refresh_bindings()
            self.redraw()

    @on(RunProcessGone)
    def _gone(self) -> None:
        self.view.process_gone = True
        self.view.version += 1
        self.refresh_bindings()

    # Drawing (from a timer, when the view moved) -------------------------------------------------------------

    def redraw(self) -> None:
        if self.view.version == self.drawn_version or self.catching_up:
            return
        self.drawn_version = self.view.version
        self.show_status()
        self.show_sentinels()
        self.show_loss()
        self.show_rate()
        self.show_early_stopping()
        self.show_gradients()
        new_lines = self.view.new_log_lines(self.logged)
        if new_lines:
            self.query_one("#run-log", Log).write_lines(new_lines)
            self.logged = self.view.log_count

    def show(self, widget_id: str, text: str) -> None:
        """Update a pane only when its text changed: an update costs a layout pass of the screen."""
        if self.shown.get(widget_id) != text:
            self.shown[widget_id] = text
            self.query_one(f"#{widget_id}", Static).update(text)

    def show_status(self) -> None:
        view, state = self.view, self.view.state
        colour = STATE_COLOURS[state]
        total = view.total_steps
        lines = []
        headline = f"[{colour}][b]● {state.replace('_', ' ')}[/b][/]"
        if view.stop_requested and view.live:
            headline += " [$warning](stopping after this step)[/]"
        if view.started or view.steps:
            epoch = f"epoch {view.started and view.step / max(view.started.steps_per_epoch, 1):.2f}"
            throughput = [x for x in view.throughput[-20:] if math.isfinite(x)]
            tokens = f"{sum(throughput) / len(throughput):,.0f} tok/s" if throughput else "- tok/s"
            samples = view.samples_per_second()
            lines.append(f"{headline}  step [b]{view.step:,}[/b]/{total or '?':,}  {epoch}  elapsed "
                         f"{clock(view.elapsed())}  ETA {clock(view.eta())}  {tokens}  "
                         f"{f'{samples:.1f}' if samples else '-'} samples/s")
        else:
            progress = view.progress
            done = f": {progress.done:,} records" + (f" ({progress.fraction:.0%})" if progress.fraction else "") \
                if progress else ""
            lines.append(f"{headline}  {escape(view.phase)}{done}")
        result = view.result
        if isinstance(result, RunFinished):
            lines.append(self.result_text(result))
        elif isinstance(result, RunFailed):
            log = f" [$text-muted](traceback: {escape(result.log_path)})[/]" if result.log_path else ""
            lines.append(f"[$error]{escape(result.reason)}[/]{log}")
            if result.remedies:
                lines.append("[$accent]r[/]: retry with " + "; or ".join(escape(r["why"]) for r in result.remedies[:2]))
        elif view.process_gone:
            lines.append(f"[$error]The run's process ended without a last event (killed, or its machine went down).[/] "
                         f"Continue it with: tuneterm train --resume {escape(str(self.run_dir))}")
        if self.resumable:
            lines.append("[$accent]r[/]: resume from the last complete checkpoint")
        self.show("run-status", "\n".join(lines))

    @staticmethod
    def result_text(result: RunFinished) -> str:
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

    def show_sentinels(self) -> None:
        sentinels = self.view.sentinels()
        if self.query_one("#sentinels", Static).display != bool(sentinels):
            self.query_one("#sentinels", Static).display = bool(sentinels)
        self.show("sentinels", "\n".join(
            f"[{'$error' if s.level == 'error' else '$warning'}]▲ {escape(s.title)}[/]: {escape(s.why)} "
            f"[$text-muted]({escape(s.source)})[/]" for s in sentinels))

    def show_loss(self) -> None:
        chart, view = self.query_one("#loss-chart", LineChart), self.view
        chart.set_series("train", "train (EMA)" if self.smooth else "train", view.steps,
                         view.smoothed if self.smooth else view.losses, "primary")
        chart.set_series("eval", "eval", [e.step for e in view.evals], [e.eval_loss for e in view.evals], "accent",
                         marker="●", joined=False)
        best = view.best
        chart.set_vertical("best", best.step if best else None, "success")
        chart.set_axes("step", "loss (log)" if self.log_y else "loss", self.log_y)

    def show_rate(self) -> None:
        chart, view = self.query_one("#rate-chart", LineChart), self.view
        planned = view.planned_rates()
        if planned:
            steps, rates = zip(*planned)
            chart.set_series("planned", "planned", steps, rates, "secondary")
        chart.set_series("actual", "actual", view.steps, view.rates, "primary")
        chart.set_vertical("now", view.step or None, "warning")

    def show_early_stopping(self) -> None:
        view = self.view
        lines = ["[b]Early stopping[/b]"]
        if not view.started or not view.started.eval_examples:
            lines.append("[$text-muted]no eval split: off[/]" if view.started else "[$text-muted]waiting[/]")
        else:
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
        self.show("early-stopping", "\n".join(lines))

    def show_gradients(self) -> None:
        norms = [g for g in self.view.grad_norms[-120:] if math.isfinite(g)]
        sparkline = self.query_one("#grad-norm", Sparkline)
        if sparkline.data != norms:
            sparkline.data = norms
        text = f"latest {norms[-1]:.3f}, max {max(norms):.3f}" if norms else "-"
        self.show("grad-text", f"[$text-muted]{text}[/]")

    # The machine ---------------------------------------------------------------------------------------------

    def read_system(self) -> None:
        """Every GPU of this machine, or, for a run on chosen GPUs, those its processes here train on (with rank)."""
        survey, host = self.services.read_gpus(), self.services.read_host()
        started = self.view.started
        here = socket.gethostname()  # NVML sees this machine's GPUs; other machines' processes are theirs
        ranks = {p["gpu"]: p["rank"] for p in (started.processes if started else [])
                 if p.get("gpu") is not None and p.get("host") == here}
        if ranks:
            survey = survey.only(ranks)
        brief, detail = [], []
        for gpu in survey.gpus:
            self.peak_memory[gpu.index] = max(self.peak_memory.get(gpu.index, 0), gpu.memory_used)
            fields = [f"util {gpu.utilization}%" if gpu.utilization is not None else "util n/a",
                      f"{size(gpu.memory_used)} / {size(gpu.memory_total)}",
                      f"{gpu.temperature} C" if gpu.temperature is not None else "temp n/a",
                      f"{gpu.power_watts:.0f} W" if gpu.power_watts is not None else "power n/a"]
            rank = f" rank {ranks[gpu.index]}" if gpu.index in ranks else ""
            brief.append(f"GPU {gpu.index}{rank}: {' · '.join(fields[:2])}")
            estimate = f"; the plan estimated {size(self.estimate)}" if self.estimate else ""
            detail.append(f"[b]GPU {gpu.index} {escape(gpu.name)}[/b]{rank}: {' · '.join(fields)}\n"
                          f"   peak used {size(self.peak_memory[gpu.index])}{estimate}")
        if not survey.gpus:
            detail.append(f"[$text-muted]No GPU: {escape(survey.reason)}[/]")
        used = host.memory_total - host.memory_available
        host_line = f"CPU {host.cpu_percent:.0f}% of {host.cpu_count} · RAM {size(used)} / {size(host.memory_total)}"
        brief.append(host_line)
        detail.append(host_line)
        self.show("system-brief", "\n".join(brief))
        self.show("system-detail", "\n\n".join(detail))

    @work(thread=True, exclusive=True, group="estimate", exit_on_error=False)
    def estimate_memory(self) -> None:
        """The plan's estimate for this run, to show next to what NVML measures."""
        from tuneterm.config import config_from_mapping
        from tuneterm.plan.memory import estimate_memory
        from tuneterm.plan.planner import memory_setup, model_facts

        started = self.view.started
        if started is None or not self.services.read_gpus().gpus:
            return
        config = config_from_mapping(started.config)
        strategy = started.strategy if started.strategy != "single" else "ddp"
        setup = memory_setup(config, started.world_size, strategy=strategy)  # type: ignore[arg-type]
        self.estimate = estimate_memory(model_facts(config), setup).total_bytes

    # Controls ------------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The run's controls only while it runs, retry only after a failure with remedies: hidden otherwise."""
        if action in ("stop", "save", "evaluate", "patience"):
            return self.view.live and not self.view.process_gone
        if action == "retry":
            failed = self.view.result
            return bool(isinstance(failed, RunFailed) and failed.remedies and self.again)
        if action == "resume":
            return self.resumable
        if action == "summary":
            return self.view.result is not None or self.view.process_gone
        return True

    @property
    def resumable(self) -> bool:
        """Stopped, interrupted, or failed with nothing to change (a full disk), with a checkpoint to go on from."""
        result, view = self.view.result, self.view
        ended_early = (view.state in ("stopped", "interrupted")
                       or isinstance(result, RunFailed) and not result.remedies)
        return bool(ended_early and self.again and any(self.run_dir.glob("checkpoint-*")))

    def action_stop(self) -> None:
        if self.handle.stop():
            self.notify("Stopping after the current step; a checkpoint and the adapter are saved.", title="Stop")
        else:
            self.notify("Already stopping: it saves once, after the current step.", title="Stop")

    def action_save(self) -> None:
        self.handle.save()
        self.notify("A checkpoint is saved after the current step.", title="Checkpoint")

    def action_evaluate(self) -> None:
        self.handle.evaluate()
        self.notify("Evaluating after the current step.", title="Evaluate")

    def action_patience(self) -> None:
        from tuneterm.ui.screens.dialogs import AskNumber

        def chosen(patience: int | None) -> None:
            if patience:
                self.handle.set_patience(patience)
                self.notify(f"Patience {patience} from the next step (the guides suggest 3 to 5).", title="Patience")

        self.app.push_screen(AskNumber("Early stopping patience (evaluations without improvement)",
                                       self.view.patience or 3), chosen)

    def action_smooth(self) -> None:
        self.smooth = not self.smooth
        self.redraw_loss()

    def action_log_scale(self) -> None:
        self.log_y = not self.log_y
        self.redraw_loss()

    def redraw_loss(self) -> None:
        self.show_loss()
        self.query_one("#loss-chart", LineChart).redraw_now()

    def action_tab(self, tab: str) -> None:
        self.query_one("#panes", TabbedContent).active = tab

    def action_retry(self) -> None:
        from tuneterm.ui.screens.dialogs import Choose

        failed = self.view.result
        if not isinstance(failed, RunFailed) or not failed.remedies or self.again is None:
            return
        again = self.again
        options = [(f"{r['why']} ({'resume' if r['resume'] else 'start again'} with "
                    f"{', '.join(f'{k}={v}' for k, v in r['set'].items())})", r) for r in failed.remedies]

        def chosen(remedy: dict[str, Any] | None) -> None:
            if remedy is not None:
                again(self.run_dir, remedy["set"], remedy["resume"])

        self.app.push_screen(Choose("Retry with", options), chosen)

    def action_resume(self) -> None:
        if self.resumable and self.again is not None:
            self.again(self.run_dir, {}, True)

    def action_summary(self) -> None:
        from tuneterm.ui.screens.summary import SummaryScreen

        self.app.other_view(SummaryScreen, self.run_dir, self.app.open_summary)  # type: ignore[attr-defined]

    def action_leave(self) -> None:
        self.app.leave(self)  # type: ignore[attr-defined]

    @property
    def active(self) -> bool:
        """Training in this app's process (quitting must stop it first)."""
        return self.in_app and self.view.live

