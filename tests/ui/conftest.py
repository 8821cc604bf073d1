"""The app under test: a fixed GPU, a fixed clock, a temporary runs directory, nothing read from this machine's
caches, and a runner that replays a recorded run instead of training; and helpers to wait for the app and compare
screenshots."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from tests.helpers import DATA
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    EVENTS_FILE,
    CheckpointSaved,
    EvalFinished,
    Event,
    EventLog,
    EventSink,
    PatienceChanged,
    RunFinished,
    RunStarted,
    StepLogged,
    StopRequested,
    event_from_json,
)
from tuneterm.engine.run.plans import RunPlan
from tuneterm.engine.rundir.layout import holding_run_lock, mark_complete
from tuneterm.hardware import GpuReading, GpuSurvey, HostReading
from tuneterm.ui.screens.wizard import WizardScreen
from tuneterm.ui.services import Services
from tuneterm.ui.widgets.chart import LineChart

SNAPSHOTS = Path(__file__).parent / "snapshots"
NOW = 1_795_000_000.0  # a fixed "now" for ages shown on screen

FAKE_GPU = GpuSurvey((GpuReading(index=0, name="NVIDIA RTX 4090", memory_total=24_000_000_000,
                                 memory_used=1_000_000_000, memory_free=23_000_000_000, utilization=0,
                                 temperature=35, power_watts=30.0, power_limit_watts=450.0,
                                 compute_capability=(8, 9)),), driver="580.1")
FAKE_HOST = HostReading(cpu_count=16, cpu_percent=3.0, memory_total=64_000_000_000, memory_available=60_000_000_000)


def make_services(runs_dir: Path, **changes: object) -> Services:
    """Services of this fixed machine; a run launched in the app trains for real unless `train_run` is changed
    (to a RecordedRunner: the recorded run replayed)."""
    services = Services(runs_dir=runs_dir, read_gpus=lambda: FAKE_GPU, read_host=lambda: FAKE_HOST,
                        cached_models=list, model_roots=(), built_demo=lambda tools: None, now=lambda: NOW,
                        over_ssh=False)
    for name, value in changes.items():
        setattr(services, name, value)
    return services


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return make_services(tmp_path / "runs")


async def wait_until(pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 60.0,
                     what: str = "") -> None:
    """Let the app run (workers included) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


def charts_drawn(screen: Screen[Any]) -> bool:
    """Every chart on screen has drawn its latest series (a chart redraws on a timer, not when its series change)."""
    return not any(chart._dirty for chart in screen.query(LineChart) if chart.is_on_screen)


async def wait_until_drawn(pilot: Pilot[Any]) -> None:
    """Wait until the screen is laid out and painted with its charts showing what they hold."""
    await pilot.wait_for_scheduled_animations()
    await wait_until(pilot, lambda: charts_drawn(pilot.app.screen), what="the charts drawn")
    await pilot.wait_for_scheduled_animations()


def text_of(screen: Screen[Any], selector: str) -> str:
    """What the widget at `selector` and every Static in it say, one after the other."""
    from textual.widgets import Static

    root = screen.query_one(selector)
    return "\n".join(str(widget.render()) for widget in [root, *root.query(Static)] if isinstance(widget, Static))


ScreenType = TypeVar("ScreenType", bound=Screen[Any])


async def wait_for_plan(pilot: Pilot[Any]) -> WizardScreen:
    """The wizard on top, once its plan holds the data read (the model and the data both read)."""
    wizard = screen_of(pilot.app, WizardScreen)
    await wait_until(pilot, lambda: wizard.planning.plan is not None and wizard.planning.plan.data is not None,
                     what="the plan")
    return wizard


def screen_of(app: App[Any], kind: type[ScreenType]) -> ScreenType:
    """The screen on top, which must be a `kind`."""
    screen = app.screen
    assert isinstance(screen, kind), f"{type(screen).__name__} is on top, not {kind.__name__}"
    return screen


