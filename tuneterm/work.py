"""Long pure work that another thread can cancel and watch.

Reading, validating and tokenising a large dataset takes seconds to minutes. A screen runs it in a worker
thread and must be able to show how far it got, how fast and how long is left, and to stop it at once when the
person picks another file. The work reports through a Work object: each call to `step` checks the cancel flag
(raising Cancelled) and, at most a few times a second, hands a Progress to whoever watches. The bottom layer: it
imports nothing of tuneterm but the errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tuneterm.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    stage: str
    """What is being done: "reading train.jsonl"."""
    done: int
    """Records (or other units) done so far."""
    total: int | None = None
    """How many there are, when known (Parquet, JSON arrays); None for streams read line by line."""
    fraction: float | None = None
    """Share of the input consumed (bytes read of a file), when known."""
    seconds: float = 0.0
    """Since this stage of the work started."""

    @property
    def share(self) -> float | None:
        """0..1 from the total when known, else from the bytes read."""
        if self.total:
            return min(1.0, self.done / self.total)
        return self.fraction

    @property
    def rate(self) -> float | None:
        """Units done per second so far; None in the first half second (too soon to say)."""
        return self.done / self.seconds if self.seconds >= 0.5 else None

    @property
    def seconds_left(self) -> float | None:
        """At the pace so far, when the share is known; None until a second of work and a hundredth of the input
        tell it."""
        share = self.share
        if share is None or share < 0.01 or self.seconds < 1.0:
            return None
        return self.seconds * (1 - share) / share


class Work:
    """The cancel flag and progress callback of one piece of work."""

    def __init__(self, cancel: threading.Event | None = None,
                 on_progress: Callable[[Progress], object] | None = None, interval: float = 0.1,
                 cores: int | None = None):
        self.cancel_event = cancel or threading.Event()
        self.on_progress = on_progress
        self.interval = interval
        self.cores = cores
        """How many cores the work may use; None: the cores this process may run on that other work does not keep
        busy."""
        self._stage, self._started = "", 0.0
        self._last_report = 0.0

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def step(self, stage: str, done: int, total: int | None = None, fraction: float | None = None,
             force: bool = False) -> None:
        """Called often (once per record): raises Cancelled when asked to stop, reports now and then."""
        if self.cancel_event.is_set():
            raise Cancelled()
        if self.on_progress is None:
            return
        now = time.monotonic()
        if stage != self._stage:  # the counts start again with each stage (each file read)
            self._stage, self._started = stage, now
        if force or now - self._last_report >= self.interval:
            self._last_report = now
            self.on_progress(Progress(stage, done, total, fraction, now - self._started))


_IMPORTING = threading.Lock()


def import_training_libraries() -> None:
    """Import torch and transformers' classes under a lock before using them from a worker thread.

    transformers builds its lazy modules on first use, and two threads doing that at once fail with "cannot import
    name 'AutoConfig' from 'transformers'" (seen when the app read a model's parameters and its data side by side).
    Cheap once imported.
    """
    with _IMPORTING:
        import torch  # noqa: F401
        from transformers import (  # noqa: F401
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
            EarlyStoppingCallback,
            TrainerCallback,
        )
