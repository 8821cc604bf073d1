"""The monitor: a run's loss, learning rate, early-stopping state, progress and machine, live or replayed.

It does not care where the events come from: the training thread of this app posts them one by one, or a
follower thread reads them from events.jsonl (a detached run, a run in another terminal, a finished run) in
batches. Every event updates the RunView at once (inside one batch update); the panes (widgets/monitor_panes.py)
redraw from it on a timer, only when the view moved, and the charts hand the plotting library at most twice their
width in points, so the UI thread stays light while training competes with it for the GIL. The controls reach the
run through its RunControl (a run of this app) or its control channel (any other); what they say is what the run
does: a checkpoint asked for is named by the step it is written at, an evaluation asked for is shown but not
counted against patience, and the patience dialog goes away with the run it would change. Its summary, and the
screen before, are the app's to open: this screen asks for them with a message.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import CheckpointSaved, Event, RunFailed
from tuneterm.engine.launch.handle import RunHandle
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.follow import EventFollower
from tuneterm.ui.messages import LeaveRequested, RunViewRequested
from tuneterm.ui.screens.dialogs import AskNumber
from tuneterm.ui.services import Services
from tuneterm.ui.state.run_view import RunView
from tuneterm.ui.widgets.monitor_panes import (
    EarlyStoppingPane,
    GradientPane,
    LossChart,
    RateChart,
    RunLog,
    SentinelPane,
    StatusPane,
    SystemBrief,
    SystemDetail,
)

REDRAW_SECONDS = 1.0
"""Once a second, as top and nvtop do: each repaint costs the training thread CPU and GIL time (bench/)."""
SYSTEM_SECONDS = 2.0
RUN_ENDED_PATIENCE = "The run has ended; its patience is as it was."


class RunEventsPosted(Message):
    """Events of the run, in order (never collapsed: every loss point is kept). `more` while a replay is still
    catching up with a file: the panes wait until it has."""

    def __init__(self, events: list[Event], more: bool = False):
        super().__init__()
        self.events, self.more = events, more


class RunProcessGone(Message):
    pass


CHART_KEYS = Binding.Group("Chart")
"""Smoothing and log axis share one footer entry, so the footer fits 80 columns."""


class MonitorCommands(ActionCommands):
    COMMANDS = (("Stop the run", "screen.stop", "Finish the step, save a checkpoint and the adapter"),
                ("Save a checkpoint now", "screen.save", "At the end of the step in progress, named by its step"),
                ("Evaluate now", "screen.evaluate", "Shown, but not counted against early stopping's patience"),
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
        Binding("c", "save", "Save", id="save", tooltip="Save a checkpoint at the end of the step in progress"),
        Binding("e", "evaluate", "Eval", id="evaluate",
                tooltip="Evaluate after the current step; early stopping's patience does not count it"),
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
        """The view's version the panes show."""
        self.follower: EventFollower | None = None
        self.catching_up = False
        self.save_unnamed = False
        """A checkpoint was asked of a run that could not say its step: the next one written is named."""
        self.patience_dialog: AskNumber | None = None
        """The patience dialog while it is open: it closes when the run ends."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusPane(self.run_dir, id="run-status")
        yield SentinelPane(id="sentinels")
        with TabbedContent(id="panes"):
            with TabPane("Overview", id="overview"):
                with Horizontal(id="overview-body"):
                    yield LossChart(id="loss-chart", redraw_interval=REDRAW_SECONDS)
                    with Vertical(id="side"):
                        yield EarlyStoppingPane(id="early-stopping")
                        yield GradientPane()
                        yield SystemBrief(id="system-brief")
            with TabPane("Learning rate", id="rate"):
                yield RateChart(id="rate-chart", redraw_interval=REDRAW_SECONDS)
            with TabPane("System", id="system"):
                yield SystemDetail(id="system-detail")
            with TabPane("Log", id="log"):
                yield RunLog(id="run-log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = str(self.run_dir.name)
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
        was_live = self.view.live
        for event in message.events:
            self.view.apply(event)
            if isinstance(event, CheckpointSaved) and self.save_unnamed:
                self.save_unnamed = False
                self.notify(f"Saved checkpoint-{event.step}, at the end of step {event.step}.", title="Checkpoint")
        self.catching_up = message.more
        if message.more:
            return
        if self.view.live != was_live:  # the run started or ended: its keys change, and its state shows at once
            self.refresh_bindings()
            self.redraw()
            if not self.view.live:
                self.close_patience_dialog()

    @on(RunProcessGone)
    def _gone(self) -> None:
        self.view.process_gone = True
        self.view.version += 1
        self.refresh_bindings()
        self.close_patience_dialog()

    def close_patience_dialog(self) -> None:
        """The run ended: there is no patience left to change."""
        dialog, self.patience_dialog = self.patience_dialog, None
        if dialog is not None and self.app.screen is dialog:
            dialog.dismiss(None)
            self.notify(RUN_ENDED_PATIENCE, title="Patience")

    # Drawing (from a timer, when the view moved) -------------------------------------------------------------

    def redraw(self) -> None:
        if self.view.version == self.drawn_version or self.catching_up:
            return
        self.drawn_version = self.view.version
        view = self.view
        self.query_one(StatusPane).show(view, self.resumable)
        self.query_one(SentinelPane).show(view)
        self.query_one(LossChart).show(view)
        self.query_one(RateChart).show(view)
        self.query_one(EarlyStoppingPane).show(view)
        self.query_one(GradientPane).show(view)
        self.query_one(RunLog).show(view)

    def read_system(self) -> None:
        """Every GPU of this machine, or, for a run on chosen GPUs, those its processes here train on (with rank)."""
        survey, host = self.services.read_gpus(), self.services.read_host()
        ranks = self.view.ranks_by_gpu(socket.gethostname())  # NVML sees this machine's GPUs, not other machines'
        if ranks:
            survey = survey.only(ranks)
        started = self.view.started
        self.query_one(SystemBrief).show(survey, host, ranks)
        self.query_one(SystemDetail).show(survey, host, ranks, started.estimated_memory_total if started else None)

    # Controls ------------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The run's controls only while it runs, retry only after a failure with remedies: hidden otherwise."""
        if action in ("stop", "save", "evaluate", "patience"):
            running = self.view.live and not self.view.process_gone
            evaluating = self.view.started is None or self.view.started.eval_examples > 0
            return running and (evaluating or action not in ("evaluate", "patience"))
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
        if self.handle.stop("the monitor's stop key"):
            self.notify("Stopping after the current step; a checkpoint and the adapter are saved.", title="Stop")
        else:
            self.notify("Already stopping: it saves once, after the current step.", title="Stop")

    def action_save(self) -> None:
        """A run of this app says the step in progress as it takes the request; a run of another process is asked
        through its channel, and the checkpoint is named once it is written."""
        step = self.handle.save_now()
        if step is None:
            self.save_unnamed = True
            self.notify("A checkpoint is saved at the end of the step the run is on when it reads this; its step is "
                        "named once it is written.", title="Checkpoint")
        else:
            self.notify(f"checkpoint-{step} is saved at the end of step {step}, the step in progress.",
                        title="Checkpoint")

    def action_evaluate(self) -> None:
        self.handle.evaluate_now()
        self.notify("Evaluating after the current step; early stopping's patience does not count it.",
                    title="Evaluate")

    def action_patience(self) -> None:
        def chosen(patience: int | None) -> None:
            self.patience_dialog = None
            if not patience:
                return
            if not self.check_action("patience", ()):
                self.notify(RUN_ENDED_PATIENCE, title="Patience")
                return
            self.handle.set_patience(patience)
            self.notify(f"Patience {patience} from the next step (the guides suggest 3 to 5).", title="Patience")

        self.patience_dialog = AskNumber("Early stopping patience (evaluations without improvement)",
                                         self.view.patience or 3)
        self.app.push_screen(self.patience_dialog, chosen)

    def action_smooth(self) -> None:
        chart = self.query_one(LossChart)
        chart.smooth = not chart.smooth
        self.redraw_loss()

    def action_log_scale(self) -> None:
        chart = self.query_one(LossChart)
        chart.log_y = not chart.log_y
        self.redraw_loss()

    def redraw_loss(self) -> None:
        """Drawn at once: the person pressed a key."""
        chart = self.query_one(LossChart)
        chart.show(self.view)
        chart.redraw_now()

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
        self.post_message(RunViewRequested(self.run_dir, "summary"))

    def action_leave(self) -> None:
        self.post_message(LeaveRequested(self))

    @property
    def active(self) -> bool:
        """Training in this app's process (quitting must stop it first)."""
        return self.in_app and self.view.live

