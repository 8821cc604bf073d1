"""The setup wizard: model, data, settings and review on one screen, with the plan panel beside them.

One screen with every step mounted in a ContentSwitcher, so going back and forth loses nothing; the truth is the
Draft, which the steps write to through messages. The slow planning stages run in thread workers (describing the
model and reading its parameter groups, reading the data with progress and cancel); the per-keystroke stage runs
on every change, in well under a millisecond, and its Plan is shown by the panel and the steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Header, Static

from tuneterm.config import RunConfig, config_from_mapping
from tuneterm.data.formats import FormatUnknown
from tuneterm.data.prepare import view_of
from tuneterm.data.summary import DataSummary
from tuneterm.engine.launch.command import LaunchSpec, build_launch, launch_problems
from tuneterm.errors import Cancelled, ConfigError, Location, Problem, TuneTermError
from tuneterm.hardware import GpuSurvey
from tuneterm.plan.catalog import ModelDescription, ModelEntry, describe_model, local_models
from tuneterm.plan.model import ModelFacts
from tuneterm.plan.planner import Plan, data_key, data_summary, model_facts, plan_run
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.draft import Draft
from tuneterm.ui.messages import (
    DataCancelled,
    DataFailed,
    DataProgressed,
    DataRead,
    ModelDescribed,
    ModelFactsRead,
    ModelsListed,
)
from tuneterm.ui.screens.dialogs import AskPath, Confirm
from tuneterm.ui.services import Services
from tuneterm.ui.widgets.data_step import BrowseRequested, CancelRequested, DataSettingChanged, DataStep
from tuneterm.ui.widgets.fields import FieldEdited
from tuneterm.ui.widgets.model_step import ModelPicked, ModelStep, RemoteCodeAllowed
from tuneterm.ui.widgets.plan_panel import PlanPanel
from tuneterm.ui.widgets.review_step import LaunchRequested, ReviewStep, SaveRequested
from tuneterm.ui.widgets.settings_step import LaunchChanged, PresetChosen, SettingsStep
from tuneterm.work import Work

STEPS = (("model", "Model"), ("data", "Data"), ("settings", "Settings"), ("review", "Review"))
DATA_KEYS = ("data.train", "data.eval", "data.format", "data.columns", "data.train_on")
GPU_POLL_SECONDS = 2.0

Launcher = Callable[[RunConfig, bool, "LaunchSpec | None"], None]
"""What launching does, given the config, whether to run detached and the GPUs chosen: the app decides."""


class WizardCommands(ActionCommands):
    COMMANDS = (("Next step", "screen.next", "Model, data, settings, review"),
                ("Previous step", "screen.back", ""),
                ("Take the suggestion", "screen.take_suggestion", "The focused field's advice, or the suggested "
                                                                   "max length"),
                ("Browse for the data file", "screen.browse", ""),
                ("Save the config", "screen.save", "To a YAML file (never replaced without asking)"),
                ("Launch the run", "screen.launch", "Says what is missing when it cannot"))


class WizardScreen(Screen[None]):
    COMMANDS = {WizardCommands}
    TITLE = "tuneterm"
    SUB_TITLE = "new run"
    BINDINGS = [
        Binding("ctrl+n", "next", "Next", id="next", tooltip="The next step"),
        Binding("escape", "back", "Back", id="back", tooltip="The previous step"),
        Binding("ctrl+t", "take_suggestion", "Suggestion", id="take",
                tooltip="Apply the focused field's advice, or the data's suggested max length (dimmed: none)"),
        Binding("ctrl+o", "browse", "Browse", id="browse", tooltip="Pick the data file"),
        Binding("ctrl+s", "save", "Save", id="save", tooltip="Save the config to a file"),
        Binding("ctrl+r", "launch", "Launch", id="launch", tooltip="Start the run (says what is missing)"),
    ]

    def __init__(self, services: Services, draft: Draft, launcher: Launcher, step: str = "model"):
        super().__init__()
        self.services, self.draft, self.launcher = services, draft, launcher
        self.step = step
        self.description: ModelDescription | None = None
        self.facts: ModelFacts | None = None
        self.facts_path: str | None = None
        self.model_working = ""
        self.summary: DataSummary | None = None
        self.summary_key: tuple[Any, ...] | None = None
        self.data_error: TuneTermError | None = None
        self.data_work: Work | None = None
        self.gpus: GpuSurvey = services.read_gpus()
        self.plan: Plan | None = None
        self.config: RunConfig | None = None
        self.problems: list[Problem] = []

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
            self.describe(self.draft.get("model.path"))
        self.replan()
        self.show_step(self.step)

    @property
    def unsaved_work(self) -> bool:
        return self.draft.dirty

    # Steps ----------------------------------------------------------------------------------------------------

    def show_step(self, step: str) -> None:
        self.step = step
        self.query_one("#steps", ContentSwitcher).current = step
        self.render_rail()
        self.refresh_bindings()
        focusable = self.query_one(f"#{step}").query("Input, Select, DataTable, Switch, Button, PreviewPane")
        for widget in focusable:
            if widget.focusable and widget.display:
                widget.focus()
                break

    def render_rail(self) -> None:
        order = [name for name, _ in STEPS]
        parts = []
        for index, (name, title) in enumerate(STEPS, start=1):
            mark = "✗" if self.step_problems(name) else "✓" if order.index(name) < order.index(self.step) else " "
            text = f" {index} {title} {mark}"
            parts.append(f"[reverse b] {text} [/]" if name == self.step else f"[$text-muted] {text} [/]")
        self.query_one("#step-rail", Static).update(" › ".join(parts))

    def step_problems(self, step: str) -> list[Problem]:
        prefixes = {"model": ("model.",), "data": ("data.",), "settings": ("method", "lora.", "training.",
                                                                           "quantization."), "review": ()}[step]
        return [p for p in self.problems if p.level == "error" and (p.location.key or "").startswith(prefixes)
                and (p.location.key or "") != "training.output_dir"]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return None if self.step == STEPS[-1][0] else True
        if action == "take_suggestion":
            return True if self.suggestion() else None
        if action == "browse":
            return self.step == "data"
        return True

    def action_next(self) -> None:
        names = [name for name, _ in STEPS]
        self.show_step(names[min(names.index(self.step) + 1, len(names) - 1)])

    def action_back(self) -> None:
        names = [name for name, _ in STEPS]
        if self.step != names[0]:
            self.show_step(names[names.index(self.step) - 1])
            return
        self.leave()

    def leave(self) -> None:
        def answered(leave: bool | None) -> None:
            if leave:
                self.cancel_data()
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
        demo = self.services.built_demo()
        if demo is not None:
            entries.append(ModelEntry("tuneterm demo model", str(demo / "model"), "demo", "LlamaForCausalLM"))
        self.post_message(ModelsListed(entries))

    @on(ModelsListed)
    def _models_listed(self, message: ModelsListed) -> None:
        self.query_one(ModelStep).list_models(message.entries, self.services.now())

    @on(ModelPicked)
    def _model_picked(self, message: ModelPicked) -> None:
        path = message.path
        if Path(path).expanduser().exists():
            path = str(Path(path).expanduser().resolve())
        if self.draft.set("model.path", path):
            self.description, self.facts, self.facts_path = None, None, None
            self.describe(path)
            self.draft_changed()

    @on(RemoteCodeAllowed)
    def _remote_code(self, message: RemoteCodeAllowed) -> None:
        self.draft.set("model.trust_remote_code", True if message.allowed else None)
        self.facts, self.facts_path = None, None
        if self.draft.get("model.path"):
            self.describe(self.draft.get("model.path"))
        self.draft_changed()

    def describe(self, path: str) -> None:
        self.model_working = f"Reading {path}..."
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
        if message.description.path != self.draft.get("model.path"):
            return
        self.description = message.description
        if self.description.needs_remote_code and not self.draft.get("model.trust_remote_code"):
            self.model_working = "Allow its code below to count its parameters and plan the run."
        elif self.description.usable:
            self.model_working = "Counting parameters..."
        else:
            self.model_working = ""
        self.show_model()
        self.refresh_data()

    @on(ModelFactsRead)
    def _facts_read(self, message: ModelFactsRead) -> None:
        if message.path != self.draft.get("model.path"):
            return
        self.facts, self.facts_path = message.facts, message.path
        self.model_working = f"✗ {message.error}" if message.error else ""
        self.replan()

    def show_model(self) -> None:
        step = self.query_one(ModelStep)
        step.show_path(self.draft.get("model.path"))
        trainable = (self.plan.trainable_params, self.plan.total_params) if self.plan else None
        step.show_description(self.description, self.facts, trainable, bool(self.draft.get("model.trust_remote_code")),
                              self.model_working)

    # Data -----------------------------------------------------------------------------------------------------

    @on(DataSettingChanged)
    def _data_setting(self, message: DataSettingChanged) -> None:
        value = message.value
        if message.key in ("data.train", "data.eval") and value and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        if message.key == "data.eval" and value:
            self.draft.set("data.val_size", None)
        if self.draft.set(message.key, value):
            self.draft_changed()
            if message.key in DATA_KEYS:
                self.refresh_data()

    def refresh_data(self) -> None:
        """Read the data again when what it depends on changed (and only then)."""
        if not self.draft.get("data.train") or not self.description or not self.description.usable:
            return
        try:
            config = self.draft.config()
        except ConfigError:
            return
        key = data_key(config)
        if key == self.summary_key:
            return
        self.cancel_data()
        self.summary, self.summary_key, self.data_error = None, key, None
        self.data_work = Work(on_progress=lambda progress: self.post_message(DataProgressed(progress)), interval=0.2)
        self.query_one(DataStep).show_progress(None)
        self.read_data(config, key, self.data_work)

    def cancel_data(self) -> None:
        if self.data_work is not None:
            self.data_work.cancel()
            self.data_work = None

    @work(thread=True, exclusive=True, group="data", exit_on_error=False)
    def read_data(self, config: RunConfig, key: tuple[Any, ...], data_work: Work) -> None:
        try:
            summary = data_summary(config, data_work)
        except Cancelled:
            self.post_message(DataCancelled())
            return
        except TuneTermError as exc:
            self.post_message(DataFailed(key, exc))
            return
        self.post_message(DataRead(key, summary))

    @on(DataProgressed)
    def _data_progress(self, message: DataProgressed) -> None:
        if self.data_work is not None:
            self.query_one(DataStep).show_progress(message.progress)

    @on(CancelRequested)
    def _cancel_requested(self) -> None:
        self.cancel_data()

    @on(DataCancelled)
    def _data_cancelled(self) -> None:
        self.summary_key = None
        self.query_one(DataStep).show_progress(None)
        self.query_one(DataStep).show_failure("Reading the data was cancelled. Press enter in the path to read it "
                                              "again.", [])

    @on(DataRead)
    def _data_read(self, message: DataRead) -> None:
        if message.key != self.summary_key:
            return
        self.data_work = None
        self.summary = message.summary
        self.query_one(DataStep).show_progress(None)
        self.query_one(DataStep).show_columns({}, {})
        self.replan()

    @on(DataFailed)
    def _data_failed(self, message: DataFailed) -> None:
        if message.key != self.summary_key:
            return
        self.data_work = None
        self.data_error = message.error
        step = self.query_one(DataStep)
        step.show_progress(None)
        step.show_failure(message.error.summary, message.error.problems)
        if isinstance(message.error, FormatUnknown):
            step.show_columns(message.error.columns, self.draft.get("data.columns") or {})
        self.replan()

    @on(BrowseRequested)
    def action_browse(self) -> None:
        from textual_fspicker import FileOpen, Filters

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.post_message(DataSettingChanged("data.train", str(path)))

        current = self.draft.get("data.train")
        start = Path(current).parent if current and Path(current).exists() else Path.cwd()
        self.app.push_screen(FileOpen(start, filters=Filters(
            ("Datasets", lambda p: p.suffix in (".jsonl", ".json", ".csv", ".parquet")), ("Any", lambda p: True))),
            chosen)

    # Settings -------------------------------------------------------------------------------------------------

    @on(FieldEdited)
    def _field_edited(self, message: FieldEdited) -> None:
        if self.draft.set(message.key, message.value):
            self.draft_changed()

    @on(LaunchChanged)
    def _launch_changed(self, message: LaunchChanged) -> None:
        strategy = message.strategy if len(message.gpus) > 1 else "single"
        if len(message.gpus) > 1 and len(self.draft.gpus) < 2:
            strategy = "ddp"  # the usual choice when a model fits one GPU
        self.draft.gpus, self.draft.strategy = message.gpus, strategy
        self.draft_changed()

    def launch_command(self) -> str:
        """What the run's launch executes, for a person or a scheduler (RUN_DIR is made at launch)."""
        spec = self.draft.launch_spec()
        if spec is None or launch_problems(spec):
            return ""
        placeholder = Path("RUN_DIR")
        return build_launch(placeholder, spec).shell().replace(str(placeholder.resolve()), "RUN_DIR")

    @on(PresetChosen)
    def _preset(self, message: PresetChosen) -> None:
        if self.draft.preset != message.preset:
            self.draft.preset = message.preset
            self.draft_changed()

    def suggestion(self) -> dict[str, Any] | None:
        """What ctrl+t would set now: the focused field's advice, or the data's suggested max length."""
        if self.step == "settings":
            field = self.query_one(SettingsStep).focused_field()
            return field.advice.fix if field is not None and field.advice is not None and field.advice.fix else None
        if self.step == "data" and self.plan is not None and self.plan.data is not None:
            view = self.plan.data
            if view.max_length != view.suggested_max_length:
                return {"training.max_length": view.suggested_max_length}
        return None

    def action_take_suggestion(self) -> None:
        changes = self.suggestion()
        if changes and self.draft.update(changes):
            self.notify(", ".join(f"{key} = {value}" for key, value in changes.items()), title="Suggestion taken")
            for field in self.query_one(SettingsStep).fields():
                if field.key in changes:
                    field.take(changes[field.key])
            self.draft_changed()

    # Planning -------------------------------------------------------------------------------------------------

    def draft_changed(self) -> None:
        self.replan()

    def poll_gpus(self) -> None:
        survey = self.services.read_gpus()
        if [g.memory_free for g in survey.gpus] != [g.memory_free for g in self.gpus.gpus]:
            self.gpus = survey
            self.replan()

    def replan(self) -> None:
        """The per-keystroke stage, and every view of its result."""
        self.problems, self.plan, self.config = [], None, None
        try:
            self.config = self.draft.config()
        except ConfigError as exc:
            self.problems = list(exc.problems)
        self.problems = self.draft.problems() if self.config is not None else self.problems + [
            p for p in self.draft.problems() if p.location.key in ("model.path", "data.train")]
        waiting = self.waiting_for()
        if self.config is not None and self.facts is not None and self.facts_path == self.config.get("model.path"):
            summary = self.summary if self.summary_key == data_key(self.config) else None
            spec = self.draft.launch_spec()
            gpus = self.gpus.only(spec.gpus) if spec else self.gpus
            try:
                self.plan = plan_run(self.config, self.facts, summary, gpus, spec.world_size if spec else 1,
                                     host=self.services.read_host(), strategy=spec.strategy if spec else "ddp")
                self.problems += self.plan.problems
            except ConfigError as exc:
                self.problems += exc.problems
        if self.data_error is not None:
            self.problems.append(Problem(self.data_error.summary, Location(key="data.train")))
        spec = self.draft.launch_spec()
        if spec is not None:
            self.problems += launch_problems(spec)
        self.show_plan(waiting)

    def waiting_for(self) -> str:
        if not self.draft.get("model.path"):
            return "Choose a model to see the memory it needs."
        if self.facts is None:
            return self.model_working or "Reading the model..."
        return ""

    def show_plan(self, waiting: str) -> None:
        self.query_one(PlanPanel).show(self.plan, waiting)
        self.show_model()
        data_step = self.query_one(DataStep)
        data_step.show_values(self.draft.get("data.train"), self.draft.get("data.eval"),
                              self.draft.get("data.val_size"), self.draft.get("data.format") or "auto",
                              self.draft.get("data.strict") is False)
        if self.summary is not None and self.summary_key is not None and self.config is not None:
            view = self.plan.data if self.plan is not None else None
            if view is None and self.facts is not None:
                view = view_of(self.summary, self.config, self.facts.context_length)
            findings = view.findings if view is not None else self.summary.findings(True)
            data_step.show_summary(self.summary.train, self.summary.eval, view, findings)
        resolved = self.plan.config if self.plan is not None else self.config
        settings = self.query_one(SettingsStep)
        settings.show(self.draft.values, resolved, self.plan.advice if self.plan else [], self.draft.preset)
        settings.show_gpus(self.gpus, self.draft.gpus, self.draft.strategy)
        self.query_one(ReviewStep).show(resolved, self.problems, self.draft.command_line(), self.launch_command(),
                                        str(self.draft.source) if self.draft.source and not self.draft.dirty
                                        else None)
        self.render_rail()
        self.refresh_bindings()

    # Review ---------------------------------------------------------------------------------------------------

    @on(SaveRequested)
    def action_save(self) -> None:
        suggested = self.draft.source or Path.cwd() / f"{_slug(self.draft.get('model.path') or 'run')}.yaml"

        def chosen(path: Path | None) -> None:
            if path is None or self.config is None:
                if path is not None:
                    self.notify("Fix the config problems first (see the review step).", severity="error")
                return
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.config.save(path)
            except OSError as exc:
                self.notify(f"Cannot write {path}: {exc.strerror}", severity="error")
                return
            self.draft.mark_saved(path)
            self.notify(f"Saved {path}", title="Config saved")
            self.replan()

        self.app.push_screen(AskPath("Save the config to", suggested), chosen)

    @on(LaunchRequested)
    def action_launch(self) -> None:
        blocking = [p for p in self.problems if p.level == "error"]
        if blocking or self.config is None or self.plan is None:
            missing = "; ".join(str(p) for p in blocking[:3]) or "wait until the model and the data are read"
            self.notify(f"Not ready: {missing}", title="Cannot launch yet", severity="warning")
            return
        self.launcher(self.config, self.query_one(ReviewStep).detached, self.draft.launch_spec())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text.rstrip("/")).name)[:40] or "run"
