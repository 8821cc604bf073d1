"""What happens during a run, as small immutable events.

The engine reports everything through these: the TUI turns them into messages, `tuneterm train` prints them, and
every run appends them to RUN_DIR/events.jsonl (one JSON object per line, flushed as it happens), so any
terminal can replay or follow a run while it is live. Names are in the past tense: each says what happened.
An experiment (engine/experiment/) keeps its own few in EXPERIMENT_DIR/events.jsonl the same way: when its runner
started and ended, and each variation's end, which a variation that could not even start has nowhere else to say.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

RunStatus = Literal["completed", "early_stopped", "stopped"]
ExperimentStatus = Literal["finished", "stopped"]
Outcome = Literal["improved", "worse_than_baseline", "not_evaluated"]

EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True, kw_only=True)
class Event:
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({"event": type(self).__name__, **dataclasses.asdict(self)}, default=str)


@dataclass(frozen=True, kw_only=True)
class PhaseStarted(Event):
    """The run moved to a new phase before or after training: loading, preparing data, saving..."""

    phase: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class PhaseProgressed(Event):
    """How far a long phase got (reading and tokenising the data): a few times a second at most."""

    phase: str
    done: int
    total: int | None = None
    fraction: float | None = None


@dataclass(frozen=True, kw_only=True)
class WarningIssued(Event):
    """Something the user should know that does not stop the run."""

    message: str
    source: str = "tuneterm"


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    """Training is about to begin; carries the resolved plan."""

    run_dir: str
    config: dict[str, Any]
    defaulted: list[str]
    notes: dict[str, str]
    train_examples: int
    eval_examples: int
    steps_per_epoch: int
    total_steps: int
    trainable_params: int
    total_params: int
    device: str
    resumed_from: str | None = None
    world_size: int = 1
    """Processes training together (one per GPU), under a launcher."""
    strategy: str = "single"
    """How they share the work: single, ddp, fsdp, deepspeed-zero2 or deepspeed-zero3."""
    processes: list[dict[str, Any]] = field(default_factory=list)
    """Each process: {"rank", "host", "pid", "gpu"}, gpu being the NVML index (as nvidia-smi numbers it) of the GPU it
    trains on, on its host; None on a CPU."""
    # What the run resolved, for whoever watches it: the monitor draws these instead of working them out again from
    # `config`. In runs recorded before RunStarted carried them they are None (ui/state/run_view.py says what it shows).
    lr_scheduler_type: str | None = None
    """The learning-rate schedule, by transformers' name for it (linear, cosine...)."""
    learning_rate: float | None = None
    """The peak rate the schedule scales, reached at the end of warmup."""
    warmup_steps: int | None = None
    """Optimizer steps of warmup: a fraction of the total already turned into steps (plan/schedule.py)."""
    eval_steps: int | None = None
    """Optimizer steps between evaluations; None without an eval split."""
    early_stopping_patience: int | None = None
    """Evaluations without improvement that end the run (early stopping needs an eval split)."""
    effective_batch_size: int | None = None
    """Examples per optimizer step: micro-batch x gradient accumulation x processes."""
    estimated_memory: dict[str, float] = field(default_factory=dict)
    """The plan's estimate of one process's device memory, in bytes by part (plan/memory.py names the parts)."""
    estimated_memory_total: float | None = None
    """What NVML should show for one process, by that estimate: the parts' peak, the allocator's slack and the CUDA
    context."""
    thinking: bool | None = None
    """The enable_thinking the trained model is asked with (its chat): True when training rendered examples in a
    hybrid template's thinking mode, False when all were rendered the no-think way, None for other templates."""
    train_sequences: int | None = None
    """What the Trainer iterates in an epoch: packed rows when packing, else the training examples."""
    tokens_per_step: float | None = None
    """Real (non-padding) tokens of one optimizer step, over all processes, on average over the data."""
    padding_share: float | None = None
    """The share of the tokens a step computes that the data leaves as padding, expected from its lengths."""
    flops_per_token: float | None = None
    """Model FLOPs of training on one real token (forward and backward, without recomputation): plan/flops.py."""
    peak_flops: float | None = None
    """The device's dense tensor peak in FLOP/s at the run's precision, per process; None where unknown or on a CPU
    (then there is no MFU to show, and `peak_flops_why` says why)."""
    peak_flops_why: str = ""


@dataclass(frozen=True, kw_only=True)
class StepLogged(Event):
    """One optimizer step's training metrics (or the average since the last log)."""

    step: int
    max_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    """Real (non-padding) tokens per second since the last log, over all processes."""
    padding_share: float | None = None
    """The share of the tokens computed since the last log that were padding."""


