"""A line chart of ours, drawn by textual-plotext behind a small interface so that the library can be replaced.

Drawing runs on the UI thread and competes with training for the GIL (a plotext redraw of 2,000 points takes about
100 ms on a 2-core machine), so the chart keeps its series here, redraws from a timer only when something changed,
and hands plotext at most about twice its width in points. Series colours come from the app's theme variables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from textual.app import ComposeResult
from textual.color import Color
from textual.widget import Widget
from textual_plotext import PlotextPlot

Points = Sequence[tuple[float, float]]


@dataclass
class Series:
    label: str
    points: Points
    colour: str
    """A theme variable: "primary", "accent", "warning", "error", "success", "secondary"."""
    marker: str = "braille"


@dataclass
class _Figure:
    series: dict[str, Series] = field(default_factory=dict)
    vertical: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Marker lines: label -> (x, theme colour)."""
    log_y: bool = False
    x_label: str = ""
    y_label: str = ""


def downsample(points: Points, target: int) -> list[tuple[float, float]]:
    """At most about `target` points: every k-th point, always keeping the last one."""
    if len(points) <= target or target <= 0:
        return list(points)
    stride = math.ceil(len(points) / target)
    kept = list(points[::stride])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


class LineChart(Widget):
    DEFAULT_CSS = """
    LineChart { height: 1fr; min-height: 5; }
    LineChart > PlotextPlot { height: 1fr; }
    """

    def __init__(self, *, redraw_interval: float = 0.5, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.figure = _Figure()
        self._dirty = True
        self._redraw_interval = redraw_interval

    def compose(self) -> ComposeResult:
        yield PlotextPlot()

    def on_mount(self) -> None:
        self.set_interval(self._redraw_interval, self._redraw_if_changed)
        self.call_after_refresh(self._redraw_if_changed)

    def on_resize(self) -> None:
        self._dirty = True

    # The interface --------------------------------------------------------------------------------------------

    def set_series(self, key: str, label: str, points: Points, colour: str = "primary",
                   marker: str = "braille") -> None:
        self.figure.series[key] = Series(label, points, colour, marker)
        self._dirty = True

    def remove_series(self, key: str) -> None:
        if self.figure.series.pop(key, None) is not None:
            self._dirty = True

    def set_vertical(self, key: str, x: float | None, colour: str = "warning") -> None:
        """A vertical marker line at x (None removes it)."""
        if x is None:
            self.figure.vertical.pop(key, None)
        else:
            self.figure.vertical[key] = (x, colour)
        self._dirty = True

    def set_axes(self, x_label: str = "", y_label: str = "", log_y: bool | None = None) -> None:
        self.figure.x_label, self.figure.y_label = x_label, y_label
        if log_y is not None:
            self.figure.log_y = log_y
        self._dirty = True

    def mark_changed(self) -> None:
        """The points of a series changed in place (a live series appended to)."""
        self._dirty = True

    # Drawing --------------------------------------------------------------------------------------------------

    def _colour(self, variable: str) -> tuple[int, int, int]:
        value = self.app.get_css_variables().get(variable) or self.app.get_css_variables()["foreground"]
        red, green, blue = Color.parse(value).rgb
        return red, green, blue

    def _redraw_if_changed(self) -> None:
        if not self._dirty or not self.is_mounted or self.size.width < 10:
            return
        self._dirty = False
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        width = max(20, self.size.width)
        drawn = False
        for series in self.figure.series.values():
            points = downsample(series.points, 2 * width)
            if self.figure.log_y:
                points = [(x, y) for x, y in points if y > 0]
            if not points:
                continue
            xs, ys = zip(*points)
            plt.plot(xs, ys, label=series.label, color=self._colour(series.colour), marker=series.marker)
            drawn = True
        for x, colour in self.figure.vertical.values():
            plt.vline(x, color=self._colour(colour))
        if self.figure.log_y and drawn:
            plt.yscale("log")
        plt.xlabel(self.figure.x_label)
        plt.ylabel(self.figure.y_label)
        plot.refresh()
