"""Signals stop a run the way a person would: after the current step, with a checkpoint.

SIGINT (Ctrl-C), SIGTERM (a scheduler, `kill`, a shutting-down machine) and SIGHUP (the terminal or the SSH
session went away) all ask the run to stop: it finishes the optimizer step, saves a checkpoint and the adapter,
and ends as "stopped", resumable. The stop is asked before it is announced, and an announcement that cannot be
written (the terminal is gone) is dropped: it never fails the run.

A second signal means "now", and is handed to `abort`. A process that trains passes one that ends it on the spot
(os._exit) rather than raising: an exception raised from a handler lands wherever the main thread is, and during a
save that is often a finalizer or a callback of the garbage collector, where the interpreter swallows it (the
abort never happens: the run goes on as if it had not been asked), or code that never expects it (an import, C++
calling back into Python), which it can leave half done. A checkpoint cut short was never marked complete, so a
resume goes back to the one before. Handlers can only be set from the main thread. Under a launcher a signal
comes twice, from the terminal and passed on by the launcher: the second within a few seconds is the same request.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

from tuneterm.engine.control import RunControl

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM",
                         signal.SIGHUP: "SIGHUP (the terminal went away)"}


def raise_keyboard_interrupt(name: str) -> NoReturn:
    """The abort of a caller that has nothing to save: KeyboardInterrupt in the main thread."""
    raise KeyboardInterrupt(name)


class StopOnSignals:
    """While held, the first stopping signal stops the run gracefully; the second aborts."""

    def __init__(self, control: RunControl, announce: Callable[[str], None] = lambda message: None,
                 echo_seconds: float = 0.0, abort: Callable[[str], NoReturn] = raise_keyboard_interrupt):
        """`echo_seconds`: how soon after the first a signal is the same one again (under a launcher); `abort(name)`
        ends the process at the second."""
        self.control, self.announce, self.echo_seconds, self.abort = control, announce, echo_seconds, abort
        self.previous: dict[int, Any] = {}
        self.first: float | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = NAMES.get(signum, f"signal {signum}")
        if self.first is not None and time.monotonic() - self.first < self.echo_seconds:
            return
        if not self.control.request_stop(name):
            self.abort(name)
        self.first = time.monotonic()
        # RuntimeError: the signal came during a write to the same stream, which cannot be written again inside it.
        with contextlib.suppress(OSError, RuntimeError):
            self.announce(f"{name}: stopping after the current step and saving a checkpoint (again to abort now)")

    def __enter__(self) -> StopOnSignals:
        for number in STOPPING_SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
