"""The first screen: start a new run, open a config file, try the demo, or pick one of the recent runs or
experiments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from tuneterm.engine.experiment.directory import is_experiment, list_experiments
from tuneterm.engine.experiment.results import ExperimentResults, results_of
from tuneterm.engine.rundir.runs import RunSummary, list_runs
from tuneterm.errors import TuneTermError
from tuneterm.ui.messages import ExperimentChosen, RunChosen
from tuneterm.ui.services import Services
from tuneterm.ui.widgets.status import STATUS_COLOURS

RUN_COLUMNS = ("run", "status", "method", "model", "step", "best eval", "started")
MARK = "● "
"""Marks a run for comparing; its column is always wide enough for it."""


LISTED = 50
"""Runs and experiments listed, the newest."""


@dataclass
class RunsListed(Message, bubble=False):
    """The runs in the runs directory, newest first, and its experiments (posted by the worker that lists them)."""

    runs: list[RunSummary]
    experiments: list[ExperimentResults] = field(default_factory=list)


def age(seconds: float, now: float) -> str:
    delta = now - seconds
    if delta < 90:
        return "just now"
    if delta < 3600:
        return f"{delta / 60:.0f} min ago"
    if delta < 86400:
        return f"{delta / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(seconds))


class StartScreen(Screen[None]):
    TITLE = "tuneterm"
    SUB_TITLE = "fine-tune a language model from a terminal"
    BINDINGS = [
        Binding("n", "app.new_run", "New run", id="new"),
        Binding("o,ctrl+o", "app.open_config", "Open", id="open", tooltip="Open a config file"),
        Binding("d", "app.demo", "Demo", id="demo"),
        Binding("r", "refresh_runs", "Refresh runs", id="refresh", show=False),  # (they are read when shown)
        Binding("space", "mark", "Mark", id="mark", tooltip="Mark the run under the cursor for comparing"),
        Binding("C", "compare", "Compare", id="compare", tooltip="Overlay the marked runs' loss curves"),
    ]

    def __init__(self, services: Services, runs_first: bool = False):
        super().__init__()
        self.services = services
        self.runs_first = runs_first
        """Opened by `tuneterm runs`: the cursor starts on the newest run, not on "new run"."""
        self.marked: list[Path] = []
        """Runs marked for comparing, in the order they were marked."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Fine-tune a model with LoRA or QLoRA. tuneterm plans the run (memory, steps, the guides' "
                     "advice) before anything loads, and trains it with TRL.", id="intro")
        yield OptionList(
            Option("New run: choose a model, data and settings", id="new"),
            Option("Open a config file and review it", id="open"),
            Option("Demo: a tiny model and chat data built here (offline, trains on a CPU in minutes)", id="demo"),
            id="actions")
        yield Static(id="runs-title", classes="group-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_screen_resume(self) -> None:
        """Shown (the first time too) or come back to: the run list as it is now."""
        self.action_refresh_runs()

    def action_refresh_runs(self) -> None:
        self.read_runs()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def read_runs(self) -> None:
        experiments = []
        for experiment in list_experiments(self.services.runs_dir)[:LISTED]:
            try:
                experiments.append(results_of(experiment))
            except (TuneTermError, OSError):
                continue  # (its runs are still listed in its own directory)
        self.post_message(RunsListed(list_runs(self.services.runs_dir), experiments))

    @on(RunsListed)
    def _runs(self, message: RunsListed) -> None:
        now = self.services.now()
        colours = self.app.get_css_variables()
        listed: list[tuple[float, str, list[Text]]] = []
        for run in message.runs[:LISTED]:
            colour = colours.get(STATUS_COLOURS.get(run.status, "foreground"), colours["foreground"])
            step = f"{run.step:,}" + (f"/{run.total_steps:,}" if run.total_steps else "")
            best = f"{run.best_eval_loss:.4f}" if run.best_eval_loss is not None else "-"
            model = Path(run.model).name if run.model else "?"
            listed.append((run.started, str(run.run_dir), [
                self.name_cell(run.run_dir), Text(run.status.replace("_", " "), style=colour), Text(run.method or "?"),
                Text(model), Text(step), Text(best), Text(age(run.started, now))]))
        for results in message.experiments:
            experiment, leader = results.experiment, results.best
            colour = colours.get(STATUS_COLOURS.get(results.status, "foreground"), colours["foreground"])
            base_model = results.base.get("model.path")
            listed.append((experiment.created, str(experiment.directory), [
                Text(experiment.directory.name), Text(results.status, style=colour), Text("experiment"),
                Text(Path(base_model).name if base_model else "?"), Text(f"{results.done}/{results.to_run} runs"),
                Text(f"{leader.best_eval_loss:.4f}" if leader is not None and leader.best_eval_loss is not None
                     else "-"),
                Text(age(experiment.created, now))]))
        rows = {key: cells for _, key, cells in sorted(listed, key=lambda entry: entry[0], reverse=True)[:LISTED]}
        # Each column's width is set before its rows arrive. Left to size itself, the table measures its rows a
        # moment after drawing them, and keeps the first drawing, cut at the headers' widths.
        table = self.query_one("#runs", DataTable)
        table.clear(columns=True)
        for index, label in enumerate(RUN_COLUMNS):
            width = max([len(label), *(cells[index].cell_len for cells in rows.values())])
            table.add_column(label, width=width + len(MARK) if label == "run" else width, key=label)
        for key, cells in rows.items():
            table.add_row(*cells, key=key)
        table.display = bool(rows)
        if self.runs_first and rows:
            self.runs_first = False
            table.focus()
        self.show_runs_title(bool(rows))

    def show_runs_title(self, any_runs: bool) -> None:
        """Where the runs are, and what marking them for comparing is at."""
        where = escape(str(self.services.runs_dir))
        marked = {0: "", 1: ": 1 marked, mark another to compare them"}.get(
            len(self.marked), f": {len(self.marked)} marked, C compares them")
        self.query_one("#runs-title", Static).update(
            f"Recent runs in {where}{marked}" if any_runs else f"No runs yet in {where}: start a new run, or try the "
                                                               "demo.")

    def focus_runs(self) -> None:
        """The cursor on the run list (once it is read, when it is being read)."""
        table = self.query_one("#runs", DataTable)
        if table.row_count:
            table.focus()
        else:
            self.runs_first = True

    def name_cell(self, run_dir: Path) -> Text:
        return Text(MARK + run_dir.name, style="bold") if run_dir in self.marked else Text(run_dir.name)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "mark":
            return self.query_one("#runs", DataTable).has_focus
        if action == "compare":
            return len(self.marked) >= 2
        return True

    def action_mark(self) -> None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        run_dir = Path(str(key.value))
        if is_experiment(run_dir):
            self.notify("An experiment: its view compares its runs (C there).", title="Mark")
            return
        self.marked.remove(run_dir) if run_dir in self.marked else self.marked.append(run_dir)
        table.update_cell(key, "run", self.name_cell(run_dir))
        self.refresh_bindings()
        self.show_runs_title(bool(table.row_count))

    def action_compare(self) -> None:
        from tuneterm.ui.screens.compare import CompareScreen

        if len(self.marked) >= 2:
            self.app.push_screen(CompareScreen(list(self.marked)))

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()  # marking is for the run list

    @on(OptionList.OptionSelected, "#actions")
    async def _action(self, event: OptionList.OptionSelected) -> None:
        await self.app.run_action({"new": "new_run", "open": "open_config", "demo": "demo"}[event.option.id or "new"])

    @on(DataTable.RowSelected, "#runs")
    def _run(self, event: DataTable.RowSelected) -> None:
        path = Path(event.row_key.value) if event.row_key.value else None
        if path is not None and path.is_dir():
            self.post_message(ExperimentChosen(path) if is_experiment(path) else RunChosen(path))
