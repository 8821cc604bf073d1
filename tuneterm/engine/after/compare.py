"""Several runs side by side: their loss curves on one set of axes, and the settings in which they differ.

Each run keeps one colour wherever it is drawn (the app's chart and the PNG), chosen from its name, so the
same run is the same colour in every comparison it is part of, as long as no two runs of one comparison want
the same colour, and a short name that tells it from the others (the part of its directory name they do not
share). Curves can be aligned by step or by tokens seen: runs with different batch sizes or sequence lengths see
different amounts of data per step, and tokens make them comparable. The settings listed are those a run was
given, or that change what is trained: a value tuneterm chose that only changes the speed (the CPU threads, an
eval batch that follows the train batch) is no difference between the runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneterm.config import load_config
from tuneterm.engine.after.report import tokens_by_step
from tuneterm.engine.events import EVENTS_FILE, EvalFinished, RunStarted, StepLogged, read_events
from tuneterm.engine.rundir.fingerprint import CHANGEABLE_ON_RESUME
from tuneterm.engine.rundir.layout import CONFIG_FILE
from tuneterm.errors import RunDirError

Axis = Literal["step", "tokens"]
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
"""matplotlib's tab10: ten colours told apart also by most colour-blind readers."""


@dataclass
class RunCurves:
    run_dir: Path
    colour: str
    train: list[tuple[float, float]]
    eval: list[tuple[float, float]]
    settings: dict[str, Any]
    """The run's config, flat."""
    chosen: frozenset[str] = frozenset()
    """The keys tuneterm chose a value for, by default or derived (as its last start recorded them)."""

    @property
    def name(self) -> str:
        return self.run_dir.name


def colours_for(names: list[str]) -> list[str]:
    """A colour per run from its name; a run whose colour is taken gets the next free one."""
    taken: list[str] = []
    for name in names:
        index = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(PALETTE)
        while PALETTE[index] in taken and len(taken) < len(PALETTE):
            index = (index + 1) % len(PALETTE)
        taken.append(PALETTE[index])
    return taken


def load_curves(run_dirs: list[Path], axis: Axis = "step") -> list[RunCurves]:
    """The runs' train and eval losses (a resumed run's repeated steps counted once, the later value)."""
    for run_dir in run_dirs:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"{run_dir}: not a tuneterm run directory (no {CONFIG_FILE})")
    curves = []
    for run_dir, colour in zip(run_dirs, colours_for([p.name for p in run_dirs])):
        events = read_events(run_dir / EVENTS_FILE) if (run_dir / EVENTS_FILE).is_file() else []
        train = dict((e.step, e.loss) for e in events if isinstance(e, StepLogged))
        evals = dict((e.step, e.eval_loss) for e in events if isinstance(e, EvalFinished))
        started = next((e for e in reversed(events) if isinstance(e, RunStarted)), None)
        position = _positions(run_dir, axis)
        curves.append(RunCurves(run_dir, colour, sorted((position(s), v) for s, v in train.items() if position(s) >= 0),
                                sorted((position(s), v) for s, v in evals.items() if position(s) >= 0),
                                load_config(run_dir / CONFIG_FILE).values,
                                frozenset(started.defaulted) | frozenset(started.notes) if started else frozenset()))
    return curves


def _positions(run_dir: Path, axis: Axis) -> Any:
    if axis == "step":
        return lambda step: step
    tokens = tokens_by_step(run_dir)
    if not tokens:
        raise RunDirError(f"{run_dir}: no token counts (trainer_state.json is missing): compare by step instead")
    return lambda step: tokens.get(step, -1)


def differing_settings(curves: list[RunCurves]) -> list[tuple[str, list[Any]]]:
    """Keys whose values are not the same in every run (paths of the data and model included), in config order:
    those a run was given, and those tuneterm chose that change what is trained (not the threads or the eval
    batch, which change only how fast)."""
    keys: list[str] = []
    for run in curves:
        keys += [k for k in run.settings if k not in keys]
    rows = []
    for key in keys:
        values = [run.settings.get(key) for run in curves]
        given = any(key not in run.chosen for run in curves)
        if any(value != values[0] for value in values[1:]) and (given or key not in CHANGEABLE_ON_RESUME):
            rows.append((key, values))
    return rows


def short_names(names: list[str]) -> list[str]:
    """A name for each run that tells it from the others: its directory name without the parts (between dashes)
    that every name starts or ends with ("221907" for 20261201-221907-model-lora next to 20261201-223015-model-lora);
    the whole names when that leaves nothing, or the same name twice."""
    split = [name.split("-") for name in names]
    if len(split) < 2:
        return list(names)
    start = 0
    while all(len(parts) > start + 1 for parts in split) and len({parts[start] for parts in split}) == 1:
        start += 1
    end = 0
    while all(len(parts) > start + end + 1 for parts in split) and len({parts[-1 - end] for parts in split}) == 1:
        end += 1
    short = ["-".join(parts[start:len(parts) - end]) for parts in split]
    return short if all(short) and len(set(short)) == len(short) else list(names)


def comparison_figure(curves: list[RunCurves], axis: Axis = "step") -> Any:
    """Train loss above, eval loss below, one colour per run (the settings that differ in the title)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), dpi=100)
    train_axes, eval_axes = figure.subplots(2, 1, sharex=True)
    for run in curves:
        if run.train:
            xs, ys = zip(*run.train)
            train_axes.plot(xs, ys, color=run.colour, label=run.name, linewidth=1.2)
        if run.eval:
            xs, ys = zip(*run.eval)
            eval_axes.plot(xs, ys, color=run.colour, label=run.name, marker="o", markersize=3)
    train_axes.set_ylabel("train loss")
    eval_axes.set_ylabel("eval loss")
    eval_axes.set_xlabel("tokens seen" if axis == "tokens" else "step")
    for axes in (train_axes, eval_axes):
        axes.grid(alpha=0.3)
    train_axes.legend(fontsize=8)
    differing = differing_settings(curves)
    title = "; ".join(f"{key.split('.')[-1]}: {' / '.join(map(str, values))}" for key, values in differing[:4]
                      if not key.startswith(("model.path", "data.")))
    figure.suptitle(f"{len(curves)} runs" + (f" ({title})" if title else ""), fontsize=10)
    figure.tight_layout()
    return figure


def save_comparison(curves: list[RunCurves], path: Path, axis: Axis = "step") -> Path:
    comparison_figure(curves, axis).savefig(path)
    return path
