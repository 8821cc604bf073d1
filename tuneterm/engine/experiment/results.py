"""What an experiment found: the table of its variations, the best by eval loss, the noise, and the findings.

Every number of a variation is its run's own report (engine/after/report.py), the one its summary and run card show,
so the table can never say another eval loss than the run does. The best variation is the one whose best
evaluation is lowest, among those whose training beat the eval loss before training: never by train loss, which
falls with every step whether the model generalises or not.

A difference is only a finding when it is larger than the eval noise, measured here two ways:
- from the runs themselves, always: how far a run's eval loss moves from one evaluation to the next beyond its trend.
  The second differences of its last evaluations leave out a steady fall or rise and a steady bend of the curve; what
  is left is the step-to-step noise of training (a noise of spread s moves a second difference by s times the square
  root of 6). The median over the runs is s; two runs' best eval losses then differ by chance by up to 2 x sqrt(2) x s
  (two standard deviations of a difference of two such values), the tie margin;
- from a repeat, when the experiment has one (--measure-noise): the first variation trained again with another seed,
  the difference of the two runs' best eval losses, which holds the training's own randomness.
The margin is the larger of the two: a difference below it is called a tie, not a win.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneterm.config import load_config
from tuneterm.engine.after.report import RunReport, loss_text, perplexity, report_of
from tuneterm.engine.events import (
    EVENTS_FILE,
    EvalFinished,
    ExperimentEnded,
    ExperimentStarted,
    VariationEnded,
    read_events,
)
from tuneterm.engine.experiment.definition import Variation, value_text
from tuneterm.engine.experiment.directory import BASE_FILE, Experiment
from tuneterm.engine.rundir.layout import is_live
from tuneterm.engine.rundir.runs import summarise_run
from tuneterm.errors import TuneTermError

LAST_EVALUATIONS = 6
"""How many of a run's last evaluations its noise is measured on (at least four of them are needed)."""

ENDED = ("completed", "early_stopped", "failed")
"""A variation in one of these states is done: an experiment resumed leaves it as it is."""
TRAINED = ("completed", "early_stopped")
"""Runs that trained to their end: only they are compared (a stopped run's best is only as far as it got)."""
RESUMABLE = ("stopped", "interrupted")
BASELINES_APART = 1e-3
"""Eval losses before training further apart than this measure different things. (Closer ones differ by how the
Trainer averages its batches: another eval batch size moves the mean of batch means a little.)"""

State = Literal["pending", "running", "completed", "early_stopped", "stopped", "failed", "interrupted", "not run"]
Status = Literal["running", "finished", "stopped", "interrupted", "not started", "incomplete"]


@dataclass
class Row:
    """One variation as the table shows it."""

    variation: Variation
    values: dict[str, Any]
    """Its value of every varied key (the base's, where it keeps it)."""
    state: State
    run_dir: Path
    reason: str = ""
    """Why it failed, or why it is not run."""
    report: RunReport | None = None
    """Its run's report, once the run has ended (or stopped)."""
    step: int = 0
    total_steps: int | None = None
    evals: list[float] = field(default_factory=list)
    """Its eval losses after the one before training, in order."""
    mark: Literal["", "best", "tie"] = ""

    @property
    def name(self) -> str:
        return self.variation.name

    @property
    def best_eval_loss(self) -> float | None:
        """The run's best eval loss, when an evaluation beat the loss before training."""
        report = self.report
        return report.best_eval_loss if report is not None and report.outcome == "improved" else None

    @property
    def compared(self) -> bool:
        """Whether it counts in the comparison: trained to its end, and better than before training."""
        return self.state in TRAINED and self.best_eval_loss is not None


@dataclass(frozen=True)
class Noise:
    margin: float
    """A difference of best eval losses under this is a tie."""
    how: str
    """How it was measured, in a sentence."""
    source: str
    """Where it was measured, in a few words: the runs' own evaluations, a repeat with another seed."""


@dataclass
class ExperimentResults:
    experiment: Experiment
    status: Status
    rows: list[Row]
    noise: Noise | None
    findings: list[str]
    base: dict[str, Any] = field(default_factory=dict)
    """The base config's values (its model, its data...)."""

    @property
    def best(self) -> Row | None:
        return next((row for row in self.rows if row.mark == "best"), None)

    @property
    def done(self) -> int:
        return sum(row.state in ENDED for row in self.rows)

    @property
    def to_run(self) -> int:
        return sum(row.state != "not run" for row in self.rows)


