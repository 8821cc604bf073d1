"""What the monitor knows of a run, built from its events in order, whatever their source.

Every loss point is kept, in compact arrays (a 100k-step run is a few MB); the log keeps its last lines. A
resumed run logs again the steps after its checkpoint: the later values replace the earlier ones. The sentinels
turn the numbers into the warnings the guides give, each with its reason. What the run resolved (its schedule,
eval cadence, batch, memory estimate) comes with its RunStarted, so the view never works it out again; runs
recorded before it did still open (see `resolved`). Pure: no textual import, so it is tested on recorded event
streams.
"""

from __future__ import annotations

import array
import dataclasses
import math
import statistics
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Literal

from tuneterm.config import GUIDE_COMPLETE, GUIDE_HYPERPARAMS, GUIDE_UNSLOTH
from tuneterm.engine.events import (
    CheckpointSaved,
    EvalFinished,
    Event,
    PatienceChanged,
    PhaseProgressed,
    PhaseStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
    StopRequested,
    WarningIssued,
)
from tuneterm.engine.launch.distributed import ranks_by_gpu
from tuneterm.plan.schedule import learning_rates, warmup_steps

LOG_LINES = 2000
MEMORISING_LOSS = 0.2
SPIKE_FACTOR = 5.0
SPIKE_WINDOW = 50
PACE_POINTS = 20
"""The latest logged steps a pace (tokens per second, padding, MFU) is averaged over."""

State = Literal["starting", "running", "completed", "early_stopped", "stopped", "failed", "interrupted"]


@dataclass(frozen=True)
class Sentinel:
    level: Literal["warning", "error"]
    title: str
    why: str
    source: str


EMA_WEIGHT = 0.9


class Smoother:
    """Exponential moving average with bias correction, as TensorBoard smooths (non-finite points skipped), kept
    up to date one point at a time."""

    def __init__(self, weight: float = EMA_WEIGHT):
        self.weight, self.average, self.count = weight, 0.0, 0

    def add(self, value: float) -> float:
        if math.isfinite(value):
            self.count += 1
            self.average = self.weight * self.average + (1 - self.weight) * value
        return self.average / (1 - self.weight ** self.count) if self.count else value


