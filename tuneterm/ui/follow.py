"""Following a run through its events.jsonl, whoever runs it: a thread reads the file from the start, then what
is appended, and hands the events on in batches.

A finished run arrives in batches of about a megabyte (a 100k-step run is about 20 of them, parsed off the UI
thread); a live one in small batches twice a second. When the file ends without a last event and no process
holds the run's lock, the run's process is gone (killed, or its machine went down): that is said once. A line
that holds no event (a full disk's garbage) is handed on as a warning in its place, so the monitor's log says
which line was skipped, and the events after it follow. Idle polling is a stat() call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from tuneterm.engine.events import (
    EVENTS_FILE,
    Event,
    RunFailed,
    RunFinished,
    SkippedLine,
    WarningIssued,
    events_of_lines,
    last_of_run,
)
from tuneterm.engine.rundir.layout import is_live

POLL_SECONDS = 0.5
BATCH_BYTES = 1 << 21
"""Events handed on at once: a bounded batch keeps the memory of a long replay flat."""


class EventFollower:
    def __init__(self, run_dir: Path, deliver: Callable[[list[Event], bool], object], gone: Callable[[], object],
                 interval: float = POLL_SECONDS):
        self.path = run_dir / EVENTS_FILE
        self.run_dir = run_dir
        self.deliver, self.gone, self.interval = deliver, gone, interval
        """deliver(events, more): `more` when the file holds more already (a replay still catching up)."""
        self._offset = 0
        self._lines = 0
        """Lines read so far: the next is numbered one more, as a skipped line is reported."""
        self._ended = False
        self._said_gone = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="tuneterm-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def read_new(self, limit: int = BATCH_BYTES) -> list[Event]:
        """The complete lines appended since the last read (at most about `limit` bytes of them), as events."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self._offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read(min(size - self._offset, limit))
        complete = data[:data.rfind(b"\n") + 1]
        if not complete and size - self._offset > limit:  # one line longer than the limit
            return self.read_new(limit * 4)
        first_line = self._lines + 1
        self._offset += len(complete)
        self._lines += complete.count(b"\n")
        events: list[Event] = []

        def in_its_place(skipped: SkippedLine) -> None:
            events.append(WarningIssued(message=str(skipped)))

        for event in events_of_lines(complete.split(b"\n")[:-1], self.path, lambda: first_line, in_its_place):
            events.append(event)
        return events

    def _follow(self) -> None:
        while not self._stop.is_set():
            events = self.read_new()
            if events:
                self._ended = self._ended if (last := last_of_run(events)) is None else \
                    isinstance(last, (RunFinished, RunFailed))
                self._said_gone = False
                more = self.path.stat().st_size > self._offset
                self.deliver(events, more)
                if more:
                    continue  # a long run replays in batches
            elif not self._ended and not self._said_gone and not is_live(self.run_dir) and self._offset:
                self._said_gone = True
                self.gone()
            self._stop.wait(self.interval)
