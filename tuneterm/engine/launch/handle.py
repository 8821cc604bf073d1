"""Asking a running run for something (stop, save now, evaluate now, a new patience), wherever it trains.

A run of this process is asked through its RunControl, which applies the request between optimizer steps; a run of
another process (detached, in another terminal, on several GPUs) through its control channel (channel.py), which
it reads twice a second and hands to its own RunControl. `tuneterm stop` and the monitor both ask through a
RunHandle, so that which way a request goes is decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneterm.engine.control import RunControl
from tuneterm.engine.launch.channel import send


@dataclass(frozen=True)
class RunHandle:
    run_dir: Path
    control: RunControl | None = None
    """The run's control when it trains in this process; None: it trains in another, reached through its channel."""

    def stop(self, reason: str) -> bool:
        """Finish the current step, save a checkpoint and the adapter, and stop. False when a run of this process
        was already stopping; a request through the channel is always sent (the run saves once all the same)."""
        if self.control is not None:
            return self.control.request_stop(reason)
        send(self.run_dir, "stop", reason=reason)
        return True

    def save_now(self) -> int | None:
        """Save a checkpoint after the current step and go on training. The step of that checkpoint when the run is
        in this process; None when it is not known yet (through the channel, or before training began)."""
        if self.control is not None:
            return self.control.request_save()
        send(self.run_dir, "save")
        return None

    def evaluate_now(self) -> None:
        """Evaluate after the current step and go on training."""
        if self.control is not None:
            self.control.request_evaluate()
        else:
            send(self.run_dir, "evaluate")

    def set_patience(self, patience: int) -> None:
        """Change early stopping's patience from the next step on."""
        if self.control is not None:
            self.control.set_patience(patience)
        else:
            send(self.run_dir, "patience", patience=patience)
