"""The bridge from the Hugging Face Trainer to tuneterm's events and control, and the run's guard.

The Trainer calls this between steps: it turns the trainer state into StepLogged / EvalFinished / CheckpointSaved
events, and it is where a request from another thread (stop, save now, evaluate now, a new patience) takes effect,
always after a whole optimizer step; in a distributed run, in every process at the same step (launch/distributed.py).
It also keeps what is reported true:
- the first evaluation (before any training) is the baseline; an evaluation is "best" only when it beats it;
- an evaluation asked for by hand is reported, but runs beside the Trainer's own: early stopping's count, the best
  metric and the checkpoint loaded at the end are the scheduled evaluations' alone, so looking never changes a run;
- the last step is the last: a run resumed from a checkpoint at its end (killed while saving, or early stopping
  had fired) trains nothing more, since the Trainer would take one step before it checks its step limit; and a
  stop asked for once the last step is done leaves the run completed;
- a non-finite loss, gradient norm or weight stops the run at once, before anything non-finite is saved;
- a checkpoint gets its completion marker (every file's size and hash) only after the Trainer wrote all of it.
The early-stopping state it reports is read from the EarlyStoppingCallback that actually stops the run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    CheckpointSaved,
    EvalFinished,
    EventSink,
    PatienceChanged,
    StepLogged,
    StopRequested,
    WarningIssued,
)
from tuneterm.engine.launch import distributed
from tuneterm.engine.rundir.layout import mark_complete

MANUAL_EVAL_PREFIX = "manual_eval"
"""The metrics of an evaluation asked for by hand: neither early stopping nor the best metric reads this prefix."""


class NothingLeftToTrain(Exception):
    """Raised when training begins from a checkpoint at the run's end: the model and state are the checkpoint's,
    and the run goes on to its end without a step."""


@dataclass(frozen=True)
class NonFinite:
    step: int
    what: str
    """"the loss", "the gradient norm" or "12 adapter tensors"."""


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


class EventCallback(TrainerCallback):
    def __init__(self, sink: EventSink, control: RunControl, early_stopping: EarlyStoppingCallback | None,
                 precision: str):
        self.sink = sink
        self.run_control = control
        self.early_stopping = early_stopping
        self.precision = precision
        self.baseline: float | None = None
        """The eval loss before any training (step 0)."""
        self.best: tuple[float, int] | None = None
        """(eval loss, step) of the best evaluation that beat the baseline; None while none has."""
        self.last_eval: float | None = None
        self.evaluated_since_baseline = False
        """An evaluation after training began: without one, nothing can be said to be better or worse."""
        self.nonfinite: NonFinite | None = None
        self.stopped_at: int | None = None
        """The step after which a stop request ended the run short of its last step; None when none did."""
        self.trainer: Any = None
        """The Trainer, set once it is built: an evaluation asked for by hand runs through it."""
        self._last_log: tuple[float, int] | None = None
        self.tokens = TokenCounter()

    # The eval history -----------------------------------------------------------------------------------------

    def _record(self, loss: float, step: int) -> None:
        self.last_eval = loss
        if step == 0 and self.baseline is None:
            self.baseline = loss
            return
        self.evaluated_since_baseline = True
        beats_baseline = self.baseline is None or loss < self.baseline
        if math.isfinite(loss) and beats_baseline and (self.best is None or loss < self.best[0]):
            self.best = (loss, step)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # On resume the log history comes back with the checkpoint: replay its evaluations so that the baseline,
        # the best loss and the early-stopping count carry on where the interrupted run left them.
        threshold = (self.early_stopping.early_stopping_threshold or 0.0) if self.early_stopping else 0.0
        for entry in state.log_history:
            if "eval_loss" in entry:
                self._record(entry["eval_loss"], entry.get("step", 0))
        if self.early_stopping:
            self.early_stopping.early_stopping_patience_counter = evaluations_without_improvement(
                state.log_history, threshold)
        # A run directory that was moved or copied: its best checkpoint is where the run directory is now.
        if state.best_model_checkpoint and Path(state.best_model_checkpoint).parent != Path(args.output_dir):
            state.best_model_checkpoint = str(Path(args.output_dir) / Path(state.best_model_checkpoint).name)
        self._last_log = (time.perf_counter(), state.num_input_tokens_seen or 0)
        if kwargs.get("model") is not None:
            self.tokens.watch(kwargs["model"])
        self.run_control.training_from(state.global_step)
        if state.global_step >= state.max_steps or self.early_stopped:
            raise NothingLeftToTrain(f"checkpoint-{state.global_step} is the end of the run")

    # Between steps --------------------------------------------------------------------------------------------

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        stop, save, evaluate, patience = distributed.agreed([
            self.run_control.stop_requested, self.run_control.take_save_request(state.global_step),
            self.run_control.take_evaluate_request(), self.run_control.take_patience() or 0])
        if save:
            control.should_save = True
        if patience and self.early_stopping is not None:
            self.early_stopping.early_stopping_patience = patience
            self.sink(PatienceChanged(step=state.global_step, patience=patience))
        # A stop after the last step has nothing left to stop: the Trainer ends the run, completed, here.
        if stop and self.stopped_at is None and state.global_step < state.max_steps:
            self.run_control.request_stop("asked of another process of the run")  # no-op when asked of this one
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            self.sink(StopRequested(reason=self.run_control.stop_reason))
        if model is not None and (evaluate or control.should_save or control.should_evaluate
                                  or control.should_training_stop):
            broken = [name for name, p in model.named_parameters() if p.requires_grad and not p.isfinite().all()]
            if distributed.agreed([bool(broken)])[0]:  # a sharded model: each process checks its own shard
                what = f"{len(broken)} trainable tensors (e.g. {broken[0]})" if broken else \
                    "trainable tensors of another process"
                self._stop_nonfinite(state, control, what)
        if evaluate and self.trainer.eval_dataset is None:
            self.sink(WarningIssued(message="evaluation asked for, but the run has no eval split to evaluate on"))
        elif evaluate and not control.should_evaluate and self.nonfinite is None:  # a scheduled one answers it
            self._evaluate_by_hand(state, control)

    def _evaluate_by_hand(self, state: Any, control: Any) -> None:
        """Evaluate beside the Trainer's schedule: through its evaluation loop, so that no callback (early
        stopping) and no best-metric choice sees it, and nothing of it enters the log history a resume replays."""
        trainer = self.trainer
        output = trainer.evaluation_loop(trainer.get_eval_dataloader(), description="Evaluation asked for",
                                         prediction_loss_only=True, metric_key_prefix=MANUAL_EVAL_PREFIX)
        trainer._metrics["eval"].clear()  # TRL's token metrics of it: the next scheduled evaluation reports its own
        self._report_evaluation(state, control, float(output.metrics[f"{MANUAL_EVAL_PREFIX}_loss"]))

    def _stop_nonfinite(self, state: Any, control: Any, what: str) -> None:
        """Stop now, and save or evaluate nothing more: what the run holds is no longer a model."""
        if self.nonfinite is None:
            self.nonfinite = NonFinite(state.global_step, what)
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return
        loss, grad_norm = float(logs["loss"]), _float_or_none(logs.get("grad_norm"))
        now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
        tokens_per_second = None
        if self._last_log is not None and now > self._last_log[0] and tokens > self._last_log[1]:
            tokens_per_second = (tokens - self._last_log[1]) / (now - self._last_log[0])
        self._last_log = (now, tokens)
        self.sink(StepLogged(step=state.global_step, max_steps=state.max_steps, epoch=state.epoch or 0.0,
                             loss=loss, learning_rate=float(logs.get("learning_rate", 0.0)), grad_norm=grad_norm,
                             tokens_per_second=tokens_per_second, padding_share=self.tokens.padding_share()))
        if not math.isfinite(loss):
            self._stop_nonfinite(state, control, "the loss")
        elif not _finite(grad_norm) and self.precision != "fp16":  # fp16's loss scaler skips such steps itself
            self._stop_nonfinite(state, control, "the gradient norm")

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if not metrics or "eval_loss" not in metrics:
            return
        eval_loss = float(metrics["eval_loss"])
        self._record(eval_loss, state.global_step)
        self._report_evaluation(state, control, eval_loss)

    def _report_evaluation(self, state: Any, control: Any, eval_loss: float) -> None:
        """An evaluation with the early-stopping state it leaves (one asked for by hand leaves it as it was)."""
        patience = self.early_stopping.early_stopping_patience if self.early_stopping else None
        since = self.early_stopping.early_stopping_patience_counter if self.early_stopping else 0
        self.sink(EvalFinished(step=state.global_step, epoch=state.epoch or 0.0, eval_loss=eval_loss,
                               baseline_eval_loss=self.baseline,
                               best_eval_loss=self.best[0] if self.best else None,
                               best_step=self.best[1] if self.best else None,
                               evals_since_improvement=since, patience=patience))
        if not math.isfinite(eval_loss):
            self._stop_nonfinite(state, control, "the eval loss")
        # Evaluation time is not training time: restart the throughput clock.
        self._last_log = (time.perf_counter(), state.num_input_tokens_seen or 0)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens.stop()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        distributed.barrier()  # every process has written its part (its RNG state, its optimizer shard)
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if distributed.is_main() and self.nonfinite is None and path.is_dir():
            mark_complete(path)
            self.sink(CheckpointSaved(step=state.global_step, path=str(path)))

    @property
    def early_stopped(self) -> bool:
        return bool(self.early_stopping and
                    self.early_stopping.early_stopping_patience_counter >= self.early_stopping.early_stopping_patience)


class TokenCounter:
    """Counts, as the model trains, the tokens each forward pass computes and how many of them are real, to report
    the share that was padding. The real count stays on the device until it is read once per log: counting costs
    no synchronisation of its own."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._computed = 0
        self._real: Any = 0
        """A tensor on the model's device once the first batch is counted."""

    def watch(self, model: Any) -> None:
        self.stop()
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not module.training or ids is None:
            return  # evaluation and generation are not training's padding
        mask = kwargs.get("attention_mask")
        self._computed += ids.numel()
        # A padding-free row has no mask and no padding: position ids restart at each example instead.
        self._real = self._real + (mask.sum() if mask is not None else ids.numel())

    def padding_share(self) -> float | None:
        """The share of the tokens computed since the last call that were padding; None before any."""
        if not self._computed:
            return None
        real = float(self._real)
        share = max(0.0, 1 - real / self._computed)
        self._computed, self._real = 0, 0
        return share


def evaluations_without_improvement(log_history: list[dict[str, Any]], threshold: float) -> int:
    """Early stopping's count, replayed from a Trainer's log history as EarlyStoppingCallback counts."""
    since, reference = 0, None
    for entry in log_history:
        if "eval_loss" not in entry:
            continue
        loss = entry["eval_loss"]
        improved = reference is None or (loss < reference and abs(loss - reference) > threshold)
        since = 0 if improved else since + 1
        if reference is None or loss < reference:
            reference = loss
    return since


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
