"""The bridge from the Hugging Face Trainer to tuneterm's events and control.

The Trainer calls this between steps: it turns the trainer state into StepLogged / EvalFinished /
CheckpointSaved events, and it is where a stop or save-now request from another thread takes effect, always
after a whole optimizer step. The early-stopping state it reports is read from the EarlyStoppingCallback that
actually stops the run, so what a person sees is what will happen.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import CheckpointSaved, EvalFinished, EventSink, StepLogged, StopRequested


class EventCallback(TrainerCallback):
    def __init__(self, sink: EventSink, control: RunControl, early_stopping: EarlyStoppingCallback | None):
        self.sink = sink
        self.run_control = control
        self.early_stopping = early_stopping
        self.best_eval_loss = math.inf
        self.best_step = 0
        self.stop_announced = False
        self._last_log: tuple[float, int] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # On resume the log history comes back with the checkpoint: replay its evaluations so that the best loss
        # and the early-stopping count carry on where the interrupted run left them.
        threshold = self.early_stopping.early_stopping_threshold if self.early_stopping else 0.0
        since = 0
        for entry in state.log_history:
            if "eval_loss" not in entry:
                continue
            loss = entry["eval_loss"]
            improved = loss < self.best_eval_loss
            since = 0 if improved and abs(loss - self.best_eval_loss) > threshold else since + 1
            if improved:
                self.best_eval_loss, self.best_step = loss, entry.get("step", 0)
        if self.early_stopping:
            self.early_stopping.early_stopping_patience_counter = since
        self._last_log = (time.perf_counter(), state.num_input_tokens_seen or 0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run_control.take_save_request():
            control.should_save = True
        if self.run_control.stop_requested:
            control.should_save = True
            control.should_training_stop = True
            if not self.stop_announced:
                self.stop_announced = True
                self.sink(StopRequested(reason=self.run_control.stop_reason))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
        tokens_per_second = None
        if self._last_log is not None and now > self._last_log[0] and tokens > self._last_log[1]:
            tokens_per_second = (tokens - self._last_log[1]) / (now - self._last_log[0])
        self._last_log = (now, tokens)
        self.sink(StepLogged(step=state.global_step, max_steps=state.max_steps, epoch=state.epoch or 0.0,
                             loss=float(logs["loss"]), learning_rate=float(logs.get("learning_rate", 0.0)),
                             grad_norm=_float_or_none(logs.get("grad_norm")), tokens_per_second=tokens_per_second))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if not metrics or "eval_loss" not in metrics:
            return
        eval_loss = float(metrics["eval_loss"])
        if eval_loss < self.best_eval_loss:
            self.best_eval_loss, self.best_step = eval_loss, state.global_step
        patience = self.early_stopping.early_stopping_patience if self.early_stopping else None
        since = self.early_stopping.early_stopping_patience_counter if self.early_stopping else 0
        self.sink(EvalFinished(step=state.global_step, epoch=state.epoch or 0.0, eval_loss=eval_loss,
                               best_eval_loss=self.best_eval_loss, best_step=self.best_step,
                               evals_since_improvement=since, patience=patience))
        # Evaluation time is not training time: restart the throughput clock.
        self._last_log = (time.perf_counter(), state.num_input_tokens_seen or 0)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.sink(CheckpointSaved(step=state.global_step, path=str(path)))

    @property
    def early_stopped(self) -> bool:
        return bool(self.early_stopping and
                    self.early_stopping.early_stopping_patience_counter >= self.early_stopping.early_stopping_patience)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
