"""A line chart of ours, drawn by textual-plotext behind a small interface so that the library can be replaced.

Drawing runs on the UI thread and competes with training for the GIL (and, on a CPU, for the cores training's
threads need): a plotext redraw of a 100x30 chart costs tens of milliseconds. So the chart keeps its series here
as columns (the monitor's own arrays, not copies), hands plotext at most about twice its width in points, and
redraws only when something changed, and no more often than keeps its drawing under BUDGET of the time: a chart
that took 40 ms to draw waits 2 s before the next. A key the person presses is drawn at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from textual.app import ComposeResult, RenderResult
from textual.color import Color
from textual.widget import Widget
from textual_plotext import PlotextPlot

BUDGET = 0.02
"""Share of the time the chart may spend drawing while data streams in."""


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    """A theme variable ("primary", "accent", "warning", "error", "success", "secondary") or a "#rrggbb" colour
    that stays the same whatever the theme (a run's own colour in a comparison)."""
    marker: str = "braille"
    joined: bool = True
    """False for points that are not a curve (evaluations): drawn as markers alone."""


@dataclass
class _Figure:
    series: dict[str, Series] = field(default_factory=dict)
    vertical: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Marker lines: label -> (x, theme colour)."""
    log_y: bool = False
    x_label: str = ""
    y_label: str = ""


def downsample(xs: Sequence[float], ys: Sequence[float], target: int, log_y: bool = False) -> tuple[list[float],
                                                                                                   list[float]]:
    """At most about `target` finite points (positive ones on a log axis), every k-th, always keeping the last."""
    count = min(len(xs), len(ys))
    stride = max(1, math.ceil(count / target)) if target > 0 else 1
    indices = list(range(0, count, stride))
    if count and indices[-1] != count - 1:
        indices.append(count - 1)
    kept_x, kept_y = [], []
    for index in indices:
        y = ys[index]
        if math.isfinite(y) and (y > 0 or not log_y):
            kept_x.append(xs[index])
            kept_y.append(y)
    return kept_x, kept_y


class _CachedPlot(PlotextPlot):
    """textual-plotext rebuilds the whole plot on every repaint of the screen, whatever caused it (a footer, a
    status line): here the built plot is kept until the chart asks for a new one or the size or theme change."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.cost = 0.0
        """Seconds the last build took."""
        self._built: tuple[tuple[Any, ...], RenderResult] | None = None

    def render(self) -> RenderResult:
        key = (self.generation, self.size, self.app.theme)
        if self._built is None or self._built[0] != key:
            started = time.perf_counter()
            self._built = (key, super().render())
            self.cost = time.perf_counter() - started
        return self._built[1]


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
        self._next_allowed = 0.0

    def compose(self) -> ComposeResult:
        yield _CachedPlot()

    def on_mount(self) -> None:
        self.set_interval(self._redraw_interval, self._redraw_if_changed)
        self.call_after_refresh(self.redraw_now)

    def on_resize(self) -> None:
        self.redraw_now()

    # The interface --------------------------------------------------------------------------------------------

    def set_series(self, key: str, label: str, xs: Sequence[float], ys: Sequence[float], colour: str = "primary",
                   marker: str = "braille", joined: bool = True) -> None:
        """A series as two columns; they may be live arrays that grow (call mark_changed when they do)."""
        self.figure.series[key] = Series(label, xs, ys, colour, marker, joined)
        self._dirty = True

    def remove_series(self, key: str) -> None:
        if self.figure.series.pop(key, None) is not None:
            self._dirty = True

    def set_vertical(self, key: str, x: float | None, colour: str = "warning") -> None:
        """A vertical marker line at x (None removes it)."""
        if self.figure.vertical.get(key, (None,))[0] == x:
            return
        if x is None:
            self.figure.vertical.pop(key, None)
        else:
            self.figure.vertical[key] = (x, colour)
        self._dirty = True

    def set_axes(self, x_label: str = "", y_label: str = "", log_y: bool | None = None) -> None:
        self.figure.x_label, self.figure.y_label = x_label, y_label
        if log_y is not None and log_y != self.figure.log_y:
            self.figure.log_y = log_y
            self._dirty = True

    def mark_changed(self) -> None:
        """The columns of a series grew in place (a live run)."""
        self._dirty = True

    def redraw_now(self) -> None:
        """For a change the person asked for (a key, a resize): drawn at once, not when the budget allows."""
        self._dirty = True
        self._next_allowed = 0.0
        self._redraw_if_changed()

    # Drawing --------------------------------------------------------------------------------------------------

    def _colour(self, variable: str) -> tuple[int, int, int]:
        value = variable if variable.startswith("#") else \
            self.app.get_css_variables().get(variable) or self.app.get_css_variables()["foreground"]
        red, green, blue = Color.parse(value).rgb
        return red, green, blue

    def _redraw_if_changed(self) -> None:
        now = time.perf_counter()
        if not self._dirty or now < self._next_allowed or not self.is_mounted or self.size.width < 10:
            return
        self._dirty = False
        plot = self.query_one(_CachedPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        width = max(20, self.size.width)
        drawn = False
        low, high = math.inf, -math.inf
        for series in self.figure.series.values():
            xs, ys = downsample(series.xs, series.ys, 2 * width, self.figure.log_y)
            if xs:
                low, high = min(low, xs[0]), max(high, xs[-1])
                draw = plt.plot if series.joined else plt.scatter
                draw(xs, ys, label=series.label, color=self._colour(series.colour), marker=series.marker)
                drawn = True
        for x, colour in self.figure.vertical.values():
            plt.vline(x, color=self._colour(colour))
        if self.figure.log_y and drawn:
            plt.yscale("log")
        if high - low >= 4:  # x is a step count: ticks at whole steps
            plt.xticks(sorted({round(low + (high - low) * i / 4) for i in range(5)}))
        plt.xlabel(self.figure.x_label)
        plt.ylabel(self.figure.y_label)
        plot.generation += 1
        plot.refresh()
        prepared = time.perf_counter() - now
        self._next_allowed = now + max(self._redraw_interval, (prepared + plot.cost) / BUDGET)