@dataclass(frozen=True, kw_only=True)
class EvalFinished(Event):
    """An evaluation pass, with the early-stopping state it leaves behind."""

    step: int
    epoch: float
    eval_loss: float
    """NaN when the model's outputs are no longer numbers (never written as a number it is not)."""
    baseline_eval_loss: float | None = None
    """The eval loss before any training (step 0), when the run evaluated then."""
    best_eval_loss: float | None = None
    """The lowest eval loss of an evaluation that beat the baseline; None while none has."""
    best_step: int | None = None
    evals_since_improvement: int = 0
    patience: int | None = None


@dataclass(frozen=True, kw_only=True)
class PatienceChanged(Event):
    """Early stopping's patience was changed while the run was going."""

    step: int
    patience: int


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass(frozen=True, kw_only=True)
class StopRequested(Event):
    """Someone asked the run to stop; it finishes the current step and saves first."""

    reason: str = "requested"


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """The run ended on its own terms: completed, stopped early by patience, or stopped on request."""

    status: RunStatus
    run_dir: str
    global_step: int
    adapter_dir: str | None = None
    best_checkpoint: str | None = None
    """The checkpoint the saved adapter comes from; None when no evaluation beat the baseline."""
    best_eval_loss: float | None = None
    baseline_eval_loss: float | None = None
    final_eval_loss: float | None = None
    outcome: Outcome = "not_evaluated"
    """Whether training made the eval loss better than before training."""
    adapter_changed: bool | None = None
    adapter_check: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class RunFailed(Event):
    """The run could not go on; `reason` is one line a person can act on."""

    reason: str
    error_type: str = ""
    log_path: str | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    """The problems behind the failure, each with its location (file and line, key) and message."""
    remedies: list[dict[str, Any]] = field(default_factory=list)
    """Changes that would let it run: {"set": {key: value}, "why": sentence, "resume": whether the run can
    resume with them (or must start again)}."""
    last_good_checkpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExperimentStarted(Event):
    """An experiment's runner began, or went on after a stop: the variations it is to run, in order."""

    variations: list[str]
    gpus: list[int] = field(default_factory=list)
    """The GPUs that train one variation each, side by side; empty: one variation after another, in one process."""
    resumed: bool = False


@dataclass(frozen=True, kw_only=True)
class VariationEnded(Event):
    """A variation of an experiment ended: as its run ended (its status), or failed without a run that could say so
    (it could not start)."""

    variation: str
    status: str
    """The run's: completed, early_stopped, stopped, failed or interrupted."""
    reason: str = ""
    run_dir: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExperimentEnded(Event):
    """The runner ended: every variation has run ("finished"), or it was asked to stop ("stopped")."""

    status: ExperimentStatus
    reason: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls for cls in (PhaseStarted, PhaseProgressed, WarningIssued, RunStarted, StepLogged, EvalFinished,
                                  PatienceChanged, CheckpointSaved, StopRequested, RunFinished, RunFailed,
                                  ExperimentStarted, VariationEnded, ExperimentEnded)
}

EventSink = Callable[[Event], None]


