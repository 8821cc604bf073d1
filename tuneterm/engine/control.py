"""How another thread talks to a running training: stop, save a checkpoint now, evaluate now, change patience.

The engine polls this object between optimizer steps, so a request never interrupts a step half-way. The app,
the signal handlers of `tuneterm train` and the control channel of a detached run all hold one of these.
"""

from __future__ import annotations

import threading


class RunControl:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._save = threading.Event()
        self._evaluate = threading.Event()
        self._lock = threading.Lock()
        self._patience: int | None = None
        self.stop_reason = ""

    def request_stop(self, reason: str = "requested") -> bool:
        """Finish the current step, save a checkpoint and the adapter, and end the run cleanly. False when a
        stop was already requested (asking twice never saves twice)."""
        with self._lock:
            if self._stop.is_set():
                return False
            self.stop_reason = reason
            self._stop.set()
            return True

    def request_save(self) -> None:
        """Save a checkpoint after the current step and go on training."""
        self._save.set()

    def request_evaluate(self) -> None:
        """Evaluate after the current step and go on training."""
        self._evaluate.set()

    def set_patience(self, patience: int) -> None:
        """Change early stopping's patience from the next step on."""
        with self._lock:
            self._patience = patience

    @property
    def stop_event(self) -> threading.Event:
        """Set once a stop is requested: long work before training (reading the data) polls it to cancel."""
        return self._stop

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def take_save_request(self) -> bool:
        """True once per request_save() call (requests made during one step count once)."""
        return _take(self._save)

    def take_evaluate_request(self) -> bool:
        return _take(self._evaluate)

    def take_patience(self) -> int | None:
        with self._lock:
            patience, self._patience = self._patience, None
            return patience


def _take(flag: threading.Event) -> bool:
    if flag.is_set():
        flag.clear()
        return True
    return False