_REPORTS: dict[Path, tuple[tuple[int, int], RunReport, list[float]]] = {}
"""Reports of ended runs, kept while their events.jsonl is unchanged: a screen reads the results every second."""


def results_of(experiment: Experiment) -> ExperimentResults:
    """The experiment as it stands: each variation's state and report, the best, the noise and the findings."""
    base = _base_values(experiment)
    failures = {e.variation: e for e in _experiment_events(experiment) if isinstance(e, VariationEnded)}
    rows = [_row(experiment, v, base, failures.get(v.name)) for v in experiment.variations]
    noise = eval_noise(rows)
    _mark(rows, noise)
    return ExperimentResults(experiment, _status(experiment, rows), rows, noise, findings(rows, noise, experiment),
                             base)


def _base_values(experiment: Experiment) -> dict[str, Any]:
    try:
        return load_config(experiment.directory / BASE_FILE).values
    except TuneTermError:
        return {}


def _experiment_events(experiment: Experiment) -> list[Any]:
    path = experiment.directory / EVENTS_FILE
    return read_events(path, lambda skipped: None) if path.is_file() else []


def _row(experiment: Experiment, variation: Variation, base: dict[str, Any], ended: VariationEnded | None) -> Row:
    values = {key: variation.overrides.get(key, base.get(key)) for key in experiment.varied}
    run_dir = experiment.run_dir(variation)
    if variation.not_run:
        return Row(variation, values, "not run", run_dir, variation.not_run)
    summary = summarise_run(run_dir)
    if summary is None:
        if ended is not None and ended.status == "failed":  # it could not even start
            return Row(variation, values, "failed", run_dir, ended.reason)
        return Row(variation, values, "pending", run_dir)
    row = Row(variation, values, summary.status, run_dir, summary.reason, step=summary.step,
              total_steps=summary.total_steps)
    if summary.status != "running" and (run_dir / EVENTS_FILE).is_file():
        row.report, row.evals = _report(run_dir)
        row.step = row.report.steps
    return row


def _report(run_dir: Path) -> tuple[RunReport, list[float]]:
    stat = (run_dir / EVENTS_FILE).stat()
    key = (stat.st_size, stat.st_mtime_ns)
    kept = _REPORTS.get(run_dir)
    if kept is not None and kept[0] == key:
        return kept[1], kept[2]
    evals = [e.eval_loss for e in read_events(run_dir / EVENTS_FILE, lambda skipped: None)
             if isinstance(e, EvalFinished) and e.step > 0]
    report = report_of(run_dir)
    _REPORTS[run_dir] = (key, report, evals)
    return report, evals


def _status(experiment: Experiment, rows: list[Row]) -> Status:
    events = [e for e in _experiment_events(experiment) if isinstance(e, (ExperimentStarted, ExperimentEnded))]
    ended = bool(events) and isinstance(events[-1], ExperimentEnded)  # (said just before its runner lets go)
    if any(row.state == "running" for row in rows) or is_live(experiment.directory) and not ended:
        return "running"
    if all(row.state in (*ENDED, "not run") for row in rows):
        return "finished"
    if ended:
        return "stopped" if events[-1].status == "stopped" else "incomplete"  # type: ignore[union-attr]
    if events:
        return "interrupted"
    return "incomplete" if any(row.state != "pending" for row in rows if row.state != "not run") else "not started"


# The noise and the best ----------------------------------------------------------------------------------------


def run_noise(evals: list[float]) -> float | None:
    """The spread of one evaluation of a run beyond its trend: the standard deviation of the second differences of
    its last evaluations over the square root of 6 (a steady slope or bend moves every second difference alike, an
    independent noise of spread s moves each by s times the square root of 6). None with fewer than four."""
    last = [loss for loss in evals[-LAST_EVALUATIONS:] if math.isfinite(loss)]
    if len(last) < 4:
        return None
    second = [c - 2 * b + a for a, b, c in zip(last, last[1:], last[2:])]
    return statistics.stdev(second) / math.sqrt(6)


