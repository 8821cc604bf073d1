"""The wizard's planning: what was read of the model and the data, the plan made from them, and what it means.

The wizard reads the model and the data in thread workers and plans again on every change of the Draft. What
those readings returned, which of them is still awaited, and the plan, the problems and the hints worked out
from them live here rather than in the screen, so that they can be tested without a terminal: the screen feeds
this object what its workers report and shows what its methods return. Pure: no textual import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig
from tuneterm.data.columns import ColumnGuess, guess_columns, inspect_command, mapping_for
from tuneterm.data.formats import FIELDS, FormatUnknown
from tuneterm.data.prepare import view_of
from tuneterm.data.summary import DataSummary, DataView
from tuneterm.engine.launch.command import build_launch, launch_problems
from tuneterm.errors import ConfigError, Location, Problem, TuneTermError
from tuneterm.hardware import GpuSurvey, HostReading, device_from_survey
from tuneterm.plan.advice import Advice
from tuneterm.plan.catalog import ModelDescription
from tuneterm.plan.memory import Strategy
from tuneterm.plan.model import ModelFacts
from tuneterm.plan.planner import Plan, data_key, plan_run
from tuneterm.plan.ranges import experiment_ranges
from tuneterm.ui.state.draft import NEEDED_TO_LAUNCH, Draft
from tuneterm.ui.state.experiment_choice import ExperimentChoice
from tuneterm.work import Progress, Work

DataKey = tuple[Any, ...]
"""Everything a data summary depends on (planner.data_key): a summary holds only for the settings it was read with."""

DATA_KEYS = ("data.train", "data.eval", "data.format", "data.columns", "data.train_on", "data.reasoning")
"""The data settings the data summary depends on (with the model): changing one may read the data again."""

PATH_KEYS = ("data.train", "data.eval")
"""Data settings that name a file or folder (or a hub dataset id)."""

STEP_KEYS = {"model": ("model.",), "data": ("data.",), "settings": ("method", "lora.", "training.", "quantization."),
             "review": ()}
"""The config keys (by prefix) whose errors mark each wizard step."""

UNEDITED_KEYS = ("training.output_dir",)
"""Keys no step edits (where the run is written): their errors mark no step, the review step lists them."""

PROGRESS_SECONDS = 0.2
"""How often, at most, a data read reports its progress."""


@dataclass(frozen=True)
class DataRequest:
    """A data read to start: the config it reads, the key its result is for, and the work that cancels it."""

    config: RunConfig
    key: DataKey
    work: Work


@dataclass(frozen=True)
class DataReport:
    """What the data step shows of a data summary."""

    summary: DataSummary
    view: DataView | None
    """The data for the draft's settings (split, max length, what it cuts); None until the model's facts are read."""
    findings: list[Problem]
    """What reading the data found: for the view's settings, else as if invalid records stop the run."""


@dataclass(frozen=True)
class ColumnMapper:
    """What the data step's column mapper shows: the format whose fields are mapped, the column chosen for each of
    its fields (None: none), the columns to choose from, and the config and command that read the data so."""

    format: str
    chosen: dict[str, str | None]
    """Each field of the format, in its order -> the column holding it."""
    found: dict[str, int]
    """The columns of the data -> how many of the sampled records have them."""
    guessed: bool
    """The mapping is the one guessed from the column names, not (yet) one the person chose."""
    config: str
    """`data.format: alpaca, data.columns: {...}`."""
    command: str
    """The `tuneterm inspect` line that reads the data the same way."""


@dataclass(frozen=True)
class ExperimentStart:
    """What the experiment dialog starts from: the variations offered, how each is planned and the device named."""

    choice: ExperimentChoice
    plan_of: Callable[[RunConfig], Plan]
    device: str


