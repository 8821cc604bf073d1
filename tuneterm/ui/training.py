"""A run trained inside the app's own process, in a thread, and how it ends when the app or its terminal does; an
experiment whose runs train there, one after another, the same way.

The engine runs in a thread; its events reach the monitor with post_message (thread-safe, never waits for the
screen). Whatever it or its libraries print goes to RUN_DIR/train.log (an experiment's: its experiment.log), never
onto the screen. When the person quits, the run is asked to stop and the app waits for its checkpoint. When the
terminal disappears (SIGHUP: the SSH session dropped), the same happens before the process exits: an in-app run
always ends resumable. A run that must outlive the terminal is started detached instead (engine/launch/detach.py).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import Event
from tuneterm.engine.experiment.runner import EXPERIMENT_LOG, ExperimentControl, RunTrainer, run_experiment
from tuneterm.engine.launch.detach import LOG_FILE
from tuneterm.engine.run.plans import RunPlan

SIGHUP_WAIT_SECONDS = 900.0


class TrainingInApp:
    """Training in this app's process, in a thread: a run (RunInApp) or an experiment's runs (ExperimentInApp)."""

    what = "run"

    def __init__(self, run_dir: Path, log: Path, control: RunControl):
        self.run_dir = run_dir
        """The directory of what trains: the run's, or the experiment's."""
        self.log = log
        self.control = control
        self.started = threading.Event()
        self.done = threading.Event()
        """Set when the training has ended (the worker's thread may live on in a pool)."""
        self.result: Event | None = None
        self._previous_sighup: Any = None

    @property
    def active(self) -> bool:
        return self.started.is_set() and not self.done.is_set()

    def train(self) -> None:
        """The worker thread's body."""
        self.started.set()
        try:
            self.result = self.body()
        finally:
            self.done.set()

    def body(self) -> Event:
        raise NotImplementedError

    def wait(self, seconds: float | None = None) -> bool:
        return self.done.wait(seconds)

    def write_print(self, text: str) -> None:
        """Printed text (the app captures it) goes to the log."""
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(text)

    def guard_against_hangup(self) -> None:
        """From the main thread: a SIGHUP stops the run and waits for its checkpoint before the process exits."""
        self._previous_sighup = signal.signal(signal.SIGHUP, self._hung_up)

    def release_hangup(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None

    def _hung_up(self, signum: int, frame: FrameType | None) -> None:
        self.control.request_stop("SIGHUP (the terminal went away)")
        self.wait(SIGHUP_WAIT_SECONDS)
        os._exit(0)  # the terminal is gone: nothing left to restore


class RunInApp(TrainingInApp):
    def __init__(self, plan: RunPlan, deliver: Any, train_run: RunTrainer):
        """`deliver(events)` hands events to the monitor (it must not block); `train_run` trains the plan."""
        super().__init__(plan.run_dir, plan.run_dir / LOG_FILE, RunControl())
        self.plan, self.deliver, self.train_run = plan, deliver, train_run

    def body(self) -> Event:
        return self.train_run(self.plan, lambda event: self.deliver([event]), self.control)


class ExperimentInApp(TrainingInApp):
    """An experiment whose runs train in this process, one after another: a stop, a quit or a hangup stops its run in
    progress (with a checkpoint) and starts no other, so that it goes on where it was when it is resumed."""

    what = "experiment"

    def __init__(self, directory: Path, train_run: RunTrainer):
        self.experiment_control = ExperimentControl()
        super().__init__(directory, directory / EXPERIMENT_LOG, self.experiment_control)
        self.train_run = train_run

    def body(self) -> Event:
        return run_experiment(self.run_dir, self.experiment_control, self.train_run)
