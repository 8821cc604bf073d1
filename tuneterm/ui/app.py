"""The app: one factory shared by the command line and the tests, the actions every screen offers, quitting
without losing work, and the command palette."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from tuneterm.config import RunConfig, load_config
from tuneterm.errors import TuneTermError
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.draft import Draft
from tuneterm.ui.screens.dialogs import Confirm
from tuneterm.ui.screens.start import RunChosen, StartScreen
from tuneterm.ui.services import Services


@dataclass(frozen=True)
class Opening:
    """What the app shows first."""

    screen: Literal["start", "wizard"] = "start"
    draft: Draft | None = None
    step: str = "model"
    demo: bool = False
    """Build (once) and open the demo in the wizard."""
    demo_overrides: tuple[str, ...] = ()
    """--set arguments applied to the demo's config."""


class TuneTermCommands(ActionCommands):
    """The app's main actions by name, in the command palette (ctrl+p)."""

    COMMANDS = (("New run", "app.new_run", "Choose a model, data and settings"),
                ("Open a config file", "app.open_config", "Load a YAML config into the wizard's review"),
                ("Demo", "app.demo", "The built-in tiny model and data, offline"),
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

    def on_mount(self) -> None:
        self.push_screen(StartScreen(self.services))
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
        self.notify("Building the demo model and data (once; then cached)...", title="Demo")
        self.build_demo()

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def build_demo(self) -> None:
        from tuneterm.demo import demo_config

        directory = self.services.demo_dir()
        try:
            config = load_config(base=demo_config(directory), base_source="demo", overrides=self.opening.demo_overrides)
        except TuneTermError as exc:
            self.call_from_thread(self.notify, str(exc), title="Demo config problems", severity="error", timeout=20)
            return
        self.call_from_thread(self.open_wizard, Draft.from_config(config), "model")

    @on(RunChosen)
    def _run_chosen(self, message: RunChosen) -> None:
        self.open_config(message.run_dir / "config.yaml")

    # Launch ---------------------------------------------------------------------------------------------------

    def launch(self, config: RunConfig, draft: Draft) -> None:
        """Start the run in a background thread and say where it writes."""
        from tuneterm.engine.runner import new_run

        try:
            plan = new_run(config, self.services.runs_dir)
        except TuneTermError as exc:
            self.notify(str(exc), title="Cannot start the run", severity="error", timeout=20)
            return
        self.notify(f"Training in the background; everything is written to {plan.run_dir}", title="Run started",
                    timeout=20)
        self.train(plan)

    @work(thread=True, group="runs", exit_on_error=False)
    def train(self, plan: object) -> None:
        from tuneterm.engine.runner import run

        result = run(plan)  # type: ignore[arg-type]
        self.call_from_thread(self.notify, f"{type(result).__name__}: {getattr(result, 'status', '')} "
                                           f"{getattr(result, 'reason', '')}", title="Run ended", timeout=30)

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """Worker errors of every screen, in one place: said, never a crash."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.notify(f"{type(event.worker.error).__name__}: {event.worker.error}", title="Unexpected error",
                        severity="error", timeout=15)

    # Quitting -------------------------------------------------------------------------------------------------

    def unsaved_work(self) -> bool:
        return any(getattr(screen, "unsaved_work", False) for screen in self.screen_stack)

    async def action_quit(self) -> None:
        if not self.unsaved_work():
            self.exit()
            return

        def answered(quit_now: bool | None) -> None:
            if quit_now:
                self.exit()

        self.push_screen(Confirm("Quit tuneterm? The settings you entered in the wizard are not saved.",
                                 yes="Quit"), answered)


def make_app(services: Services | None = None, opening: Opening = Opening()) -> TuneTermApp:
    """The app as `tuneterm` runs it; tests pass their own services (fake GPU, temporary runs directory)."""
    return TuneTermApp(services, opening)
