"""Signals stop a run the way a person would: after the current step, with a checkpoint.

SIGINT (Ctrl-C), SIGTERM (a scheduler, `kill`, a shutting-down machine) and SIGHUP (the terminal or the SSH
session went away) all ask the run to stop: it finishes the optimizer step, saves a checkpoint and the adapter,
and ends as "stopped", resumable. A second signal means "now": it raises KeyboardInterrupt in the main thread,
which the command line turns into one line, not a traceback. Handlers can only be set from the main thread.
Under a launcher a signal comes twice, from the terminal and passed on by the launcher: the second within a few
seconds is the same request.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from tuneterm.engine.control import RunControl

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM",
                         signal.SIGHUP: "SIGHUP (the terminal went away)"}


class StopOnSignals:
    """While held, the first stopping signal stops the run gracefully; the second aborts."""

    def __init__(self, control: RunControl, announce: Callable[[str], None] = lambda message: None,
                 echo_seconds: float = 0.0):
        """`echo_seconds`: how soon after the first a signal is the same one again (under a launcher)."""
        self.control, self.announce, self.echo_seconds = control, announce, echo_seconds
        self.previous: dict[int, Any] = {}
        self.first: float | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = NAMES.get(signum, f"signal {signum}")
        if self.first is not None and time.monotonic() - self.first < self.echo_seconds:
            return
        if not self.control.request_stop(name):
            raise KeyboardInterrupt
        self.first = time.monotonic()
        self.announce(f"{name}: stopping after the current step and saving a checkpoint (again to abort now)")

    def __enter__(self) -> StopOnSignals:
        for number in STOPPING_SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
