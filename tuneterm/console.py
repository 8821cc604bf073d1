"""Plain-text progress for headless runs: one readable line per thing that happened.

Used by `tuneterm train` and `tuneterm demo --headless`, where output goes to a terminal, a log file or CI.
Step lines are throttled (the first, the last, and at most one every few seconds); evaluations, checkpoints,
warnings and the end of the run are always printed, and a failure lists the problems behind it with their
locations.

The terminal may be gone while the run goes on (an SSH session that dropped leaves pipes whose reader closed, or
a hung-up tty): a line that cannot reach it is dropped, and the stream is pointed at /dev/null so that nothing
written to it later fails either, the run's own lines, a library's or the interpreter's last flush at exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from typing import TextIO

from tuneterm.engine.events import (
    CheckpointSaved,
    EvalFinished,
    Event,
    PhaseStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
    StopRequested,
    WarningIssued,
)
from tuneterm.engine.run.failures import remedies_as_arguments
from tuneterm.errors import SHOWN_PROBLEMS, Location

TERMINAL_GONE = frozenset({errno.EPIPE, errno.EIO})
"""What a write fails with once its terminal is gone: a pipe whose reader closed (an SSH session's, a `| head`),
a tty whose session hung up."""


def write_line(text: str, stream: TextIO) -> None:
    """Print `text` and flush it, or drop it, and every line after it, when `stream`'s terminal is gone."""
    try:
        print(text, file=stream, flush=True)
    except OSError as exc:
        if exc.errno not in TERMINAL_GONE:
            raise
        _point_at_devnull(stream)


def _point_at_devnull(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null: every later write succeeds and goes nowhere, and what the
    failed write left in its buffer is let go. A stream without a descriptor keeps failing, and is dropped each
    time by whoever writes through write_line."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


class ConsoleProgress:
    def __init__(self, out: TextIO | None = None, step_interval: float = 2.0):
        self.out = out
        self.step_interval = step_interval
        self._last_step_print = 0.0

    def __call__(self, event: Event) -> None:
        line = self.format(event)
        if line is not None:
            write_line(line, self.out or sys.stdout)

    def format(self, event: Event) -> str | None:
        if isinstance(event, PhaseStarted):
            return f"[{event.phase}] {event.detail}".rstrip()
        if isinstance(event, WarningIssued):
            return f"warning ({event.source}): {event.message}"
        if isinstance(event, RunStarted):
            share = event.trainable_params / event.total_params if event.total_params else 0
            resumed = f", resuming from {event.resumed_from}" if event.resumed_from else ""
            threads = event.config.get("training", {}).get("cpu_threads")
            cpu = f"\nCPU threads: {threads} ({event.notes['training.cpu_threads']})" \
                if "training.cpu_threads" in event.notes else ""
            packed = f" packed into {event.train_sequences:,} rows" \
                if event.train_sequences is not None and event.train_sequences != event.train_examples else ""
            return (f"Training on {event.train_examples:,} examples{packed} (eval {event.eval_examples:,}) for "
                    f"{event.total_steps:,} steps ({event.steps_per_epoch:,} per epoch) on {event.device}; "
                    f"{event.trainable_params:,} of {event.total_params:,} parameters trainable ({share:.2%})"
                    f"{resumed}{cpu}")
        if isinstance(event, StepLogged):
            return self._step(event)
        if isinstance(event, EvalFinished):
            patience = f"  no improvement {event.evals_since_improvement}/{event.patience}" \
                if event.patience else ""
            if event.step == 0:
                return f"eval  step      0  loss {event.eval_loss:.4f}  (before training: the baseline)"
            best = (f"best {event.best_eval_loss:.4f} at step {event.best_step:,}" if event.best_eval_loss is not None
                    else "no evaluation has beaten the baseline yet")
            return f"eval  step {event.step:>6,}  loss {event.eval_loss:.4f}  {best}{patience}"
        if isinstance(event, CheckpointSaved):
            return f"checkpoint saved: {event.path}"
        if isinstance(event, StopRequested):
            return f"stop requested ({event.reason}): finishing the current step and saving"
        if isinstance(event, RunFinished):
            return _finished(event)
        if isinstance(event, RunFailed):
            return _failed(event)
        return None

    def _step(self, event: StepLogged) -> str | None:
        now = time.monotonic()
        edge = event.step <= 1 or event.step >= event.max_steps
        if not edge and now - self._last_step_print < self.step_interval:
            return None
        self._last_step_print = now
        grad = f"  grad {event.grad_norm:.3f}" if event.grad_norm is not None else ""
        speed = f"  {event.tokens_per_second:,.0f} tok/s" if event.tokens_per_second else ""
        if event.padding_share is not None:
            speed += f"  padding {event.padding_share:.0%}"
        return (f"step  {event.step:>6,}/{event.max_steps:,}  epoch {event.epoch:.2f}  loss {event.loss:.4f}  "
                f"lr {event.learning_rate:.2e}{grad}{speed}")


def _failed(event: RunFailed) -> str:
    log = f" (traceback in {event.log_path})" if event.log_path else ""
    lines = [f"Run failed: {event.reason}{log}"]
    for problem in event.problems[:SHOWN_PROBLEMS]:
        where = str(Location.from_json(problem))
        lines.append(f"  {where}: {problem['message']}" if where else f"  {problem['message']}")
    if len(event.problems) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(event.problems) - SHOWN_PROBLEMS} more")
    if event.remedies:
        lines.append("What would let it run:")
        for remedy, arguments in zip(event.remedies, remedies_as_arguments(event.remedies)):
            how = "resume with" if remedy["resume"] else "start again with"
            lines.append(f"  {remedy['why']}: {how} {arguments}")
    return "\n".join(lines)


def _finished(event: RunFinished) -> str:
    status = {"completed": "completed", "early_stopped": "stopped early (eval loss stopped improving)",
              "stopped": "stopped on request"}.get(event.status, event.status)
    lines = [f"Run {status} at step {event.global_step:,}."]
    if event.outcome == "improved" and event.best_eval_loss is not None:
        baseline = f", from {event.baseline_eval_loss:.4f} before training" if event.baseline_eval_loss else ""
        lines.append(f"Best eval loss {event.best_eval_loss:.4f}{baseline}" +
                     (f" ({event.best_checkpoint})" if event.best_checkpoint else ""))
    elif event.outcome == "worse_than_baseline":
        lines.append(f"No evaluation beat the eval loss before training ({event.baseline_eval_loss:.4f}; the last "
                     f"was {event.final_eval_loss:.4f}): training made the eval loss worse. The adapter saved is "
                     "the last one; nothing is called best.")
    if event.adapter_check is not None:
        check = event.adapter_check
        if check.get("non_finite"):
            verdict = f"{len(check['non_finite'])} hold NaN or Inf"
        else:
            verdict = "all changed" if check["all_changed"] else f"{len(check['unchanged'])} UNCHANGED"
        lines.append(f"Adapter weights: {check['changed']}/{check['tensors']} tensors changed ({verdict})")
    if event.adapter_dir:
        lines.append(f"Adapter saved in {event.adapter_dir}")
    if event.status == "stopped" and event.global_step:
        lines.append(f"Continue it with: tuneterm train --resume {event.run_dir}")
    return "\n".join(lines)