def eval_noise(rows: list[Row]) -> Noise | None:
    """The margin under which two variations' best eval losses are a tie (the module's docstring says how it is
    measured), or None when no run has evaluated often enough to tell."""
    ended = [row for row in rows if row.report is not None and row.state in TRAINED]
    spreads = [s for s in (run_noise(row.evals) for row in ended) if s is not None]
    spread = statistics.median(spreads) if spreads else None
    by_name = {row.name: row for row in ended}
    repeats = [(row, by_name[row.variation.repeat_of]) for row in ended
               if row.variation.repeat_of in by_name and row.best_eval_loss is not None
               and by_name[row.variation.repeat_of].best_eval_loss is not None]
    parts = []
    spread_margin = 2 * math.sqrt(2) * spread if spread is not None else None
    if spread is not None:
        parts.append(f"the runs' own evaluations: a run's eval loss moves by about {spread:.4f} from one evaluation "
                     f"to the next beyond its trend (second differences of its last {LAST_EVALUATIONS} evaluations, "
                     f"median over {len(spreads)} run{'s' if len(spreads) > 1 else ''}), so two runs differ by chance "
                     f"by up to 2 x sqrt(2) x {spread:.4f} = {spread_margin:.4f}")
    seed_margin = None
    for repeat, first in repeats:
        assert repeat.best_eval_loss is not None and first.best_eval_loss is not None
        seed_margin = max(seed_margin or 0.0, abs(repeat.best_eval_loss - first.best_eval_loss))
        parts.append(f"the difference between {first.name} and its repeat with another seed, {repeat.name}: "
                     f"{abs(repeat.best_eval_loss - first.best_eval_loss):.4f}")
    margins = [m for m in (spread_margin, seed_margin) if m is not None]
    if not margins:
        return None
    sources = [name for name, margin in (("the runs' own evaluations", spread_margin),
                                         ("a repeat with another seed", seed_margin)) if margin is not None]
    return Noise(max(margins), "the larger of " + "; and ".join(parts) if len(parts) > 1 else parts[0],
                 " and ".join(sources))


def _mark(rows: list[Row], noise: Noise | None) -> None:
    """The best variation by eval loss, and those within the noise of it (ties), among the runs that trained to their
    end."""
    scored = [row for row in rows if row.compared]
    if not scored:
        return
    best = min(scored, key=lambda row: row.best_eval_loss or 0.0)
    best.mark = "best"
    for row in scored:
        if row is not best and noise is not None and (row.best_eval_loss or 0.0) - (best.best_eval_loss or 0.0) \
                <= noise.margin:
            row.mark = "tie"


# Findings ------------------------------------------------------------------------------------------------------


def findings(rows: list[Row], noise: Noise | None, experiment: Experiment) -> list[str]:
    """What the results say, each in a sentence, with the care the noise asks for."""
    found: list[str] = []
    best = next((row for row in rows if row.mark == "best"), None)
    scored = [row for row in rows if row.compared]
    ended = [row for row in rows if row.report is not None and row.state in TRAINED]
    if best is not None and best.report is not None:
        found.append(f"Best by eval loss: {best.name}, {loss_text(best.best_eval_loss)} (perplexity "
                     f"{perplexity(best.best_eval_loss)}) at step {best.report.best_step}.")
        ties = [row for row in rows if row.mark == "tie"]
        if ties and noise is not None:
            found.append(f"Within the noise of it ({noise.margin:.4f}), a tie rather than a loss: "
                         + ", ".join(f"{row.name} ({(row.best_eval_loss or 0) - (best.best_eval_loss or 0):+.4f})"
                                     for row in ties) + ".")
        elif noise is None and len(scored) > 1:
            found.append("The noise is not measured (a run needs four evaluations after training began), so no "
                         "difference can be told from chance.")
    elif ended:
        found.append("No variation's training beat its eval loss before training: nothing is called best.")
    found += _factor_findings(rows, noise, experiment)
    trained = [(row.report.train_loss_last, index, row) for index, row in enumerate(ended)
               if row.report is not None and row.report.train_loss_last is not None]
    lowest_train = min(trained)[2] if trained else None
    if lowest_train is not None and best is not None and lowest_train is not best and lowest_train.mark != "tie":
        found.append(f"The lowest train loss is {lowest_train.name}'s, not the best's: train loss does not pick the "
                     "model that generalises.")
    not_last = [row for row in scored if row.report and row.report.best_step is not None and row.evals
                and row.report.final_eval_loss is not None and row.report.final_eval_loss > (row.best_eval_loss or 0)]
    if not_last:
        found.append(f"In {len(not_last)} of {len(scored)} runs the best evaluation was not the last one (the adapter "
                     f"saved is the best's): {', '.join(row.name for row in not_last)}.")
    baselines = [row.report.baseline_eval_loss for row in ended
                 if row.report and row.report.baseline_eval_loss is not None]
    if baselines and max(baselines) - min(baselines) > BASELINES_APART:
        found.append(f"The eval losses before training differ ({loss_text(min(baselines))} to "
                     f"{loss_text(max(baselines))}): these runs do not measure the same eval data the same way (a "
                     "different max length or eval set), so their eval losses are not comparable.")
    for row in rows:
        if row.state == "failed":
            found.append(f"{row.name} failed: {row.reason}")
        elif row.state == "not run":
            found.append(f"{row.name} was not run: {row.reason}")
    return found