RECORDED_RUN = DATA / "recorded-run"
"""A real 132-step run of the demo (its events and config), kept to show the same screens on every machine."""


class RecordedRunner:
    """The app's runner without training: writes and sends the events of the recorded run through the engine's
    EventLog, as if they happened now, into the plan's run directory (holding its lock as a run does), one step
    every `seconds_per_step`. Between steps it honours the run's control as the engine does: a checkpoint asked
    for is written at the end of the step in progress, a new patience is PatienceChanged, an evaluation asked
    for is one more EvalFinished at the current step, and a stop ends the run at the current step
    (StopRequested, a complete checkpoint to resume from, RunFinished "stopped"). A resumed plan replays the steps
    after its checkpoint's. Checkpoints hold placeholder files, enough for resuming to accept them.

    With `steps`, it replays the steps up to that one and then waits, as a run whose next step lasts until the
    test lets it end (`allow`) or stops the run: the test, not the machine's speed, decides how far the run has
    gone when it acts. Still waiting after `HOLD_LIMIT` seconds, it replays the rest of the run, so that a test that
    failed while the run waited ends too."""

    HOLD_LIMIT = 120.0

    def __init__(self, seconds_per_step: float = 0.05, steps: int | None = None):
        self.seconds_per_step = seconds_per_step
        self._steps = steps
        self._allowed = threading.Condition()

    def allow(self, steps: int = 1) -> None:
        """Let the run replay `steps` more steps."""
        with self._allowed:
            assert self._steps is not None, "a runner without `steps` replays every step"
            self._steps += steps
            self._allowed.notify_all()

    def _may_replay(self, step: int, control: RunControl) -> bool:
        """Wait until `step` may be replayed: True then, False when the run is asked to stop first."""
        deadline = time.monotonic() + self.HOLD_LIMIT
        with self._allowed:
            while self._steps is not None and step > self._steps:
                if control.stop_requested:
                    return False
                if time.monotonic() > deadline:
                    self._steps = None  # the rest of the run goes on at its pace
                self._allowed.wait(0.05)
        return True

    def __call__(self, plan: RunPlan, sink: EventSink, control: RunControl) -> Event:
        resumed_at = int(plan.resume_from.name.split("-")[-1]) if plan.resume_from is not None else 0
        latest_eval: EvalFinished | None = None
        control.training_from(resumed_at)
        with holding_run_lock(plan.run_dir), EventLog(plan.run_dir / EVENTS_FILE, sink) as emit:
            last_step = resumed_at
            for recorded in recorded_events(plan.run_dir):
                event = dataclasses.replace(recorded, time=time.time())
                if isinstance(event, EvalFinished):
                    latest_eval = event
                if isinstance(event, (StepLogged, EvalFinished, CheckpointSaved)) and event.step <= resumed_at:
                    continue
                if isinstance(event, StepLogged):
                    if not self._may_replay(event.step, control):
                        return stopped_at(last_step, plan.run_dir, latest_eval, control.stop_reason, emit)
                    last_step = event.step
                if isinstance(event, RunStarted) and plan.resume_from is not None:
                    event = dataclasses.replace(event, resumed_from=str(plan.resume_from))
                if isinstance(event, CheckpointSaved):
                    save_placeholder_checkpoint(Path(event.path), event.step)
                emit(event)
                if isinstance(event, RunFinished):
                    return event
                if not isinstance(event, StepLogged):
                    continue
                control.stop_event.wait(self.seconds_per_step)
                if control.take_save_request(event.step):
                    checkpoint = plan.run_dir / f"checkpoint-{event.step}"
                    save_placeholder_checkpoint(checkpoint, event.step)
                    emit(CheckpointSaved(step=event.step, path=str(checkpoint)))
                patience = control.take_patience()
                if patience:
                    emit(PatienceChanged(step=event.step, patience=patience))
                if control.take_evaluate_request() and latest_eval is not None:
                    emit(dataclasses.replace(latest_eval, step=event.step, epoch=event.epoch, time=time.time()))
                if control.stop_requested:
                    return stopped_at(event.step, plan.run_dir, latest_eval, control.stop_reason, emit)
        raise AssertionError(f"{RECORDED_RUN / EVENTS_FILE} ends without a RunFinished")


