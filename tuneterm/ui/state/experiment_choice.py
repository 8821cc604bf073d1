"""The wizard's experiment: the settings to vary with their values, as the dialog holds them, and the experiment they
make. Pure: no textual import.

The guides' ranges (plan/ranges.py) are offered, each ticked or not, its values typed as a list ("8, 16, 32"); a
setting others follow (alpha = 2r) sets them from each value. The experiment is the grid of the ticked ones over the
wizard's config, planned variation by variation with the facts and data the wizard has already read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from tuneterm.config import RunConfig
from tuneterm.engine.experiment.definition import Axis, ExperimentSpec, spec_of, value_text
from tuneterm.engine.experiment.plan import ExperimentPlan, MeasuredRate, plan_experiment
from tuneterm.errors import ConfigError, Location, Problem
from tuneterm.plan.planner import Plan
from tuneterm.plan.ranges import Range


@dataclass
class AxisChoice:
    """One setting offered: whether it is varied, and its values as typed."""

    range: Range
    chosen: bool
    text: str

    @classmethod
    def offered(cls, offered: Range) -> AxisChoice:
        return cls(offered, offered.chosen, ", ".join(value_text(v) for v in offered.values))

    def axis(self) -> Axis:
        """The axis its values make (with the keys that follow it); ConfigError for values that cannot be read."""
        where = Location(key=self.range.key)
        points = []
        for item in (part.strip() for part in self.text.split(",")):
            if not item:
                continue
            try:
                value = yaml.safe_load(item)
            except yaml.YAMLError:
                value = item
            followers = tuple(_times(value, factor) for _, factor in self.range.follows)
            if any(follower is None for follower in followers):
                raise ConfigError([Problem(f"{item}: a number, as {self.range.follows[0][0]} follows it", where)])
            points.append((value, *followers))
        if not points:
            raise ConfigError([Problem("give at least one value", where)])
        if len(set(map(repr, points))) < len(points):
            raise ConfigError([Problem("a value is given twice", where)])
        return Axis((self.range.key, *(key for key, _ in self.range.follows)), tuple(points), where)


def _times(value: Any, factor: float) -> Any:
    """A follower's value: the leader's times its factor (an integer stays one); None for a value that is no number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    product = value * factor
    return int(product) if isinstance(value, int) and float(product).is_integer() else product


@dataclass
class ExperimentChoice:
    base: RunConfig
    base_source: str
    choices: list[AxisChoice]
    name: str = ""
    gpus: tuple[int, ...] = ()
    """Side by side, one variation per GPU: the GPUs chosen in the wizard's settings."""
    problems: list[Problem] = field(default_factory=list)
    """What keeps the choice from being an experiment (values that cannot be read, nothing varied)."""

    @classmethod
    def of(cls, base: RunConfig, base_source: str, ranges: list[Range], gpus: tuple[int, ...] = ()) -> ExperimentChoice:
        return cls(base, base_source, [AxisChoice.offered(r) for r in ranges], gpus=gpus)

    def spec(self) -> ExperimentSpec | None:
        """The experiment chosen, or None with the reasons in `problems`."""
        self.problems = []
        axes = []
        for choice in self.choices:
            if choice.chosen:
                try:
                    axes.append(choice.axis())
                except ConfigError as exc:
                    self.problems += exc.problems
        if self.problems:
            return None
        if not axes:
            self.problems = [Problem("tick at least one setting to vary")]
            return None
        try:
            return spec_of(self.base, self.base_source, name=self.name.strip() or None, gpus=self.gpus, axes=axes)
        except ConfigError as exc:
            self.problems = exc.problems
            return None

    def plan(self, plan_of: Callable[[RunConfig], Plan], rate: MeasuredRate | None) -> ExperimentPlan | None:
        """Every variation planned; None (with `problems`) when the choice is no experiment yet."""
        spec = self.spec()
        return plan_experiment(spec, plan_of, rate) if spec is not None else None
