"""An experiment in the app: the table of its variations filling in as their runs end (the best marked by eval loss,
ties within the noise marked too), every run's curve on one chart, what it found, and each run a key away.

It reads the experiment's directory, whoever runs it (this app, a detached process, a scheduler's jobs), in a
worker every REFRESH_SECONDS: the results (engine/experiment/results.py, which keeps the reports of ended runs) and
the curves of the runs whose events changed. The run under the cursor opens as the app opens any run (its monitor
while it trains, else its summary); s stops the experiment (its run in progress after its step, with a checkpoint,
and no other), r goes on with it where it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tuneterm.engine.after.compare import RunCurves, colours_for, load_curves
from tuneterm.engine.events import EVENTS_FILE
from tuneterm.engine.experiment.definition import short_name, value_text
from tuneterm.engine.experiment.directory import read_experiment
from tuneterm.engine.experiment.results import ExperimentResults, results_of
from tuneterm.engine.experiment.runner import ExperimentControl, resumable
from tuneterm.engine.experiment.tables import COLUMNS, MARKS, headline, row_cells
from tuneterm.engine.launch.handle import RunHandle
from tuneterm.engine.rundir.layout import CONFIG_FILE, is_live
from tuneterm.errors import TuneTermError
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.messages import LeaveRequested, RunChosen, RunViewName, RunViewRequested
from tuneterm.ui.services import Services
from tuneterm.ui.widgets.chart import LineChart
from tuneterm.ui.widgets.status import STATUS_COLOURS

REFRESH_SECONDS = 1.0


class ResultsRead(Message):
    """The experiment as it stands, and the curves of its runs (or why it cannot be read)."""

    def __init__(self, results: ExperimentResults | None, curves: list[RunCurves], error: str = ""):
        super().__init__()
        self.results, self.curves, self.error = results, curves, error


class ExperimentCommands(ActionCommands):
    COMMANDS = (("Open the run", "screen.open_run", "Its monitor while it trains, else its summary"),
                ("The run's monitor", "screen.view('monitor')", "Curves, learning rate, system, log"),
                ("The run's summary", "screen.view('summary')", "Results, chat, stop check, export"),
                ("Train or eval loss", "screen.toggle_eval", "Which loss the chart shows"),
                ("Stop the experiment", "screen.stop", "Its run in progress after its step, and no other"),
                ("Resume the experiment", "screen.resume", "Where it was: stopped runs from their checkpoint"),
                ("Compare the runs", "screen.compare", "Their curves by step or tokens, and their settings"))


class ExperimentScreen(Screen[None]):
    COMMANDS = {ExperimentCommands}
    BINDINGS = [
        Binding("enter", "open_run", "Open", id="open_run", tooltip="The run under the cursor", show=False),
        Binding("m", "view('monitor')", "Monitor", id="monitor", tooltip="The run under the cursor's monitor"),
        Binding("v", "view('summary')", "Summary", id="summary", tooltip="The run under the cursor's summary"),
        Binding("e", "toggle_eval", "Train/eval", id="toggle_eval", tooltip="The chart's loss: eval or train"),
        Binding("s", "stop", "Stop", id="stop", tooltip="Stop the experiment: its run after its step, no other"),
        Binding("r", "resume", "Resume", id="resume", tooltip="Go on where it was"),
        Binding("C", "compare", "Compare", id="compare", show=False, tooltip="The runs in the comparison screen"),
        Binding("escape", "leave", "Back", id="leave"),
    ]

    def __init__(self, services: Services, directory: Path, control: ExperimentControl | None = None,
                 resume: Callable[[Path], None] | None = None):
        super().__init__()
        self.services, self.directory = services, directory
        self.control = control
        """The experiment's control when it runs in this app; None: it is reached through its channel."""
        self.resume = resume
        """resume(directory): the experiment started again, the way the app starts one."""
        self.results: ExperimentResults | None = None
        self.curves: list[RunCurves] = []
        self.show_train = False
        self._read_curves: dict[Path, tuple[tuple[int, int], RunCurves]] = {}
        """Each run's curves, read again only when its events.jsonl changed."""
        self._shown: tuple[object, ...] = ()
        """What the screen shows, to draw it again only when that changed."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Reading the experiment...", id="experiment-status")
        table: DataTable[Text] = DataTable(id="experiment-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="experiment-legend")
        yield LineChart(id="experiment-chart")
        with VerticalScroll(id="experiment-findings-box"):
            yield Static(id="experiment-findings")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"experiment {self.directory.name}"  # (its name, once read)
        self.read_results()
        self.set_interval(REFRESH_SECONDS, self.refresh_results)

    def refresh_results(self) -> None:
        """Read again while anything of it runs (the experiment, or a run of it, in whatever process)."""
        results = self.results
        if results is None or results.status == "running" or is_live(self.directory) or \
                any(is_live(row.run_dir) for row in results.rows):
            self.read_results()

    # Reading (in a worker) ------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="experiment", exit_on_error=False)
    def read_results(self) -> None:
        try:
            results = results_of(read_experiment(self.directory))
        except (TuneTermError, OSError) as exc:
            self.post_message(ResultsRead(None, [], str(exc)))
            return
        self.post_message(ResultsRead(results, self.curves_of(results)))

    def curves_of(self, results: ExperimentResults) -> list[RunCurves]:
        """Every run's curves, each in its colour; read again only for a run whose events changed."""
        curves = []
        for row in results.rows:
            events = row.run_dir / EVENTS_FILE
            if not events.is_file() or not (row.run_dir / CONFIG_FILE).is_file():
                continue
            stat = events.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            kept = self._read_curves.get(row.run_dir)
            if kept is None or kept[0] != key:
                kept = (key, load_curves([row.run_dir])[0])
                self._read_curves[row.run_dir] = kept
            curves.append(kept[1])
        colours = colours_for([curve.name for curve in curves])
        return [dataclasses.replace(curve, colour=colour) for curve, colour in zip(curves, colours)]

    @on(ResultsRead)
    def _read(self, message: ResultsRead) -> None:
        if message.results is None:
            self.query_one("#experiment-status", Static).update(f"[$error]{escape(message.error)}[/]")
            return
        results = message.results
        shown = (results.status, results.findings,
                 [(row.state, row.step, row.mark, row.report is not None) for row in results.rows],
                 [(curve.name, len(curve.train), len(curve.eval)) for curve in message.curves])
        self.results, self.curves = results, message.curves
        self.refresh_bindings()  # (its lock may have gone since: stop and resume follow it)
        if shown == self._shown:
            return
        self._shown = shown
        self.sub_title = f"experiment {results.experiment.name}"
        self.show_status(results)
        self.fill_table(results)
        self.draw()
        self.show_findings(results)

    # Drawing --------------------------------------------------------------------------------------------------

    def show_status(self, results: ExperimentResults) -> None:
        hint = ("s stops it after the current run's step; enter opens a run" if results.status == "running" else
                "r goes on where it stopped" if self.check_action("resume", ()) else "enter opens a run")
        self.query_one("#experiment-status", Static).update(
            f"[b]{escape(headline(results, named=False))}[/b]\n[$text-muted]{escape(hint)}[/]")

    def fill_table(self, results: ExperimentResults) -> None:
        """The rows, kept under the cursor: the table is filled again each time the results are read."""
        table = self.query_one("#experiment-table", DataTable)
        cursor = table.cursor_row
        colours = self.app.get_css_variables()
        keys = results.experiment.varied
        table.clear(columns=True)
        table.add_column("", key="mark")
        table.add_column("variation", key="variation")
        for key in keys:
            table.add_column(short_name(key), key=key)
        for column in COLUMNS:
            table.add_column(column, key=column)
        for row in results.rows:
            cells = row_cells(row)
            colour = colours.get(STATUS_COLOURS.get(row.state, "foreground"), colours["foreground"])
            mark = Text(MARKS[row.mark], style=f"bold {colours.get('success', '')}" if row.mark == "best" else "")
            table.add_row(mark, Text(row.name, style="bold" if row.mark == "best" else ""),
                          *(Text(value_text(row.values.get(key))) for key in keys),
                          Text(cells[0], style=colour), *(Text(cell) for cell in cells[1:]), key=row.name)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    def draw(self) -> None:
        chart = self.query_one("#experiment-chart", LineChart)
        for key in list(chart.figure.series):
            chart.remove_series(key)
        legend = Text()
        marks = {row.run_dir: row.mark for row in self.results.rows} if self.results else {}
        for run in self.curves:
            points = run.train if self.show_train else run.eval
            label = run.name.split("-")[0]
            chart.set_series(run.name, "", [p[0] for p in points], [p[1] for p in points], run.colour,
                             marker="braille")
            legend.append("  " if legend else "")
            legend.append(f"━━ {label}{MARKS[marks.get(run.run_dir, '')]}", style=f"bold {run.colour}")
        chart.set_axes("step", "train loss" if self.show_train else "eval loss")
        chart.redraw_now()
        self.query_one("#experiment-legend", Static).update(legend)

    def show_findings(self, results: ExperimentResults) -> None:
        noise = results.noise
        lines = [f"[b]Noise[/b] {noise.margin:.4f}, from {escape(noise.source)}: a smaller difference is a tie "
                 "(README.md says how)." if noise else
                 "[b]Noise[/b]: not measured yet (a run needs four evaluations after training began)."]
        lines += [f"• {escape(finding)}" for finding in results.findings]
        self.query_one("#experiment-findings", Static).update("\n".join(lines))

    # Keys -----------------------------------------------------------------------------------------------------

    def selected_run(self) -> Path | None:
        """The run under the cursor, once it has a directory to open."""
        table = self.query_one("#experiment-table", DataTable)
        if self.results is None or not table.row_count:
            return None
        name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        row = next((row for row in self.results.rows if row.name == name), None)
        return row.run_dir if row is not None and (row.run_dir / CONFIG_FILE).is_file() else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("open_run", "view"):
            return self.selected_run() is not None
        if action == "stop":
            return self.results is not None and is_live(self.directory)
        if action == "resume":
            return self.resume is not None and self.results is not None and resumable(self.results.experiment)
        if action == "compare":
            return len(self.curves) >= 2
        return True

    @on(DataTable.RowHighlighted, "#experiment-table")
    def _highlighted(self) -> None:
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#experiment-table")
    def action_open_run(self) -> None:
        run_dir = self.selected_run()
        if run_dir is None:
            self.notify("This variation has no run yet.", title="Open")
            return
        self.post_message(RunChosen(run_dir))

    def action_view(self, view: RunViewName) -> None:
        run_dir = self.selected_run()
        if run_dir is not None:
            self.post_message(RunViewRequested(run_dir, view))

    def action_toggle_eval(self) -> None:
        self.show_train = not self.show_train
        self.draw()

    def action_stop(self) -> None:
        reason = "the experiment view's stop key"
        if self.control is not None:
            self.control.request_stop(reason)
        else:
            RunHandle(self.directory).stop(reason)
        self.notify("Stopping the experiment: its run in progress stops after its step with a checkpoint, and no "
                    "other starts. r goes on where it stopped.", title="Stop")

    def action_resume(self) -> None:
        if self.resume is not None:
            self.resume(self.directory)
            self.read_results()

    def action_compare(self) -> None:
        from tuneterm.ui.screens.compare import CompareScreen

        if len(self.curves) >= 2:
            self.app.push_screen(CompareScreen([curve.run_dir for curve in self.curves]))

    def action_leave(self) -> None:
        self.post_message(LeaveRequested(self))
