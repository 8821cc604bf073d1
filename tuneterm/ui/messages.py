"""Messages that cross screens: a screen says what happened, and the app, which alone decides what is shown,
acts on it. A screen never imports another screen.

Named as events: each says what happened. Messages a screen or a widget posts to itself stay next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from textual.message import Message
from textual.screen import Screen

from tuneterm.engine.experiment.plan import ExperimentPlan

RunViewName = Literal["monitor", "summary"]
"""The two views of a run: its monitor (curves, GPUs, log) and its summary (the report and what comes after)."""


@dataclass
class RunChosen(Message):
    """A run was picked from a list of runs: the app opens it (its monitor while it runs, else its summary)."""

    run_dir: Path


@dataclass
class ExperimentChosen(Message):
    """An experiment was picked from a list: the app opens its view."""

    directory: Path


@dataclass
class RunViewRequested(Message):
    """A run's other view was asked for: the app shows it."""

    run_dir: Path
    view: RunViewName


@dataclass
class LeaveRequested(Message):
    """The person asked to leave a screen: the app goes back to the one under it, or to the start screen."""

    screen: Screen[Any]


@dataclass
class ExperimentRequested(Message):
    """An experiment was planned and launched (from the wizard): the app writes its directory and starts it."""

    plan: ExperimentPlan
    detached: bool