def _field_defaults(cls: type) -> tuple[frozenset[str], dict[str, Any], dict[str, Callable[[], Any]]]:
    """(required names, plain defaults, default factories) of an event class."""
    required, plain, factories = set(), {}, {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            plain[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            factories[item.name] = item.default_factory
        else:
            required.add(item.name)
    return frozenset(required), plain, factories


_DEFAULTS = {name: _field_defaults(cls) for name, cls in EVENT_TYPES.items()}


class UnreadableLine(ValueError):
    """A line of a run's JSON-lines file (events.jsonl, control.jsonl) that holds nothing its reader can use: garbage
    a full disk or a crash left, a line cut short, a line from elsewhere. Its message says why."""


def json_object(line: str | bytes) -> dict[str, Any]:
    """The object one line of a JSON-lines file holds. Parsed by orjson (five times faster than json here); the rare
    line holding NaN, which orjson refuses, goes to json."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            data = json.loads((line.decode("utf-8") if isinstance(line, bytes) else line).strip())
        except UnicodeDecodeError as exc:
            raise UnreadableLine(f"not text ({exc.reason} at byte {exc.start})") from None
        except ValueError as exc:
            raise UnreadableLine(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnreadableLine(f"a JSON {type(data).__name__}, not an object")
    return data


def event_from_json(line: str | bytes) -> Event:
    """One line of events.jsonl as its event, or UnreadableLine. Built without the dataclass's __init__ (which sets
    each field of a frozen instance one call at a time): replaying a 100k-step run is dominated by this function."""
    data = json_object(line)
    kind = data.pop("event", None)
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UnreadableLine(f"no known event name (its \"event\" is {kind!r})")
    required, plain, factories = _DEFAULTS[cls.__name__]
    missing = required - data.keys()
    if missing:
        raise UnreadableLine(f"{cls.__name__} is missing {', '.join(sorted(missing))}")
    event = object.__new__(cls)
    event.__dict__.update(plain)
    for name, factory in factories.items():
        if name not in data:
            event.__dict__[name] = factory()
    event.__dict__.update(data)
    return event


@dataclass(frozen=True)
class SkippedLine:
    """A line of a run's file that a reader could not use and went past: where it is, and why."""

    path: Path
    number: int
    """Counted from 1, as editors number lines."""
    reason: str
    holds: str = "event"
    """What a line of that file should hold: an event (events.jsonl), a request (control.jsonl)."""

    def __str__(self) -> str:
        return f"{self.path.name} line {self.number} is not a readable {self.holds} (skipped): {self.reason}"


SkipReport = Callable[[SkippedLine], object]

_said_on_stderr: set[tuple[Path, int]] = set()


def say_on_stderr(skipped: SkippedLine) -> None:
    """The report of a reader told of no other: one line on stderr, once per line of a file in this process (a
    command that reads a run's events several times says it once)."""
    if (skipped.path, skipped.number) not in _said_on_stderr:
        _said_on_stderr.add((skipped.path, skipped.number))
        print(skipped, file=sys.stderr, flush=True)


def line_number_at(path: Path, offset: int) -> int:
    """The number of the line that starts at byte `offset` of the file."""
    with open(path, "rb") as handle:
        return handle.read(offset).count(b"\n") + 1


def events_of_lines(lines: Iterable[bytes], path: Path, first_line: Callable[[], int],
                    skipped: SkipReport) -> Iterator[Event]:
    """The events of complete lines of `path`, in order: a line that holds none is told to `skipped` and gone
    past, so that no event after it is lost. `first_line` numbers the first of them, asked only when one is
    unreadable (counting the lines of a long file is work the usual read does without)."""
    for index, line in enumerate(lines):
        if not line.strip():
            continue  # an empty line holds nothing to lose
        try:
            yield event_from_json(line)
        except UnreadableLine as exc:
            skipped(SkippedLine(path, first_line() + index, str(exc)))


def read_events(path: Path, skipped: SkipReport = say_on_stderr) -> list[Event]:
    """Every complete event in an events.jsonl (iter_events says what is skipped)."""
    return list(iter_events(path, skipped))


def iter_events(path: Path, skipped: SkipReport = say_on_stderr, offset: int = 0) -> Iterator[Event]:
    """The events of an events.jsonl from byte `offset` (the start of a line) on. A line that holds no event is
    reported to `skipped` and gone past; a last line without its newline is still being written by a live run,
    and is read when it is complete."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        yield from events_of_lines((line for line in handle if line.endswith(b"\n")), path,
                                   lambda: line_number_at(path, offset), skipped)


def last_of_run(events: Sequence[Event]) -> Event | None:
    """The last event that says where a run is: a warning, which may follow its end, says nothing of that."""
    return next((event for event in reversed(events) if not isinstance(event, WarningIssued)), None)


SINK_ERROR_LOG = "sink-error.log"


class EventLog:
    """Appends events to events.jsonl as they happen and passes each on to a sink (the UI or the console).

    Neither a full disk nor a failing sink stops the run: a write that fails is remembered (the run's end says
    so) and later events still reach the sink; a sink that raises gets its traceback written to sink-error.log
    next to the events, once, and training goes on. A file whose last line was cut short (a full disk, a kill)
    gets that line ended first, so that the first event appended (a resumed run's start) is not glued to it.
    """

    def __init__(self, path: Path | None, sink: EventSink | None = None):
        """`path` None keeps nothing: a process of a distributed run other than the main one, which reports."""
        self.path = path
        self._sink = sink
        self._lock = threading.Lock()
        self._line_start = "\n" if path is not None and _ends_mid_line(path) else ""
        self._handle: IO[str] | None = open(path, "a", encoding="utf-8") if path else None
        self.write_error: OSError | None = None
        self.sink_failed = False

    def __call__(self, event: Event) -> None:
        if self.path is None or self._handle is None:
            return
        with self._lock:
            try:
                self._handle.write(self._line_start + event.to_json() + "\n")
                self._handle.flush()
                self._line_start = ""
            except OSError as exc:
                self.write_error = self.write_error or exc
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception:  # noqa: BLE001 - whatever the display does wrong, the run goes on
            if not self.sink_failed:
                self.sink_failed = True
                with contextlib.suppress(OSError):
                    (self.path.parent / SINK_ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            if self._handle is not None:
                self._handle.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last line lacks its newline: a write cut short."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:  # no file, or an empty one
        return False
