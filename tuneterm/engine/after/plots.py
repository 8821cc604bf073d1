"""Loss curves saved as PNG files in the run directory, for people who look at a run after it ended.

Drawn from the run's own events (so a resumed run's curve is whole) with matplotlib's object API, which keeps
no global state and is safe to call from the training thread.
"""

from __future__ import annotations

from pathlib import Path

from tuneterm.engine.events import EvalFinished, Event, StepLogged


def save_loss_plots(events: list[Event], run_dir: Path) -> list[Path]:
    """training_loss.png always (when any step was logged); training_eval_loss.png when there was evaluation."""
    steps = _latest_by_step([(e.step, e.loss) for e in events if isinstance(e, StepLogged)])
    evals = _latest_by_step([(e.step, e.eval_loss) for e in events if isinstance(e, EvalFinished)])
    written = []
    if steps:
        written.append(_plot(run_dir / "training_loss.png", "training loss", steps, smooth=True))
    if evals:
        written.append(_plot(run_dir / "training_eval_loss.png", "eval loss", evals, smooth=False))
    return written


def _latest_by_step(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """A resumed run logs some steps twice; the later value wins."""
    return sorted(dict(points).items())


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard draws it."""
    smoothed, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight ** index))
    return smoothed


def _plot(path: Path, label: str, points: list[tuple[int, float]], smooth: bool) -> Path:
    from matplotlib.figure import Figure

    steps, values = zip(*points)
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot()
    if smooth and len(values) > 10:
        axes.plot(steps, values, color="#1f77b4", alpha=0.35, label=label)
        axes.plot(steps, _smooth(list(values)), color="#1f77b4", label=f"{label} (smoothed)")
    else:
        axes.plot(steps, values, color="#1f77b4", marker="o" if len(values) < 50 else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"{label} of {path.parent.name}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path