@dataclass
class WizardPlanning:
    """The readings of the model, the data and the GPUs, and the plan and problems of the draft made from them."""

    gpus: GpuSurvey
    """The GPUs as last read: their free memory decides whether the run fits."""
    description: ModelDescription | None = None
    """What the chosen model is, from its config (no weights); None until it is read."""
    facts: ModelFacts | None = None
    """The model's parameter groups (stage 1 of planning), for the model at facts_path."""
    facts_path: str | None = None
    """The model the facts are of."""
    model_working: str = ""
    """What the model step says while the model is read, or why its facts cannot be: "" when nothing."""
    summary: DataSummary | None = None
    """The data summary (stage 2 of planning), for the data settings summary_key."""
    summary_key: DataKey | None = None
    """The data settings of the summary read or being read; None: none (or the read was cancelled)."""
    data_error: TuneTermError | None = None
    """Why the data at summary_key cannot be used."""
    data_work: Work | None = None
    """The data read in progress, to cancel; None when none is."""
    columns_found: dict[str, int] = field(default_factory=dict)
    """The columns of a training data whose format its column names do not tell (name -> sampled records having
    it): the column mapper maps them, for as long as that data is chosen."""
    columns_guessed: ColumnGuess | None = None
    """The format and mapping guessed from those columns and set in the draft, until the person changes them."""
    config: RunConfig | None = None
    """The draft validated; None while it has errors."""
    plan: Plan | None = None
    """Stage 3: the plan of the config, once the model's facts are read."""
    problems: list[Problem] = field(default_factory=list)
    """Everything wrong or missing, from the draft, the plan, the data and the launch, each with its key."""

    # The model ------------------------------------------------------------------------------------------------

    def model_chosen(self, draft: Draft, path: str) -> bool:
        """The person chose a model (a path that exists is made absolute); True when it is another one: what was
        read of the last one is forgotten, and it is to be read."""
        if not draft.set("model.path", typed_path(path)):
            return False
        self.description, self.facts, self.facts_path = None, None, None
        return True

    def remote_code_allowed(self, draft: Draft, allowed: bool) -> None:
        """Whether the model's own code may run changed: its facts are to be read again (what it is still holds)."""
        draft.set("model.trust_remote_code", True if allowed else None)
        self.facts, self.facts_path = None, None

    def reading_model(self, path: str) -> None:
        """The model at `path` is being read (its description, then its facts)."""
        self.model_working = f"Reading {path}..."

    def model_described(self, description: ModelDescription, draft: Draft) -> bool:
        """A model's description was read; False when the draft names another model by now (it is ignored)."""
        if description.path != draft.get("model.path"):
            return False
        self.description = description
        if description.needs_remote_code and not draft.get("model.trust_remote_code"):
            self.model_working = "Allow its code below to count its parameters and plan the run."
        elif description.usable:
            self.model_working = "Counting parameters..."
        else:
            self.model_working = ""
        return True

    def facts_read(self, path: str, facts: ModelFacts | None, error: TuneTermError | None, draft: Draft) -> bool:
        """A model's facts were read (or why they cannot be); False when the draft names another model by now."""
        if path != draft.get("model.path"):
            return False
        self.facts, self.facts_path = facts, path
        self.model_working = f"✗ {error}" if error else ""
        return True

    @property
    def trainable(self) -> tuple[int, int] | None:
        """(trainable, total) parameters as planned; None without a plan."""
        return (self.plan.trainable_params, self.plan.total_params) if self.plan is not None else None

    # The data -------------------------------------------------------------------------------------------------

    def data_setting_changed(self, draft: Draft, key: str, value: Any) -> bool:
        """The person changed a data setting (an eval file replaces the held-out share); True when the draft did."""
        if key in PATH_KEYS and value:
            value = typed_path(value)
        if key == "data.eval" and value:
            draft.set("data.val_size", None)
        if key == "data.train" and value != draft.get("data.train"):
            self.columns_found, self.columns_guessed = {}, None
        if key == "data.format" and value in FIELDS and self.columns_found:  # another format: its own mapping
            draft.set("data.columns", mapping_for(self.columns_found, value, FIELDS[value]).columns or None)
        if key == "data.columns" and value and self.columns_found and draft.get("data.format") in (None, "auto"):
            draft.set("data.format", _format_of(value))  # said, not left to detection
        if key in ("data.format", "data.columns"):
            self.columns_guessed = None
        return draft.set(key, value)

    def start_data_read(self, draft: Draft, on_progress: Callable[[Progress], object]) -> DataRequest | None:
        """The data read to start when what the data depends on changed since it was read (or began to be), the
        read in progress cancelled: its result is the one awaited from now on. None: nothing to read (no data
        chosen, no usable model yet, an invalid draft, or no change)."""
        if not draft.get("data.train") or self.description is None or not self.description.usable:
            return None
        try:
            config = draft.config()
        except ConfigError:
            return None
        key = data_key(config)
        if key == self.summary_key:
            return None
        self.cancel_data()
        self.summary, self.summary_key, self.data_error = None, key, None
        self.data_work = Work(on_progress=on_progress, interval=PROGRESS_SECONDS)
        return DataRequest(config, key, self.data_work)

    def cancel_data(self) -> None:
        """Stop the data read in progress, if any."""
        if self.data_work is not None:
            self.data_work.cancel()
            self.data_work = None

    @property
    def reading_data_now(self) -> bool:
        """Whether a data read is in progress (and its progress worth showing)."""
        return self.data_work is not None

    def data_cancelled(self) -> None:
        """A read stopped before its end: the same settings are read again when asked."""
        self.summary_key = None

    def data_read(self, key: DataKey, summary: DataSummary) -> bool:
        """A data summary was read; False when it is for settings no longer awaited (it is ignored)."""
        if key != self.summary_key:
            return False
        self.data_work, self.summary = None, summary
        return True

    def data_failed(self, key: DataKey, error: TuneTermError) -> bool:
        """The data cannot be used; False when that is about settings no longer awaited (it is ignored)."""
        if key != self.summary_key:
            return False
        self.data_work, self.data_error = None, error
        if isinstance(error, FormatUnknown):
            self.columns_found = error.columns
        return True

    def guess_columns(self, draft: Draft) -> bool:
        """When the data's format cannot be told and the person has chosen neither a format nor a mapping: set the
        format and mapping its column names suggest (question -> instruction, answer -> output...). True when the
        draft changed (the data is to be read again)."""
        if not self.columns_found or draft.get("data.columns") or draft.get("data.format") not in (None, "auto"):
            return False
        guess = guess_columns(self.columns_found, FIELDS)
        if guess is None:
            return False
        draft.set("data.format", guess.format)
        draft.set("data.columns", guess.columns or None)
        self.columns_guessed = guess
        return True

    def column_mapper(self, draft: Draft) -> ColumnMapper | None:
        """The column mapper, while the chosen data's format is not told by its column names; None otherwise."""
        if not self.columns_found:
            return None
        columns: dict[str, str] = draft.get("data.columns") or {}
        fmt = draft.get("data.format") or "auto"
        if fmt not in FIELDS:  # the format whose fields are mapped, else the likely one
            guess = guess_columns(self.columns_found, FIELDS)
            fmt = _format_of(columns) or (guess.format if guess else "alpaca")
        chosen = {name: columns.get(name, name if name in self.columns_found else None) for name in FIELDS[fmt]}
        shown = ColumnGuess(fmt, dict(columns))
        command = inspect_command(draft.get("data.train") or "DATA", draft.get("model.path") or "MODEL", fmt, columns)
        return ColumnMapper(fmt, chosen, dict(self.columns_found), self.columns_guessed is not None,
                            shown.describe(), command)

    def data_report(self) -> DataReport | None:
        """The summary as the data step shows it; None while there is none (or the draft does not validate)."""
        if self.summary is None or self.summary_key is None or self.config is None:
            return None
        view = self.plan.data if self.plan is not None else None
        if view is None and self.facts is not None:
            view = view_of(self.summary, self.config, self.facts.context_length)
        return DataReport(self.summary, view, view.findings if view is not None else self.summary.findings(True))

    def max_length_suggestion(self) -> dict[str, Any] | None:
        """The data's suggested max length, when it is not the planned one."""
        view = self.plan.data if self.plan is not None else None
        if view is None or view.max_length == view.suggested_max_length:
            return None
        return {"training.max_length": view.suggested_max_length}

    # The GPUs -------------------------------------------------------------------------------------------------

    def gpus_chosen(self, draft: Draft, gpus: tuple[int, ...], strategy: Strategy) -> None:
        """The person chose the GPUs to train on and how they share the work: one GPU (or none) needs no sharing,
        and a second GPU just added starts with DDP, the usual choice when a model fits one GPU."""
        draft.strategy = "single" if len(gpus) < 2 else "ddp" if len(draft.gpus) < 2 else strategy
        draft.gpus = gpus

    def gpus_read(self, survey: GpuSurvey) -> bool:
        """A new reading of the GPUs; True when their free memory changed (and with it the plan)."""
        if [g.memory_free for g in survey.gpus] == [g.memory_free for g in self.gpus.gpus]:
            return False
        self.gpus = survey
        return True

    # The plan -------------------------------------------------------------------------------------------------

    def replan(self, draft: Draft, read_host: Callable[[], HostReading]) -> None:
        """The per-keystroke stage: the draft validated, planned once its model's facts are read, and every problem
        of it. The host is read only when there is a plan to make (its RAM is the memory without a GPU)."""
        self.problems, self.plan, self.config = [], None, None
        try:
            self.config = draft.config()
        except ConfigError as exc:
            self.problems = list(exc.problems)
        self.problems = draft.problems() if self.config is not None else self.problems + [
            p for p in draft.problems() if p.location.key in NEEDED_TO_LAUNCH]
        spec = draft.launch_spec()
        if self.config is not None and self.facts is not None and self.facts_path == self.config.get("model.path"):
            summary = self.summary if self.summary_key == data_key(self.config) else None
            gpus = self.gpus.only(spec.gpus) if spec else self.gpus
            try:
                self.plan = plan_run(self.config, self.facts, summary, gpus, spec.world_size if spec else 1,
                                     host=read_host(), strategy=spec.strategy if spec else "ddp")
                self.problems += self.plan.problems
            except ConfigError as exc:
                self.problems += exc.problems
        if self.data_error is not None:
            self.problems.append(Problem(self.data_error.summary, Location(key="data.train")))
        if spec is not None:
            self.problems += launch_problems(spec)

    @property
    def resolved(self) -> RunConfig | None:
        """The config as planned (defaults and what the data decides filled in), else as validated."""
        return self.plan.config if self.plan is not None else self.config

    @property
    def advice(self) -> list[Advice]:
        """The plan's advice on the settings; none without a plan."""
        return self.plan.advice if self.plan is not None else []

    def waiting_for(self, draft: Draft) -> str:
        """What the plan panel says while there is no plan: what it waits for."""
        if not draft.get("model.path"):
            return "Choose a model to see the memory it needs."
        if self.facts is None:
            return self.model_working or "Reading the model..."
        return ""

    def step_problems(self, step: str) -> list[Problem]:
        """The errors of the keys a wizard step edits."""
        return [p for p in self.problems if p.level == "error" and (p.location.key or "").startswith(STEP_KEYS[step])
                and (p.location.key or "") not in UNEDITED_KEYS]

    def why_not_ready(self) -> str:
        """Why the run cannot launch yet (the first errors, or what is still being read); "" when it can."""
        blocking = [p for p in self.problems if p.level == "error"]
        if blocking or self.config is None or self.plan is None:
            return "; ".join(str(p) for p in blocking[:3]) or "wait until the model and the data are read"
        return ""

    def experiment_start(self, draft: Draft, host: HostReading) -> ExperimentStart | None:
        """Variations of this config (the guides' ranges), each planned with the model and data read here, on the
        GPUs chosen (one variation per GPU) or else the first; None while the run cannot launch."""
        config, facts, survey = self.config, self.facts, self.gpus
        if self.why_not_ready() or config is None or facts is None:
            return None
        gpus = survey.only(draft.gpus) if draft.gpus else survey.only([survey.gpus[0].index]) if survey.gpus \
            else survey
        summary, read_for = self.summary, self.summary_key

        def plan_of(variation: RunConfig) -> Plan:
            return plan_run(variation, facts, summary if data_key(variation) == read_for else None, gpus, host=host)

        source = str(draft.source) if draft.source is not None and not draft.dirty else "the wizard"
        choice = ExperimentChoice.of(config, source, experiment_ranges(config, facts), draft.gpus)
        return ExperimentStart(choice, plan_of, device_from_survey(gpus).name)

    def save(self, draft: Draft, path: Path) -> str:
        """Write the config to `path` (the draft is then saved there); "" when written, else why it was not."""
        if self.config is None:
            return "Fix the config problems first (see the review step)."
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.config.save(path)
        except OSError as exc:
            return f"Cannot write {path}: {exc.strerror}"
        draft.mark_saved(path)
        return ""


def _format_of(columns: dict[str, str]) -> str | None:
    """The format whose fields a mapping names, when they are one format's."""
    formats = [name for name, fields in FIELDS.items() if set(columns) & set(fields)]
    return formats[0] if len(formats) == 1 else None


def typed_path(text: str) -> str:
    """A path that exists, made absolute so the config works from any directory; anything else (a hub id) as is."""
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def launch_command(draft: Draft) -> str:
    """What the run's launch executes on the GPUs chosen, for a person or a scheduler (RUN_DIR is made at launch);
    "" without a launch of its own, or one that cannot start."""
    spec = draft.launch_spec()
    if spec is None or launch_problems(spec):
        return ""
    placeholder = Path("RUN_DIR")
    return build_launch(placeholder, spec).shell().replace(str(placeholder.resolve()), "RUN_DIR")


def config_file_for(draft: Draft, folder: Path) -> Path:
    """Where saving suggests to write the config: the file it came from, else one named after the model."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path((draft.get("model.path") or "run").rstrip("/")).name)[:40]
    return draft.source or folder / f"{name or 'run'}.yaml"