def _factor_findings(rows: list[Row], noise: Noise | None, experiment: Experiment) -> list[str]:
    """For each setting varied, the variations that differ in it alone (keys varied together count as one):
    whether changing it lowered the best eval loss beyond the noise. A variation that differs from every other in
    two settings or more is said so: its difference cannot be put on one of them."""
    scored = [row for row in rows if row.compared]
    compared = [row for row in rows if not row.variation.repeat_of]  # (a repeat measures the noise: no factor)
    factors = _factors(compared, [k for k in experiment.varied if len({repr(r.values.get(k)) for r in compared}) > 1])
    found = []
    for keys in factors:
        steps = []
        for a in scored:
            for b in scored:
                if a is b or _same(a, b, keys) or a.variation.repeat_of or b.variation.repeat_of:
                    continue
                if all(_same(a, b, other) for other in factors if other != keys) and _order(a, b, keys):
                    steps.append(_step_text(a, b, [f for f in factors if f != keys], noise, keys))
        if steps:
            together = f" (with {', '.join(keys[1:])})" if len(keys) > 1 else ""
            found.append(f"{keys[0]}{together}: " + "; ".join(steps) + ".")
    for row in scored:
        if row.variation.repeat_of:
            continue
        neighbours = [other for other in scored if other is not row and not other.variation.repeat_of and
                      sum(not _same(row, other, keys) for keys in factors) == 1]
        if not neighbours and len(scored) > 1:
            found.append(f"{row.name} differs from every other variation in two settings or more: its difference "
                         "cannot be put on one of them.")
    return found


def _factors(rows: list[Row], varied: list[str]) -> list[tuple[str, ...]]:
    """The varied keys grouped into factors: keys whose values change together in every row are one factor."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key in varied:
        pattern = tuple(json.dumps(row.values.get(key), sort_keys=True, default=str) for row in rows)
        signature = tuple(pattern.index(value) for value in pattern)
        groups.setdefault(signature, []).append(key)
    return [tuple(keys) for keys in groups.values()]


def _same(a: Row, b: Row, keys: tuple[str, ...]) -> bool:
    return all(a.values.get(k) == b.values.get(k) for k in keys)


def _order(a: Row, b: Row, keys: tuple[str, ...]) -> bool:
    """Each pair once, from the lower value of the factor's first key to the higher (or in the table's order)."""
    first_a, first_b = a.values.get(keys[0]), b.values.get(keys[0])
    try:
        return bool(first_a < first_b)  # type: ignore[operator]
    except TypeError:  # values that do not order (lists, None): by their text
        return str(first_a) < str(first_b)


def _step_text(a: Row, b: Row, others: list[tuple[str, ...]], noise: Noise | None, keys: tuple[str, ...]) -> str:
    """From a's value of the factor to b's: how the best eval loss changed, at what values of the other factors."""
    change = (b.best_eval_loss or 0.0) - (a.best_eval_loss or 0.0)
    if noise is None:
        verdict = "noise unknown"
    elif abs(change) <= noise.margin:
        verdict = "a tie"
    else:
        verdict = "better" if change < 0 else "worse"
    at = ", ".join(f"{other[0].split('.')[-1]} {value_text(a.values.get(other[0]))}" for other in others)
    return (f"{value_text(a.values.get(keys[0]))} → {value_text(b.values.get(keys[0]))} {change:+.4f} ({verdict})"
            + (f" at {at}" if at else ""))
