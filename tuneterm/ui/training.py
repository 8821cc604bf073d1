"""A run trained inside the app's own process, in a thread, and how it ends when the app or its terminal does.

The engine runs in a thread; its events reach the monitor with post_message (thread-safe, never waits for the
screen). Whatever it or its libraries print goes to RUN_DIR/train.log, never onto the screen. When the person
quits, the run is asked to stop and the app waits for its checkpoint. When the terminal disappears (SIGHUP: the
SSH session dropped), the same happens before the process exits: an in-app run always ends resumable. A run that
must outlive the terminal is started detached instead (engine/launch/detach.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import Event, EventSink
from tuneterm.engine.launch.detach import LOG_FILE
from tuneterm.engine.run.plans import RunPlan

SIGHUP_WAIT_SECONDS = 900.0

RunTrainer = Callable[[RunPlan, EventSink, RunControl], Event]
"""Trains a run to its end, reporting to the sink and listening to the control; returns the last event (RunFinished
or RunFailed)."""


def train_with_the_engine(plan: RunPlan, sink: EventSink, control: RunControl) -> Event:
    """The engine's runner, imported when a run starts: opening the app imports none of the training code."""
    from tuneterm.engine.run.runner import run

    return run(plan, sink, control)


class TrainingInApp:
    def __init__(self, plan: RunPlan, deliver: Any, train_run: RunTrainer):
        """`deliver(events)` hands events to the monitor (it must not block); `train_run` trains the plan."""
        self.plan = plan
        self.control = RunControl()
        self.deliver = deliver
        self.train_run = train_run
        self.started = threading.Event()
        self.done = threading.Event()
        """Set when the run has ended (the worker's thread may live on in a pool)."""
        self.result: Event | None = None
        self._previous_sighup: Any = None

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def active(self) -> bool:
        return self.started.is_set() and not self.done.is_set()

    def train(self) -> None:
        """The worker thread's body."""
        self.started.set()
        try:
            self.result = self.train_run(self.plan, lambda event: self.deliver([event]), self.control)
        finally:
            self.done.set()

    def wait(self, seconds: float | None = None) -> bool:
        return self.done.wait(seconds)

    def write_print(self, text: str) -> None:
        """Printed text (the app captures it) goes to the run's log."""
        with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as log:
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
