"""The setup wizard: model, data, settings and review on one screen, with the plan panel beside them.

One screen with every step mounted in a ContentSwitcher, so going back and forth loses nothing; the truth is the
Draft, which the steps write to through messages, and what is known about it is the WizardPlanning, which this
screen feeds and shows. The slow planning stages run in thread workers (describing the model and reading its
parameter groups, reading the data with progress and cancel); the per-keystroke stage runs on every change, in
well under a millisecond, and its Plan is shown by the panel and the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Header, Static

from tuneterm.config import RunConfig, config_from_mapping
from tuneterm.data.summary import DataSummary
from tuneterm.engine.experiment.plan import ExperimentPlan
from tuneterm.engine.launch.command import LaunchSpec
from tuneterm.errors import Cancelled, TuneTermError
from tuneterm.plan.catalog import ModelDescription, ModelEntry, describe_model, local_models
from tuneterm.plan.model import ModelFacts
from tuneterm.plan.planner import data_summary, model_facts
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.messages import ExperimentRequested
from tuneterm.ui.screens.dialogs import AskPath, Confirm
from tuneterm.ui.services import Services
from tuneterm.ui.state.draft import Draft
from tuneterm.ui.state.planning import DATA_KEYS, DataKey, DataRequest, WizardPlanning, config_file_for, launch_command
from tuneterm.ui.widgets.data_step import BrowseRequested, CancelRequested, DataSettingChanged, DataStep
from tuneterm.ui.widgets.fields import FieldEdited
from tuneterm.ui.widgets.model_step import ModelPicked, ModelStep, RemoteCodeAllowed
from tuneterm.ui.widgets.paths import data_file_picker
from tuneterm.ui.widgets.plan_panel import PlanPanel
from tuneterm.ui.widgets.review_step import ExperimentSetupRequested, LaunchRequested, ReviewStep, SaveRequested
from tuneterm.ui.widgets.settings_step import LaunchChanged, PresetChosen, SettingsStep
from tuneterm.work import Progress

STEPS = (("model", "Model"), ("data", "Data"), ("settings", "Settings"), ("review", "Review"))
STEP_NAMES = tuple(name for name, _ in STEPS)
GPU_POLL_SECONDS = 2.0

Launcher = Callable[[RunConfig, bool, "LaunchSpec | None"], None]
"""What launching does, given the config, whether to run detached and the GPUs chosen: the app decides."""


# What the workers post to this screen (post_message is thread-safe, never waits); nothing above it needs them.
# Progress says only the latest value, so a burst of it collapses into one (can_replace); results are never dropped.


@dataclass
class ModelsListed(Message, bubble=False):
    """The models at hand were found: in the Hugging Face cache, in local directories, the demo."""

    entries: list[ModelEntry]


@dataclass
class ModelDescribed(Message, bubble=False):
    """What a model is, read from its config (no weights)."""

    description: ModelDescription


@dataclass
class ModelFactsRead(Message, bubble=False):
    """The model's parameter groups (stage 1 of planning), or why they cannot be read."""

    path: str
    facts: ModelFacts | None
    error: TuneTermError | None = None


@dataclass
class DataProgressed(Message, bubble=False):
    """How far the data read got."""

    progress: Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DataProgressed)


@dataclass
class DataRead(Message, bubble=False):
    """The data summary (stage 2 of planning) for the data settings identified by `key`."""

    key: DataKey
    summary: DataSummary


@dataclass
class DataFailed(Message, bubble=False):
    """Why the data for the data settings identified by `key` cannot be used."""

    key: DataKey
    error: TuneTermError


@dataclass
class DataCancelled(Message, bubble=False):
    """The data read stopped before its end, cancelled."""


class WizardCommands(ActionCommands):
    COMMANDS = (("Next step", "screen.next", "Model, data, settings, review"),
                ("Previous step", "screen.back", ""),
                ("Take the suggestion", "screen.take_suggestion", "The focused field's advice, or the suggested "
                                                                   "max length"),
                ("Browse for the data file", "screen.browse", ""),
                ("Save the config", "screen.save", "To a YAML file (never replaced without asking)"),
                ("Launch the run", "screen.launch", "Says what is missing when it cannot"),
                ("Run as an experiment", "screen.experiment", "Variations of this config, each a run, compared"))