def ema(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    smoother = Smoother(weight)
    return [smoother.add(value) for value in values]


def resolved(started: RunStarted) -> RunStarted:
    """`started` with its schedule, eval cadence and patience whatever its age. A run recorded before RunStarted
    carried them (tests/data/recorded-run is one) has them at None: they are read back from its resolved config,
    the warmup turned into steps as the run did. What the config cannot say stays None: such a run shows no
    memory estimate (making one again would read the model's config, perhaps from the hub), and its samples per
    second count the average examples per step (see RunView.samples_per_second)."""
    training = started.config.get("training", {})
    interval = training.get("eval_steps")
    from_config = {
        "lr_scheduler_type": training.get("lr_scheduler_type", "linear"),
        "learning_rate": training.get("learning_rate", 0.0),
        "warmup_steps": warmup_steps(started.total_steps, training.get("warmup_steps") or 0),
        "eval_steps": interval if isinstance(interval, int) and started.eval_examples else None,
        "early_stopping_patience": training.get("early_stopping_patience"),
    }
    missing = {name: value for name, value in from_config.items()
               if getattr(started, name) is None and value is not None}
    return dataclasses.replace(started, **missing) if missing else started


class RunView:
    def __init__(self) -> None:
        self.steps = array.array("i")
        self.losses = array.array("d")
        self.smoothed = array.array("d")
        """The losses' moving average, point for point."""
        self._smoother = Smoother()
        self.rates = array.array("d")
        self.grad_norms = array.array("d")
        self.throughput = array.array("d")
        self.padding = array.array("d")
        """The share of the computed tokens that was padding, per logged step (NaN where the run did not say)."""
        self.step_times = array.array("d")
        self.evals: list[EvalFinished] = []
        self.checkpoints: list[CheckpointSaved] = []
        self.started: RunStarted | None = None
        """The latest start, with what it resolved (see `resolved`)."""
        self.segment_start: int = 0
        """Index of the first step logged by the latest start (a resume): paces are measured from there."""
        self._elapsed_before = 0.0
        """Seconds the run trained before its latest start; the time it lay stopped or dead is not counted."""
        self._latest_time: float | None = None
        self._segment_time: float | None = None
        self.result: RunFinished | RunFailed | None = None
        self.phase = "starting"
        self.progress: PhaseProgressed | None = None
        self.stop_requested: StopRequested | None = None
        self.patience: int | None = None
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.log_count = 0
        """Lines logged so far, those that fell out of `log` included."""
        self.warnings: list[str] = []
        self.process_gone = False
        """The run's process died without a last event."""
        self.nonfinite_step: int | None = None
        """The first step whose loss or gradient norm was NaN or infinite (never shown as a number)."""
        self.version = 0
        """Counts applied events: views redraw only when it moved."""

    # Feeding -------------------------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        self.version += 1
        if isinstance(event, RunStarted):
            if self._segment_time is not None and self._latest_time is not None:
                self._elapsed_before += max(0.0, self._latest_time - self._segment_time)
            self._segment_time = event.time
            self.segment_start = -1  # set by the next step
        if not isinstance(event, (PhaseStarted, PhaseProgressed, WarningIssued)):  # a resume loads before it starts
            self._latest_time = event.time
        if isinstance(event, StepLogged):
            self._step(event)
        elif isinstance(event, EvalFinished):
            self.evals = [e for e in self.evals if e.step < event.step] + [event]
            self.patience = event.patience if event.patience is not None else self.patience
            self._say(f"eval at step {event.step:,}: loss {event.eval_loss:.4f}")
        elif isinstance(event, RunStarted):
            self.started = resolved(event)
            self.phase, self.result, self.stop_requested, self.process_gone = "training", None, None, False
            if self.started.early_stopping_patience is not None:
                self.patience = self.started.early_stopping_patience
            self._say(f"training {event.train_examples:,} examples for {event.total_steps:,} steps on "
                            f"{event.device}" + (f", resuming from {event.resumed_from}" if event.resumed_from else ""))
        elif isinstance(event, PhaseStarted):
            self.phase, self.progress = event.phase, None
            self._say(f"[{event.phase}] {event.detail}".rstrip())
        elif isinstance(event, PhaseProgressed):
            self.progress = event
        elif isinstance(event, CheckpointSaved):
            self.checkpoints.append(event)
            self._say(f"checkpoint saved: {event.path}")
        elif isinstance(event, PatienceChanged):
            self.patience = event.patience
            self._say(f"patience set to {event.patience} at step {event.step:,}")
        elif isinstance(event, StopRequested):
            self.stop_requested = event
            self._say(f"stop requested ({event.reason}): finishing the step and saving")
        elif isinstance(event, WarningIssued):
            self.warnings.append(event.message)
            self._say(f"warning ({event.source}): {event.message}")
        elif isinstance(event, (RunFinished, RunFailed)):
            self.result = event
            self.phase = "ended"
            self._say(f"run {event.status.replace('_', ' ')} at step {event.global_step:,}"
                            if isinstance(event, RunFinished) else f"run failed: {event.reason}")

    def _say(self, line: str) -> None:
        self.log.append(line)
        self.log_count += 1

    def new_log_lines(self, seen: int) -> list[str]:
        """The lines logged after the first `seen` (those still kept)."""
        return list(self.log)[max(0, len(self.log) - (self.log_count - seen)):] if self.log_count > seen else []

    def _step(self, event: StepLogged) -> None:
        if self.steps and event.step <= self.steps[-1]:  # a resumed run logs these steps again
            keep = bisect_left(self.steps, event.step)
            for values in (self.steps, self.losses, self.smoothed, self.rates, self.grad_norms, self.throughput,
                           self.padding, self.step_times):
                del values[keep:]
            self._smoother = Smoother()
            for loss in self.losses:
                self._smoother.add(loss)
        if self.segment_start < 0:
            self.segment_start = len(self.steps)
        self.steps.append(event.step)
        self.losses.append(event.loss)
        self.smoothed.append(self._smoother.add(event.loss))
        self.rates.append(event.learning_rate)
        self.grad_norms.append(event.grad_norm if event.grad_norm is not None else math.nan)
        self.throughput.append(event.tokens_per_second or math.nan)
        self.padding.append(event.padding_share if event.padding_share is not None else math.nan)
        self.step_times.append(event.time)
        if not math.isfinite(event.loss) or event.grad_norm is not None and not math.isfinite(event.grad_norm):
            self.nonfinite_step = self.nonfinite_step or event.step

    # Reading -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        if isinstance(self.result, RunFinished):
            return self.result.status
        if isinstance(self.result, RunFailed):
            return "failed"
        if self.process_gone:
            return "interrupted"
        return "running" if self.started else "starting"

    @property
    def live(self) -> bool:
        return self.state in ("starting", "running")

    @property
    def step(self) -> int:
        return self.steps[-1] if self.steps else 0

    @property
    def total_steps(self) -> int | None:
        return self.started.total_steps if self.started else None

    @property
    def baseline(self) -> float | None:
        return next((e.eval_loss for e in self.evals if e.step == 0), None)

    @property
    def best(self) -> EvalFinished | None:
        """The evaluation that beat the baseline by the most; None while none has."""
        last = self.evals[-1] if self.evals else None
        if last is None or last.best_eval_loss is None:
            return None
        return next((e for e in self.evals if e.step == last.best_step), None)

    def next_eval_step(self) -> int | None:
        interval = self.started.eval_steps if self.started else None
        return (self.step // interval + 1) * interval if interval else None

    def elapsed(self) -> float:
        """Seconds of training so far: from each start of the run to its latest event, not the time in between."""
        if self._segment_time is None or self._latest_time is None:
            return 0.0
        return self._elapsed_before + max(0.0, self._latest_time - self._segment_time)

    def _pace_window(self) -> int:
        """How many of the latest steps to measure a pace over: at most 50, all since the latest start."""
        return min(50, len(self.step_times) - 1 - self.segment_start) if self.segment_start >= 0 else 0

    def eta(self) -> float | None:
        """Seconds to the last step at the pace of the last 50 steps (evaluations included)."""
        window = self._pace_window()
        if self.result or window < 1 or not self.total_steps:
            return None
        pace = (self.step_times[-1] - self.step_times[-1 - window]) / (self.steps[-1] - self.steps[-1 - window])
        return max(0.0, pace * (self.total_steps - self.step))

    def samples_per_second(self) -> float | None:
        """Examples trained on per second over the pace window: steps times the effective batch (in a run recorded
        before RunStarted carried it, the average examples per step: train examples over steps per epoch)."""
        window = self._pace_window()
        if not self.started or window < 1:
            return None
        seconds = self.step_times[-1] - self.step_times[-1 - window]
        steps = self.steps[-1] - self.steps[-1 - window]
        batch = self.started.effective_batch_size or self.started.train_examples / max(self.started.steps_per_epoch, 1)
        return steps * batch / seconds if seconds > 0 else None

    def tokens_per_second(self) -> float | None:
        """Real (non-padding) tokens per second over the latest 20 logged steps, all processes together."""
        recent = [x for x in self.throughput[-PACE_POINTS:] if math.isfinite(x)]
        return statistics.fmean(recent) if recent else None

    def padding_share(self) -> float | None:
        """The share of the computed tokens that was padding over the latest 20 logged steps; None for a run that
        did not count it (recorded before it did)."""
        recent = [x for x in self.padding[-PACE_POINTS:] if math.isfinite(x)]
        return statistics.fmean(recent) if recent else None

    def mfu(self) -> tuple[float | None, str]:
        """Model FLOPs utilisation over the latest 20 logged steps: real tokens per second x the model's FLOPs per
        token, over the peak of the run's devices together; None with why it is not known ("" for a run recorded
        before its start said)."""
        started, pace = self.started, self.tokens_per_second()
        if started is None or started.flops_per_token is None:
            return None, ""
        if started.peak_flops is None:
            return None, started.peak_flops_why
        if pace is None:
            return None, "waiting for steps"
        return pace * started.flops_per_token / (started.peak_flops * max(started.world_size, 1)), \
            started.peak_flops_why

    def planned_rates(self, points: int = 400) -> list[tuple[int, float]] | None:
        """The learning rate the run's schedule sets at each step (plan/schedule.py), about `points` of them; None
        before the run starts and for a schedule whose curve depends on the run."""
        started = self.started
        if started is None or started.lr_scheduler_type is None or started.learning_rate is None \
                or started.warmup_steps is None:
            return None
        return learning_rates(started.lr_scheduler_type, started.learning_rate, started.warmup_steps,
                              started.total_steps, points)

    def ranks_by_gpu(self, host: str) -> dict[int, int]:
        """The GPUs the run's processes on `host` train on, as NVML numbers them, with each one's rank: empty for a
        run on a CPU, on another machine, or recorded before RunStarted listed its processes."""
        return ranks_by_gpu(self.started, host) if self.started else {}

    # Sentinels -----------------------------------------------------------------------------------------------

    def sentinels(self) -> list[Sentinel]:
        found = []
        if self.nonfinite_step is not None:
            found.append(Sentinel("error", f"non-finite loss or gradient norm at step {self.nonfinite_step:,}",
                                  "the updates blew up: the usual causes are a learning rate too high, fp16 overflow "
                                  "or bad data; the run stops and saves nothing after it",
                                  f"{GUIDE_HYPERPARAMS}, chapters 1 and 6"))
        recent = [x for x in self.losses[-20:] if math.isfinite(x)]
        if recent and statistics.fmean(recent) < MEMORISING_LOSS:
            found.append(Sentinel("warning", f"train loss {statistics.fmean(recent):.3f}, under {MEMORISING_LOSS}",
                                  "a training loss this low usually means the model is memorising the training "
                                  "data and will do worse on unseen inputs", GUIDE_UNSLOTH))
        if self._eval_rising_while_train_falls():
            found.append(Sentinel("warning", "eval loss rising while train loss falls",
                                  "the adapter has started to learn the training examples instead of the task: "
                                  "overfitting; early stopping returns to the best checkpoint",
                                  f"{GUIDE_HYPERPARAMS}, chapter 4; {GUIDE_COMPLETE}"))
        spike = self._recent_spike()
        if spike is not None:
            found.append(Sentinel("warning", f"gradient norm spike: {spike[1]:.2f} at step {spike[0]:,}",
                                  "a sudden jump in the gradient norm is a violent update; warmup exists to prevent "
                                  "them early, a lower learning rate later", f"{GUIDE_HYPERPARAMS}, chapter 3"))
        after = [e for e in self.evals if e.step > 0 and math.isfinite(e.eval_loss)]
        if self.baseline is not None and len(after) >= 2 and all(e.eval_loss >= self.baseline for e in after):
            found.append(Sentinel("warning", "no evaluation has beaten the eval loss before training",
                                  f"{len(after)} evaluations, all worse than {self.baseline:.4f}: training is making "
                                  "the model worse on held-out data (a learning rate too high, or eval data unlike "
                                  "the training data)", f"{GUIDE_HYPERPARAMS}, chapter 4"))
        return found

    def _eval_rising_while_train_falls(self) -> bool:
        later = [e for e in self.evals if e.step > 0]
        if len(later) < 3:
            return False
        last3 = later[-3:]
        rising = last3[0].eval_loss < last3[1].eval_loss < last3[2].eval_loss
        first, last = bisect_left(self.steps, last3[0].step), bisect_right(self.steps, last3[2].step)
        span = [x for x in self.losses[first:last] if math.isfinite(x)]
        falling = len(span) >= 4 and statistics.fmean(span[len(span) // 2:]) < statistics.fmean(span[:len(span) // 2])
        return rising and falling

    def _recent_spike(self) -> tuple[int, float] | None:
        """The latest gradient norm of the last SPIKE_WINDOW steps that is over SPIKE_FACTOR times the median of the
        SPIKE_WINDOW before it: shown for that many steps, so a spike between two redraws is not missed."""
        end = len(self.grad_norms)
        for index in range(end - 1, max(end - 1 - SPIKE_WINDOW, 0), -1):
            norm = self.grad_norms[index]
            if not math.isfinite(norm):
                continue
            before = [g for g in self.grad_norms[max(0, index - SPIKE_WINDOW):index] if math.isfinite(g)]
            if len(before) >= 10 and norm > SPIKE_FACTOR * statistics.median(before) > 0:
                return self.steps[index], norm
        return None