def stopped_at(step: int, run_dir: Path, latest_eval: EvalFinished | None, reason: str, emit: EventSink) -> RunFinished:
    """A run asked to stop ends as the engine ends it: the request said, a checkpoint of the step, RunFinished."""
    emit(StopRequested(reason=reason))
    checkpoint = run_dir / f"checkpoint-{step}"
    save_placeholder_checkpoint(checkpoint, step)
    emit(CheckpointSaved(step=step, path=str(checkpoint)))
    best, baseline, final = ((latest_eval.best_eval_loss, latest_eval.baseline_eval_loss, latest_eval.eval_loss)
                             if latest_eval is not None else (None, None, None))
    result = RunFinished(status="stopped", run_dir=str(run_dir), global_step=step, adapter_dir=str(run_dir),
                         best_eval_loss=best, baseline_eval_loss=baseline, final_eval_loss=final,
                         outcome="improved" if best is not None else "not_evaluated")
    emit(result)
    return result


def recorded_events(run_dir: Path) -> list[Event]:
    """The recorded run's events, the paths in them moved to `run_dir`."""
    lines = (RECORDED_RUN / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    started = next(e for e in map(event_from_json, lines) if isinstance(e, RunStarted))
    moved = json.dumps(str(run_dir))[1:-1]
    return [event_from_json(line.replace(started.run_dir, moved)) for line in lines]


RECORDED_EXPERIMENT = DATA / "recorded-experiment"
"""A real experiment of the demo, a 2x2 grid of rank (alpha at 2r) and learning rate, 44 steps a run: its directory
(definition, configs, events), each run's config, events and stop check."""


def copy_recorded_experiment(directory: Path) -> Path:
    """The recorded experiment in `directory`, the paths in its files moved there."""
    import shutil

    shutil.copytree(RECORDED_EXPERIMENT, directory)
    for path in directory.rglob("*"):
        if path.is_file():
            path.write_text(path.read_text(encoding="utf-8").replace("/runs/recorded-experiment", str(directory)),
                            encoding="utf-8")
    return directory


def save_placeholder_checkpoint(checkpoint: Path, step: int) -> None:
    """A checkpoint directory with the files resuming asks for, marked complete as the engine marks one."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt"):
        (checkpoint / name).write_bytes(b"placeholder of a replayed run")
    mark_complete(checkpoint)


def _steady(svg: str) -> str:
    """Textual names the SVG's CSS classes after a hash of the whole screenshot; the rest is the screen."""
    return re.sub(r"terminal-\d+", "terminal", svg)


def assert_snapshot(app, name: str) -> None:
    """The app's screen equals tests/ui/snapshots/NAME.svg. TUNETERM_UPDATE_SNAPSHOTS=1 writes it instead; a
    difference writes the new screen next to it as NAME.new.svg (open both in a browser to compare)."""
    from textual.widgets import Input

    for field in app.screen.query(Input):
        field.cursor_blink = False
    actual = _steady(app.export_screenshot(title=name))
    expected_path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("TUNETERM_UPDATE_SNAPSHOTS") == "1" or not expected_path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        expected_path.write_text(actual, encoding="utf-8")
        if os.environ.get("TUNETERM_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"no snapshot {expected_path} yet: written now; look at it and run again")
        return
    if _steady(expected_path.read_text(encoding="utf-8")) != actual:
        new = SNAPSHOTS / f"{name}.new.svg"
        new.write_text(actual, encoding="utf-8")
        pytest.fail(f"the screen differs from {expected_path}; the new one is {new}")