class WizardScreen(Screen[None]):
    COMMANDS = {WizardCommands}
    TITLE = "tuneterm"
    SUB_TITLE = "new run"
    BINDINGS = [
        Binding("ctrl+n", "next", "Next", id="next", tooltip="The next step"),
        Binding("escape", "back", "Back", id="back", tooltip="The previous step"),
        Binding("ctrl+t", "take_suggestion", "Suggestion", id="take",
                tooltip="Apply the focused field's advice, or the data's suggested max length (dimmed: none)"),
        Binding("ctrl+o", "browse", "Browse", id="browse", tooltip="Pick the data file",
                show=False),  # (the data step's own Browse button says the key)
        Binding("ctrl+s", "save", "Save", id="save", tooltip="Save the config to a file"),
        Binding("ctrl+r", "launch", "Launch", id="launch", tooltip="Start the run (says what is missing)"),
        Binding("ctrl+e", "experiment", "Experiment", id="experiment", show=False,  # (the review step's button says it)
                tooltip="Run variations of this config (rank, learning rate...) and compare them"),
    ]

    def __init__(self, services: Services, draft: Draft, launcher: Launcher, step: str = "model"):
        super().__init__()
        self.services, self.draft, self.launcher = services, draft, launcher
        self.step = step
        self.furthest = STEP_NAMES.index(step)
        """The furthest step shown: the steps before it were gone through, and keep their ✓ when the person goes
        back."""
        self.planning = WizardPlanning(services.read_gpus())
        """What is known of the draft: its model, its data, the GPUs, and the plan made from them."""

    # Layout ---------------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="step-rail")
        with Horizontal(id="wizard-body"):
            with ContentSwitcher(initial=self.step, id="steps"):
                yield ModelStep(id="model")
                yield DataStep(id="data")
                yield SettingsStep(id="settings")
                yield ReviewStep(self.services.over_ssh, id="review")
            yield PlanPanel(id="plan")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.list_models()
        self.set_interval(GPU_POLL_SECONDS, self.poll_gpus)
        if self.draft.get("model.path"):
            self.describe()
        self.replan()
        self.show_step(self.step)

    @property
    def unsaved_work(self) -> bool:
        return self.draft.dirty

    # Steps ----------------------------------------------------------------------------------------------------

    def show_step(self, step: str) -> None:
        self.step = step
        self.furthest = max(self.furthest, STEP_NAMES.index(step))
        self.query_one("#steps", ContentSwitcher).current = step
        self.query_one(PlanPanel).scroll_home(animate=False)
        self.render_rail()
        self.refresh_bindings()
        focusable = self.query_one(f"#{step}").query("Input, Select, DataTable, Switch, Button, PreviewPane")
        for widget in focusable:
            if widget.focusable and widget.display:
                widget.focus()
                break

    def render_rail(self) -> None:
        parts = []
        for index, (name, title) in enumerate(STEPS, start=1):
            mark = ("✗" if self.planning.step_problems(name) else
                    "✓" if STEP_NAMES.index(name) < self.furthest and name != self.step else " ")
            text = f" {index} {title} {mark}"
            parts.append(f"[reverse b] {text} [/]" if name == self.step else f"[$text-muted] {text} [/]")
        self.query_one("#step-rail", Static).update(" › ".join(parts))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return None if self.step == STEP_NAMES[-1] else True
        if action == "take_suggestion":
            return True if self.suggestion() else None
        if action == "browse":
            return self.step == "data"
        if action == "experiment":
            return self.step == "review"
        return True

    def action_next(self) -> None:
        self.show_step(STEP_NAMES[min(STEP_NAMES.index(self.step) + 1, len(STEP_NAMES) - 1)])

    def action_back(self) -> None:
        if self.step != STEP_NAMES[0]:
            self.show_step(STEP_NAMES[STEP_NAMES.index(self.step) - 1])
            return
        self.leave()

    def leave(self) -> None:
        def answered(leave: bool | None) -> None:
            if leave:
                self.planning.cancel_data()
                self.dismiss()

        if self.draft.dirty:
            self.app.push_screen(Confirm("Leave the wizard? The settings you entered are not saved.",
                                         yes="Leave"), answered)
        else:
            answered(True)

    # Model ----------------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="models", exit_on_error=False)
    def list_models(self) -> None:
        entries = self.services.cached_models() + local_models(self.services.model_roots)
        for tools, name in ((False, "tuneterm demo model"), (True, "tuneterm tools demo model (Qwen3 template)")):
            demo = self.services.built_demo(tools)
            if demo is not None:
                entries.append(ModelEntry(name, str(demo / "model"), "demo", "LlamaForCausalLM"))
        self.post_message(ModelsListed(entries))

    @on(ModelsListed)
    def _models_listed(self, message: ModelsListed) -> None:
        self.query_one(ModelStep).list_models(message.entries, self.services.now())

    @on(ModelPicked)
    def _model_picked(self, message: ModelPicked) -> None:
        if self.planning.model_chosen(self.draft, message.path):
            self.describe()
            self.replan()

    @on(RemoteCodeAllowed)
    def _remote_code(self, message: RemoteCodeAllowed) -> None:
        self.planning.remote_code_allowed(self.draft, message.allowed)
        if self.draft.get("model.path"):
            self.describe()
        self.replan()

    def describe(self) -> None:
        """Read the draft's model."""
        path = self.draft.get("model.path")
        self.planning.reading_model(path)
        self.read_model(path, bool(self.draft.get("model.trust_remote_code")), self.draft.get("model.revision"))
        self.show_model()

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def read_model(self, path: str, trust_remote_code: bool, revision: str | None) -> None:
        description = describe_model(path, revision)
        self.post_message(ModelDescribed(description))
        if not description.usable or (description.needs_remote_code and not trust_remote_code):
            return
        try:
            facts = model_facts(config_from_mapping({"model": {"path": path, "revision": revision,
                                                               "trust_remote_code": trust_remote_code}}))
        except TuneTermError as exc:
            self.post_message(ModelFactsRead(path, None, exc))
            return
        self.post_message(ModelFactsRead(path, facts))

    @on(ModelDescribed)
    def _described(self, message: ModelDescribed) -> None:
        if self.planning.model_described(message.description, self.draft):
            self.show_model()
            self.refresh_data()

    @on(ModelFactsRead)
    def _facts_read(self, message: ModelFactsRead) -> None:
        if self.planning.facts_read(message.path, message.facts, message.error, self.draft):
            self.replan()

    def show_model(self) -> None:
        step, planning = self.query_one(ModelStep), self.planning
        step.show_path(self.draft.get("model.path"))
        step.show_description(planning.description, planning.facts, planning.trainable,
                              bool(self.draft.get("model.trust_remote_code")), planning.model_working)

    # Data -----------------------------------------------------------------------------------------------------

    @on(DataSettingChanged)
    def _data_setting(self, message: DataSettingChanged) -> None:
        if self.planning.data_setting_changed(self.draft, message.key, message.value):
            self.replan()
            if message.key in DATA_KEYS:
                self.refresh_data()

    def refresh_data(self) -> None:
        """Read the data again when what it depends on changed (and only then)."""
        request = self.planning.start_data_read(self.draft,
                                                lambda progress: self.post_message(DataProgressed(progress)))
        if request is not None:
            self.query_one(DataStep).show_progress(None)
            self.read_data(request)

    @work(thread=True, exclusive=True, group="data", exit_on_error=False)
    def read_data(self, request: DataRequest) -> None:
        try:
            summary = data_summary(request.config, request.work)
        except Cancelled:
            self.post_message(DataCancelled())
            return
        except TuneTermError as exc:
            self.post_message(DataFailed(request.key, exc))
            return
        self.post_message(DataRead(request.key, summary))

    @on(DataProgressed)
    def _data_progress(self, message: DataProgressed) -> None:
        if self.planning.reading_data_now:
            self.query_one(DataStep).show_progress(message.progress)

    @on(CancelRequested)
    def _cancel_requested(self) -> None:
        self.planning.cancel_data()

    @on(DataCancelled)
    def _data_cancelled(self) -> None:
        self.planning.data_cancelled()
        self.query_one(DataStep).show_cancelled()

    @on(DataRead)
    def _data_read(self, message: DataRead) -> None:
        if self.planning.data_read(message.key, message.summary):
            self.query_one(DataStep).show_read()
            self.replan()

    @on(DataFailed)
    def _data_failed(self, message: DataFailed) -> None:
        if self.planning.data_failed(message.key, message.error):
            self.query_one(DataStep).show_read(message.error)
            guessed = self.planning.guess_columns(self.draft)
            self.replan()
            if guessed:
                self.refresh_data()

    @on(BrowseRequested)
    def action_browse(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.post_message(DataSettingChanged("data.train", str(path)))

        self.app.push_screen(data_file_picker(self.draft.get("data.train")), chosen)

    # Settings -------------------------------------------------------------------------------------------------

    @on(FieldEdited)
    def _field_edited(self, message: FieldEdited) -> None:
        if self.draft.set(message.key, message.value):
            self.replan()

    @on(LaunchChanged)
    def _launch_changed(self, message: LaunchChanged) -> None:
        self.planning.gpus_chosen(self.draft, message.gpus, message.strategy)
        self.replan()

    @on(PresetChosen)
    def _preset(self, message: PresetChosen) -> None:
        if self.draft.preset != message.preset:
            self.draft.preset = message.preset
            self.replan()

    def suggestion(self) -> dict[str, object] | None:
        """What ctrl+t would set now: the focused field's advice, or the data's suggested max length."""
        if self.step == "settings":
            field = self.query_one(SettingsStep).focused_field()
            return field.advice.fix if field is not None and field.advice is not None and field.advice.fix else None
        return self.planning.max_length_suggestion() if self.step == "data" else None

    def action_take_suggestion(self) -> None:
        changes = self.suggestion()
        if changes and self.draft.update(changes):
            self.notify(", ".join(f"{key} = {value}" for key, value in changes.items()), title="Suggestion taken")
            for field in self.query_one(SettingsStep).fields():
                if field.key in changes:
                    field.take(changes[field.key])
            self.replan()

    # Planning -------------------------------------------------------------------------------------------------

    def poll_gpus(self) -> None:
        if self.planning.gpus_read(self.services.read_gpus()):
            self.replan()

    def replan(self) -> None:
        """The per-keystroke stage, and every view of its result."""
        planning, draft = self.planning, self.draft
        planning.replan(draft, self.services.read_host)
        self.query_one(PlanPanel).show(planning.plan, planning.waiting_for(draft))
        self.show_model()
        data_step = self.query_one(DataStep)
        data_step.show_values(draft.get("data.train"), draft.get("data.eval"), draft.get("data.val_size"),
                              draft.get("data.format") or "auto", draft.get("data.strict") is False,
                              draft.get("data.reasoning") or "auto")
        data_step.show_mapper(planning.column_mapper(draft))
        report = planning.data_report()
        if report is not None:
            data_step.show_summary(report.summary.train, report.summary.eval, report.view, report.findings)
        settings = self.query_one(SettingsStep)
        settings.show(draft.values, planning.resolved, planning.advice, draft.preset,
                      planning.step_problems("settings"))
        settings.show_gpus(planning.gpus, draft.gpus, draft.strategy)
        self.query_one(ReviewStep).show(planning.resolved, planning.problems, draft.command_line(),
                                        launch_command(draft),
                                        str(draft.source) if draft.source and not draft.dirty else None)
        self.render_rail()
        self.refresh_bindings()

    # Review ---------------------------------------------------------------------------------------------------

    @on(SaveRequested)
    def action_save(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is None:
                return
            problem = self.planning.save(self.draft, path)
            if problem:
                self.notify(problem, severity="error")
                return
            self.notify(f"Saved {path}", title="Config saved")
            self.replan()

        self.app.push_screen(AskPath("Save the config to", config_file_for(self.draft, Path.cwd())), chosen)

    @on(LaunchRequested)
    def action_launch(self) -> None:
        missing, config = self.planning.why_not_ready(), self.planning.config
        if missing or config is None:
            self.notify(f"Not ready: {missing}", title="Cannot launch yet", severity="warning")
            return
        self.launcher(config, self.query_one(ReviewStep).detached, self.draft.launch_spec())

    @on(ExperimentSetupRequested)
    def action_experiment(self) -> None:
        """Variations of this config, chosen and planned in a dialog (with the model and data read here), launched
        as an experiment: detached as the review step says, and always with GPUs chosen (one variation per GPU)."""
        from tuneterm.ui.screens.experiment_setup import ExperimentSetup

        start = self.planning.experiment_start(self.draft, self.services.read_host())
        if start is None:
            self.notify(f"Not ready: {self.planning.why_not_ready()}", title="Cannot run an experiment yet",
                        severity="warning")
            return

        detached = self.query_one(ReviewStep).detached or bool(self.draft.gpus)

        def chosen(plan: ExperimentPlan | None) -> None:
            if plan is not None:
                self.post_message(ExperimentRequested(plan, detached))

        self.app.push_screen(ExperimentSetup(start.choice, start.plan_of, start.device, self.services.runs_dir), chosen)
