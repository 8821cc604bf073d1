"""Runs compared: their train and eval losses on one chart, one stable colour and short name per run (the legend
names each whole), and the settings that differ between them (engine/after/compare.py reads both; the same picture
is written as a PNG on request)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tuneterm.engine.after.compare import Axis, RunCurves, differing_settings, load_curves, short_names
from tuneterm.errors import TuneTermError
from tuneterm.ui.widgets.chart import LineChart


class CurvesRead(Message):
    def __init__(self, curves: list[RunCurves], axis: Axis, error: str = ""):
        super().__init__()
        self.curves, self.axis, self.error = curves, axis, error


class CompareScreen(Screen[None]):
    BINDINGS = [
        Binding("t", "toggle_axis", "Step/tokens", id="toggle_axis", tooltip="Align the curves by step or tokens seen"),
        Binding("e", "toggle_eval", "Train/eval", id="toggle_eval", tooltip="Train loss or eval loss"),
        Binding("o", "save_png", "Save PNG", id="save_png", tooltip="Write the comparison as a picture"),
        Binding("escape", "app.pop_screen", "Back", id="leave"),
    ]

    def __init__(self, run_dirs: list[Path]):
        super().__init__()
        self.run_dirs = run_dirs
        self.axis: Axis = "step"
        self.show_eval = False
        self.curves: list[RunCurves] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="compare-legend")
        yield LineChart(id="compare-chart")
        table: DataTable[Text] = DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"{len(self.run_dirs)} runs compared"
        self.read_curves()

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def read_curves(self) -> None:
        try:
            self.post_message(CurvesRead(load_curves(self.run_dirs, self.axis), self.axis))
        except (TuneTermError, OSError) as exc:
            self.post_message(CurvesRead([], self.axis, str(exc)))

    @on(CurvesRead)
    def _read(self, message: CurvesRead) -> None:
        if message.error:
            self.notify(message.error, title="Cannot compare", severity="error", timeout=12)
            if message.axis == "tokens":  # back to what works
                self.axis = "step"
                self.read_curves()
            return
        self.curves = message.curves
        self.draw()
        self.fill_table()

    def draw(self) -> None:
        chart = self.query_one("#compare-chart", LineChart)
        for key in list(chart.figure.series):
            chart.remove_series(key)
        for run in self.curves:
            points = run.eval if self.show_eval else run.train
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            # No label: the legend above the chart names each run in its colour, and one inside would cover the
            # start of the curves, where the loss falls fastest.
            chart.set_series(run.name, "", xs, ys, run.colour, marker="●" if self.show_eval else "braille")
        chart.set_axes("tokens seen" if self.axis == "tokens" else "step",
                       "eval loss" if self.show_eval else "train loss")
        chart.redraw_now()
        legend = Text()
        short = short_names([run.name for run in self.curves])
        for run, name in zip(self.curves, short):
            points = run.eval if self.show_eval else run.train
            last = f"{points[-1][1]:.4f}" if points else "-"
            legend.append("\n" if legend else "")
            legend.append(f"━━ {name}", style=f"bold {run.colour}")
            legend.append(f"  {run.name if name != run.name else ''}  last {last}")
        self.query_one("#compare-legend", Static).update(legend)

    def fill_table(self) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("setting")
        for run, name in zip(self.curves, short_names([run.name for run in self.curves])):
            table.add_column(Text(name, style=f"bold {run.colour}"))
        differing = differing_settings(self.curves)
        for key, values in differing:
            table.add_row(Text(key), *[Text(str(v)) for v in values])
        if not differing:
            table.add_row(Text("the runs have the same settings"), *[Text("") for _ in self.curves])

    def action_toggle_axis(self) -> None:
        self.axis = "tokens" if self.axis == "step" else "step"
        self.read_curves()

    def action_toggle_eval(self) -> None:
        self.show_eval = not self.show_eval
        self.draw()

    def action_save_png(self) -> None:
        from tuneterm.ui.screens.dialogs import AskPath

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.save_png(path)

        self.app.push_screen(AskPath("Write the comparison to", Path.cwd() / "comparison.png"), chosen)

    @work(thread=True, exclusive=True, group="compare-png", exit_on_error=False)
    def save_png(self, path: Path) -> None:
        from tuneterm.engine.after.compare import save_comparison

        try:
            save_comparison(self.curves, path, self.axis)
        except OSError as exc:
            self.app.call_from_thread(self.notify, f"{path}: {exc.strerror or exc}", title="Not written",
                                      severity="error")
            return
        self.app.call_from_thread(self.notify, str(path), title="Comparison written")
