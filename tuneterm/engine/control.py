"""How another thread talks to a running training: ask it to stop, or to save a checkpoint now.

The engine polls this object between optimizer steps, so a request never interrupts a step half-way. The TUI,
the Ctrl-C handler of `tuneterm train` and the control channel of a detached run all hold one of these.
"""

from __future__ import annotations

import threading


class RunControl:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._save = threading.Event()
        self.stop_reason = ""

    def request_stop(self, reason: str = "requested") -> None:
        """Finish the current step, save a checkpoint and the adapter, and end the run cleanly."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def request_save(self) -> None:
        """Save a checkpoint after the current step and go on training."""
        self._save.set()

    @property
    def stop_event(self) -> threading.Event:
        """Set once a stop is requested: long work before training (reading the data) polls it to cancel."""
        return self._stop

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def take_save_request(self) -> bool:
        """True once per request_save() call (requests made during one step count once)."""
        if self._save.is_set():
            self._save.clear()
            return True
        return False
