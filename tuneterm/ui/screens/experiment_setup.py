"""The wizard's "run as an experiment": which settings to vary and their values (the guides' ranges offered: the rank
with alpha at 2r, the learning rate around the recommended start, the epochs, the dropout), the plan of every
variation as it is typed, and launch.

Each variation is planned with what the wizard has read already (the model's facts, the data summary, the GPUs and
the host), so the plan follows every keystroke; a time appears once a run of this model has trained on this device
(the rate is read from the runs directory in a worker when the dialog opens).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, HorizontalScroll, Vertical, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.widgets import Button, Checkbox, Input, Label, Static

from tuneterm.config import RunConfig
from tuneterm.engine.experiment.directory import list_experiments
from tuneterm.engine.experiment.plan import (
    ExperimentPlan,
    MeasuredRate,
    measured_rate,
    plan_parts,
)
from tuneterm.plan.planner import Plan
from tuneterm.ui.screens.dialogs import Dialog
from tuneterm.ui.state.experiment_choice import ExperimentChoice
from tuneterm.ui.widgets.tick import Tick


class RateMeasured(Message):
    def __init__(self, rate: MeasuredRate | None):
        super().__init__()
        self.rate = rate


class ExperimentSetup(Dialog["ExperimentPlan | None"]):
    """Returns the experiment's plan to launch, or None."""

    BINDINGS = [Binding("ctrl+r", "launch", "Launch", priority=True)]

    def __init__(self, choice: ExperimentChoice, plan_of: Callable[[RunConfig], Plan], device: str,
                 runs_dir: Path):
        super().__init__()
        self.choice, self.plan_of, self.device, self.runs_dir = choice, plan_of, device, runs_dir
        self.rate: MeasuredRate | None = None
        self.plan: ExperimentPlan | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog experiment-setup"):
            yield Label("[b]Run as an experiment[/b]: every combination of the settings ticked, each a run of its own, "
                        "compared by eval loss at the end.")
            with Horizontal(classes="setting-row"):
                yield Label("Name", classes="setting-label")
                yield Input(placeholder="from the settings varied", id="experiment-name", compact=True)
            for index, choice in enumerate(self.choice.choices):
                with Horizontal(classes="setting-row"):
                    yield Tick(choice.range.label, choice.chosen, id=f"vary-{index}", compact=True,
                                   classes="experiment-vary", tooltip=f"Why these values: {choice.range.source}")
                    yield Input(choice.text, id=f"values-{index}", compact=True)
                yield Static(f"[$text-muted]{escape(choice.range.why)}[/]", classes="experiment-why")
            with Vertical(id="experiment-plan"):
                yield Static(id="experiment-plan-heading")
                with HorizontalScroll(id="experiment-plan-scroll"):
                    yield Static(id="experiment-plan-table")
                yield Static(id="experiment-plan-notes")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Launch (ctrl+r)", id="launch", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.replan()
        self.read_rate()
        self.query_one("#vary-0", Checkbox).focus()

    @work(thread=True, exclusive=True, group="rate", exit_on_error=False)
    def read_rate(self) -> None:
        roots = [self.runs_dir, *(e.directory for e in list_experiments(self.runs_dir))]
        self.post_message(RateMeasured(measured_rate(self.choice.base, self.device, roots)))

    @on(RateMeasured)
    def _rate(self, message: RateMeasured) -> None:
        self.rate = message.rate
        self.replan()

    @on(Checkbox.Changed, ".experiment-vary")
    def _ticked(self, event: Checkbox.Changed) -> None:
        self.choice.choices[int((event.checkbox.id or "vary-0").split("-")[1])].chosen = event.value
        self.replan()

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        if event.input.id == "experiment-name":
            self.choice.name = event.value
        elif event.input.id and event.input.id.startswith("values-"):
            self.choice.choices[int(event.input.id.split("-")[1])].text = event.value
        self.replan()

    def replan(self) -> None:
        """Every variation planned again (the per-keystroke stage each: well under a millisecond)."""
        self.plan = self.choice.plan(self.plan_of, self.rate)
        if self.plan is None:
            heading = "\n".join(f"[$error]✗ {escape(str(problem))}[/]" for problem in self.choice.problems)
            table: list[str] = []
            notes: list[str] = []
        else:
            text, table, notes = plan_parts(self.plan)
            heading = escape(text)
        self.query_one("#experiment-plan-heading", Static).update(heading)
        self.query_one("#experiment-plan-table", Static).update(escape("\n".join(table)))
        self.query_one("#experiment-plan-notes", Static).update(escape("\n".join(notes)))
        self.query_one("#launch", Button).disabled = self.plan is None or not self.plan.runnable

    @on(Button.Pressed, "#launch")
    def action_launch(self) -> None:
        if self.plan is None or not self.plan.runnable:
            self.notify("; ".join(str(p) for p in self.choice.problems) or "No variation can run (see the plan).",
                        title="Cannot launch", severity="warning")
            return
        self.dismiss(self.plan)
