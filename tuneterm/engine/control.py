"""How another thread talks to a running training: stop, save a checkpoint now, evaluate now, change patience.

The engine polls this object between optimizer steps, so a request never interrupts a step half-way. The app,
the signal handlers of `tuneterm train` and the control channel of a detached run all hold one of these. It also
knows which step is in progress, so that whoever asks for a checkpoint can be told the step it will be saved at:
the engine takes a save request and moves on to the next step in one locked exchange, so the answer is exact.
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
        self._step_in_progress: int | None = None
        """The step whose end applies a request made now; None until training begins."""
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

    def request_save(self) -> int | None:
        """Save a checkpoint at the end of the step in progress and go on training. Returns that step, the N of
        the checkpoint-N it writes, or None before training began (then it is saved at the end of the first
        step trained)."""
        with self._lock:
            self._save.set()
            return self._step_in_progress

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

    def training_from(self, step: int) -> None:
        """Training goes on after `step`: requests made from now on take effect at the end of step + 1."""
        with self._lock:
            self._step_in_progress = step + 1

    def take_save_request(self, step_ended: int) -> bool:
        """At the end of `step_ended`: True once per request_save() call (requests made during one step count
        once), and the next step becomes the one in progress, in one exchange with request_save()."""
        with self._lock:
            self._step_in_progress = step_ended + 1
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
