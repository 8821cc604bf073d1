"""The control channel of a run: requests from any process, carried by a file in the run directory.

`tuneterm stop RUN_DIR`, the monitor of a detached run and any other process append one JSON line per request
to RUN_DIR/control.jsonl (stop, save, evaluate, patience); the run, whoever started it, reads new lines twice a
second and hands them to its RunControl, which applies them between optimizer steps. What became of a request is
in events.jsonl (StopRequested, CheckpointSaved, EvalFinished, PatienceChanged). A file needs no server and works
over any filesystem the run directory is on. In a distributed run the main process reads it, and every process
applies what was asked at the same step (engine/launch/distributed.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal, get_args

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    EVENTS_FILE,
    EventLog,
    SkippedLine,
    UnreadableLine,
    WarningIssued,
    json_object,
    line_number_at,
    say_on_stderr,
)

CONTROL_FILE = "control.jsonl"
Action = Literal["stop", "save", "evaluate", "patience"]
ACTIONS: tuple[Action, ...] = get_args(Action)
POLL_SECONDS = 0.5


def send(run_dir: Path, action: Action, **arguments: Any) -> None:
    """Append one request; a single small write with O_APPEND, so concurrent senders never interleave. A file
    whose last line was left unfinished (a writer killed half-way) gets that line ended first, so that the request
    is a line of its own and not lost glued to it."""
    line = json.dumps({"action": action, "time": time.time(), "pid": os.getpid(), **arguments}) + "\n"
    descriptor = os.open(run_dir / CONTROL_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        ends_mid_line = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
        os.write(descriptor, (("\n" if ends_mid_line else "") + line).encode("utf-8"))
    finally:
        os.close(descriptor)


def apply(request: dict[str, Any], control: RunControl) -> None:
    """Hand one request to the run's control, or say why it cannot be used (UnreadableLine)."""
    action = request.get("action")
    if action == "stop":
        control.request_stop(str(request.get("reason") or "tuneterm stop"))
    elif action == "save":
        control.request_save()
    elif action == "evaluate":
        control.request_evaluate()
    elif action == "patience":
        patience = request.get("patience")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise UnreadableLine(f"patience must be a whole number of at least 1, not {patience!r}")
        control.set_patience(patience)
    else:
        raise UnreadableLine(f"no known action (its \"action\" is {action!r}; known: {', '.join(ACTIONS)})")


class ChannelListener:
    """While held, a thread applies the requests appended after it started (older ones are history), or after
    `offset` (a run whose supervisor was asked while the run was starting). A line it cannot use is gone past and
    said where a person sees it: on stderr (the terminal, or train.log) and as a warning in events.jsonl (the
    monitor's log, the run's report); the requests after it still count."""

    def __init__(self, run_dir: Path, control: RunControl, offset: int | None = None):
        self.path = run_dir / CONTROL_FILE
        self.events = run_dir / EVENTS_FILE
        self.control = control
        self._offset = offset if offset is not None else self.path.stat().st_size if self.path.exists() else 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="tuneterm-control", daemon=True)

    def poll(self) -> None:
        if not self.path.exists() or self.path.stat().st_size <= self._offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        start, self._offset = self._offset, self._offset + len(complete)
        for index, line in enumerate(complete.split(b"\n")[:-1]):
            if not line.strip():
                continue
            try:
                apply(json_object(line), self.control)
            except UnreadableLine as exc:
                self._report(SkippedLine(self.path, line_number_at(self.path, start) + index, str(exc), "request"))

    def _report(self, skipped: SkippedLine) -> None:
        say_on_stderr(skipped)
        with EventLog(self.events) as emit:
            emit(WarningIssued(message=str(skipped), source="control channel"))

    def _listen(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            self.poll()

    def __enter__(self) -> ChannelListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=2 * POLL_SECONDS)
