"""The app: one factory shared by the command line and the tests, the actions every screen offers, quitting
without losing work (on a kill too: SIGTERM quits as ctrl+q does, and gives the terminal back), and the command
palette."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from textual import events, on, work
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tuneterm.config import RunConfig, load_config
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import EVENTS_FILE, read_events
from tuneterm.engine.experiment.runner import ExperimentControl
from tuneterm.engine.launch.command import LaunchSpec
from tuneterm.engine.run.plans import RunPlan
from tuneterm.engine.run.start import StartingRun, start_detached_run
from tuneterm.errors import TuneTermError
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.messages import (
    ExperimentChosen,
    ExperimentRequested,
    LeaveRequested,
    RunChosen,
    RunViewName,
    RunViewRequested,
)
from tuneterm.ui.screens.dialogs import Confirm
from tuneterm.ui.screens.experiment import ExperimentScreen
from tuneterm.ui.screens.monitor import MonitorScreen, RunEventsPosted
from tuneterm.ui.screens.start import StartScreen
from tuneterm.ui.screens.summary import SummaryScreen
from tuneterm.ui.services import Services
from tuneterm.ui.state.draft import Draft
from tuneterm.ui.training import ExperimentInApp, RunInApp, TrainingInApp

KILLED = 128 + signal.SIGTERM
"""The exit status of an app ended by SIGTERM, as the shell reports a process a signal ended."""


@dataclass(frozen=True)
class Opening:
    """What the app shows first."""

    screen: Literal["start", "runs", "wizard", "monitor", "experiment"] = "start"
    """"runs": the start screen with the cursor on the recent runs."""
    draft: Draft | None = None
    step: str = "model"
    run_dir: Path | None = None
    """The run the monitor opens on (the experiment's directory, for "experiment")."""
    demo: bool = False
    """Build (once) and open the demo in the wizard."""
    demo_overrides: tuple[str, ...] = ()
    """--set arguments applied to the demo's config."""
    demo_tools: bool = False
    """The demo on tool-calling and reasoning data (tuneterm demo --tools)."""


class TuneTermCommands(ActionCommands):
    """The app's main actions by name, in the command palette (ctrl+p)."""

    COMMANDS = (("New run", "app.new_run", "Choose a model, data and settings"),
                ("Open a config file", "app.open_config", "Load a YAML config into the wizard's review"),
                ("Demo", "app.demo", "The built-in tiny model and data, offline"),
                ("Run list", "app.start(True)", "The recent runs: open one, or mark some and compare them"),
                ("Start screen", "app.start", "New run, open a config, the demo, the recent runs"),
                ("Help", "app.help", "Keys, steps, and where the advice comes from"))


class TuneTermApp(App[None]):
    CSS_PATH = "tuneterm.tcss"
    TITLE = "tuneterm"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (96, "-normal"), (130, "-wide")]
    COMMANDS = App.COMMANDS | {TuneTermCommands}
    BINDINGS = [
        Binding("f1,question_mark", "help", "Help", id="help"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(self, services: Services | None = None, opening: Opening = Opening()):
        super().__init__()
        self.services = services or Services()
        self.opening = opening
        self.training: TrainingInApp | None = None
        self.monitors: dict[Path, MonitorScreen] = {}

    def on_mount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # (a loop without Unix signals)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.terminated)
        if self.opening.screen == "monitor" and self.opening.run_dir is not None:
            self.open_run(self.opening.run_dir)  # the start screen comes when this one is left
            return
        if self.opening.screen == "experiment" and self.opening.run_dir is not None:
            self.open_experiment(self.opening.run_dir)
            return
        self.push_screen(StartScreen(self.services, runs_first=self.opening.screen == "runs"))
        if self.opening.demo:
            self.action_demo()
        elif self.opening.screen == "wizard":
            self.open_wizard(self.opening.draft or Draft(), self.opening.step)

    # Screens --------------------------------------------------------------------------------------------------

    def open_wizard(self, draft: Draft, step: str = "model") -> None:
        from tuneterm.ui.screens.wizard import WizardScreen  # imported when needed: the first screen paints sooner

        self.push_screen(WizardScreen(self.services, draft, self.launch, step))

    def action_new_run(self) -> None:
        self.open_wizard(Draft())

    def action_start(self, runs: bool = False) -> None:
        """Back to the start screen (with the cursor on the run list when `runs`), closing the screens above it: a
        wizard with unsaved settings asks first; a run goes on, its monitor a key away in the run list."""
        def answered(leave: bool | None) -> None:
            if not leave:
                return
            while len(self.screen_stack) > 2:
                self.pop_screen()
            if isinstance(self.screen, StartScreen):
                self.screen.focus_runs() if runs else self.screen.query_one("#actions").focus()
            else:
                self.switch_screen(StartScreen(self.services, runs_first=runs))

        if self.unsaved_work():
            self.push_screen(Confirm("Leave the wizard? The settings you entered are not saved.", yes="Leave"),
                             answered)
        else:
            answered(True)

    def action_help(self) -> None:
        from tuneterm.ui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_open_config(self) -> None:
        from textual_fspicker import FileOpen, Filters

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.open_config(path)

        self.push_screen(FileOpen(Path.cwd(), filters=Filters(("YAML", lambda p: p.suffix in (".yaml", ".yml")),
                                                              ("Any", lambda p: True))), chosen)

    def open_config(self, path: Path) -> None:
        try:
            draft = Draft.from_file(path)
        except TuneTermError as exc:
            self.notify(str(exc), title=f"Cannot open {path.name}", severity="error", timeout=20)
            return
        self.open_wizard(draft, "review")

    def action_demo(self) -> None:
        if any(worker.group == "demo" and worker.is_running for worker in self.workers):
            self.notify("Still building the demo: the wizard opens when it is ready.", title="Demo")
            return
        if self.services.built_demo(self.opening.demo_tools) is None:  # said until the wizard opens
            self.notify("Building the demo's tiny model and chat data, once (then cached): about 20 seconds on a "
                        "quiet CPU. The wizard opens when it is ready.", title="Demo", timeout=3600)
        self.build_demo()

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def build_demo(self) -> None:
        from tuneterm.demo import demo_config

        directory = self.services.demo_dir(self.opening.demo_tools)
        self.call_from_thread(self.clear_notifications)
        try:
            config = load_config(base=demo_config(directory), base_source="demo", overrides=self.opening.demo_overrides)
        except TuneTermError as exc:
            self.call_from_thread(self.notify, str(exc), title="Demo config problems", severity="error", timeout=20)
            return
        self.call_from_thread(self.open_wizard, Draft.from_config(config), "model")

    @on(RunChosen)
    def _run_chosen(self, message: RunChosen) -> None:
        self.open_run(message.run_dir)

    @on(ExperimentChosen)
    def _experiment_chosen(self, message: ExperimentChosen) -> None:
        self.open_experiment(message.directory)

    # Runs -----------------------------------------------------------------------------------------------------

    def leave(self, screen: Screen[Any]) -> None:
        """Back from a screen: to the one under it, or to the start screen when it was the first."""
        if len(self.screen_stack) > 2:
            screen.dismiss()
        else:
            self.switch_screen(StartScreen(self.services))

    def open_run(self, run_dir: Path) -> None:
        """A run that goes on opens on its monitor, one that ended on its summary (the monitor is a key away)."""
        from tuneterm.engine.rundir.layout import is_live

        training_here = self.training is not None and self.training.active and \
            self.training.run_dir.resolve() == run_dir.resolve()
        if training_here or is_live(run_dir) or not (run_dir / EVENTS_FILE).is_file():
            self.open_monitor(run_dir)
        else:
            self.open_summary(run_dir)

    @on(RunViewRequested)
    def _run_view_requested(self, message: RunViewRequested) -> None:
        self.other_view(message.run_dir, message.view)

    @on(LeaveRequested)
    def _leave_requested(self, message: LeaveRequested) -> None:
        self.leave(message.screen)

    def other_view(self, run_dir: Path, view: RunViewName) -> None:
        """Between a run's summary and its monitor: back to the one just below when it is that run's, so that
        going back and forth never piles up screens; otherwise a new one."""
        kind: type[MonitorScreen | SummaryScreen] = MonitorScreen if view == "monitor" else SummaryScreen
        below = self.screen_stack[-2] if len(self.screen_stack) > 1 else None
        if isinstance(below, kind) and below.run_dir == run_dir:
            self.pop_screen()
        elif view == "monitor":
            self.open_monitor(run_dir)
        else:
            self.open_summary(run_dir)

    def open_summary(self, run_dir: Path) -> None:
        self.push_screen(SummaryScreen(self.services, run_dir.resolve(), self.run_again))

    def open_monitor(self, run_dir: Path, control: RunControl | None = None) -> MonitorScreen:
        """The run's monitor, kept while the app runs so that leaving it and coming back loses nothing."""
        run_dir = run_dir.resolve()
        screen = self.monitors.get(run_dir)
        if screen is None or control is not None:
            screen = MonitorScreen(self.services, run_dir, control, self.run_again)
            self.monitors[run_dir] = screen
        if screen not in self.screen_stack:
            self.push_screen(screen)
        return screen

    def launch(self, config: RunConfig, detached: bool, spec: LaunchSpec | None = None) -> None:
        """Start a run from the wizard: in a thread of this app, or detached in a process of its own (always, on
        chosen GPUs: accelerate starts a process per GPU)."""
        detached = detached or spec is not None
        if not detached and self.busy_training("launch this one detached"):
            return
        try:
            starting = StartingRun.new(config, self.services.runs_dir, spec)
        except TuneTermError as exc:
            self.notify(str(exc), title="Cannot start the run", severity="error", timeout=20)
            return
        self.start(starting.plan, detached)

    def start(self, plan: RunPlan, detached: bool) -> None:
        if detached:
            try:
                start_detached_run(plan)
            except TuneTermError as exc:
                self.notify(str(exc), title="The run did not start", severity="error", timeout=20)
                return
            self.open_monitor(plan.run_dir)
            self.notify(f"Running detached: it goes on if this terminal closes. Watch it again with tuneterm "
                        f"monitor {plan.run_dir}", title="Run started", timeout=15)
            return
        training = RunInApp(plan, lambda events: None, self.services.train_run)
        screen = self.open_monitor(plan.run_dir, training.control)
        if plan.resume_from is not None:  # the run so far first, then what the resumed run adds
            screen.post_message(RunEventsPosted(read_events(plan.run_dir / EVENTS_FILE)))
        training.deliver = lambda events: screen.post_message(RunEventsPosted(events))
        self.training = training
        training.guard_against_hangup()
        self.begin_capture_print(self)
        self.train(training)

    @work(thread=True, group="training", exit_on_error=False)
    def train(self, training: TrainingInApp) -> None:
        training.train()

    def on_print(self, event: events.Print) -> None:
        if self.training is not None:
            self.training.write_print(event.text)

    def run_again(self, run_dir: Path, settings: dict[str, Any], resume: bool) -> None:
        """A run again with changed settings (a failure's remedy, or none): resumed from its last checkpoint, or
        started anew in a new directory. In this app's thread when it ran here, else detached."""
        from tuneterm.config import yaml_value

        if self.busy_training():
            return
        overrides = [f"{key}={yaml_value(value)}" for key, value in settings.items()]
        in_app = self.training is not None and self.training.run_dir.resolve() == run_dir.resolve()
        try:
            starting = StartingRun.again(run_dir, overrides, resume, self.services.runs_dir)
        except TuneTermError as exc:
            self.notify(str(exc), title="Cannot start the run again", severity="error", timeout=20)
            return
        self.monitors.pop(run_dir.resolve(), None)
        self.start(starting.plan, detached=not in_app)

    def busy_training(self, otherwise: str = "") -> bool:
        """Whether a run or an experiment trains in this app already (said, with what to do)."""
        if self.training is None or not self.training.active:
            return False
        self.notify(f"A{'n' if self.training.what[0] in 'aeiou' else ''} {self.training.what} is already training in "
                    f"this app: stop it first{', or ' + otherwise if otherwise else ''}.", title="Cannot start",
                    severity="warning", timeout=15)
        return True

    # Experiments ----------------------------------------------------------------------------------------------

    def open_experiment(self, directory: Path) -> None:
        """The experiment's view; with its control when it runs in this app."""
        directory = directory.resolve()
        training = self.training if isinstance(self.training, ExperimentInApp) and not self.training.done.is_set() \
            and self.training.run_dir == directory else None
        self.push_screen(ExperimentScreen(self.services, directory, training.experiment_control if training else None,
                                          self.resume_experiment))

    @on(ExperimentRequested)
    def _experiment_requested(self, message: ExperimentRequested) -> None:
        """An experiment launched from the wizard: its directory written, then started as a run would be."""
        from tuneterm.engine.experiment.directory import new_experiment_dir, write_experiment
        from tuneterm.engine.experiment.plan import with_not_run

        if not message.detached and self.busy_training("launch this one detached"):
            return
        try:
            directory = new_experiment_dir(message.plan.spec, self.services.runs_dir)
            write_experiment(message.plan.spec, with_not_run(message.plan), directory)
        except (TuneTermError, OSError) as exc:
            self.notify(str(exc), title="Cannot start the experiment", severity="error", timeout=20)
            return
        self.start_experiment(directory, message.detached)
        self.open_experiment(directory)

    def start_experiment(self, directory: Path, detached: bool) -> ExperimentControl | None:
        """In a thread of this app (its runs one after another; its control is returned), or detached in a process
        of its own."""
        from tuneterm.engine.experiment.runner import EXPERIMENT_LOG, start_detached_experiment

        if detached:
            try:
                start_detached_experiment(directory)
            except TuneTermError as exc:
                self.notify(str(exc), title="The experiment did not start", severity="error", timeout=20)
                return None
            self.notify(f"Running detached: it goes on if this terminal closes (its output: "
                        f"{directory / EXPERIMENT_LOG}). Watch it again with tuneterm monitor {directory}",
                        title="Experiment started", timeout=15)
            return None
        training = ExperimentInApp(directory, self.services.train_run)
        self.training = training
        training.guard_against_hangup()
        self.begin_capture_print(self)
        self.train(training)
        return training.experiment_control

    def resume_experiment(self, directory: Path) -> None:
        """An experiment again, where it was: in this app's thread when it ran here, else detached."""
        directory = directory.resolve()
        in_app = self.training is not None and self.training.run_dir == directory
        if self.busy_training():
            return
        control = self.start_experiment(directory, detached=not in_app)
        for screen in self.screen_stack:
            if isinstance(screen, ExperimentScreen) and screen.directory == directory:
                screen.control = control

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        """Worker errors of every screen, in one place: said, never a crash; and the end of an in-app run."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.notify(f"{type(event.worker.error).__name__}: {event.worker.error}", title="Unexpected error",
                        severity="error", timeout=15)
        if event.worker.group == "training" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if self.training is not None:
                self.training.release_hangup()
            self.end_capture_print(self)

    # Quitting -------------------------------------------------------------------------------------------------

    def unsaved_work(self) -> bool:
        return any(getattr(screen, "unsaved_work", False) for screen in self.screen_stack)

    async def action_quit(self) -> None:
        training = self.training if self.training is not None and self.training.active else None
        if training is None and not self.unsaved_work():
            self.exit()
            return

        def answered(quit_now: bool | None) -> None:
            if not quit_now:
                return
            if training is None:
                self.exit()
                return
            training.control.request_stop("quitting the app")
            self.notify("Stopping the run after its current step and saving a checkpoint, then quitting...",
                        title="Quit", timeout=600)
            self.quit_when_stopped(training)

        question = (f"A{'n' if training.what[0] in 'aeiou' else ''} {training.what} is training in this app. Stop "
                    "it after its current step (its checkpoint and adapter are saved, and it can be resumed) and quit?"
                    if training is not None else "Quit tuneterm? The settings you entered in the wizard are not saved.")
        self.push_screen(Confirm(question, yes="Stop and quit" if training else "Quit"), answered)

    def terminated(self) -> None:
        """SIGTERM (a kill): the app ends as a quit does, giving the terminal back as it was, without asking; a run
        training here stops after its current step, with a checkpoint, first."""
        training = self.training if self.training is not None and self.training.active else None
        if training is None:
            self.exit(return_code=KILLED)
            return
        training.control.request_stop("SIGTERM (the app was killed)")
        self.quit_when_stopped(training, KILLED)

    def on_unmount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    @work(thread=True, group="quitting", exit_on_error=False)
    def quit_when_stopped(self, training: TrainingInApp, return_code: int = 0) -> None:
        training.wait()
        self.call_from_thread(self.exit, None, return_code)


def make_app(services: Services | None = None, opening: Opening = Opening()) -> TuneTermApp:
    """The app as `tuneterm` runs it; tests pass their own services (fake GPU, temporary runs directory)."""
    return TuneTermApp(services, opening)
