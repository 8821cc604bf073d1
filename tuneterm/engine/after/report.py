"""What a run that has ended comes to: why it ended, its losses, its cost, where its files are, what it chose.

One report, read from the run directory's own files (events.jsonl, trainer_state.json, adapter_check.json,
stop_check.json, exports.json, config.yaml), for the summary screen, the run card (README.md) and `tuneterm compare`.
Nothing is called best unless an evaluation beat the loss before training; a loss that was NaN is said so. Lines
of events.jsonl that hold no event are among its warnings, by line number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig, load_config
from tuneterm.engine.after.stopcheck import read_stop_check
from tuneterm.engine.events import (
    EVENTS_FILE,
    EvalFinished,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    SkippedLine,
    StepLogged,
    StopRequested,
    WarningIssued,
    last_of_run,
    read_events,
)
from tuneterm.engine.rundir.layout import CONFIG_FILE, checkpoints
from tuneterm.engine.rundir.runs import RunState, summarise_run

NOTABLE_KEYS = ("method", "model.path", "data.train", "data.train_on", "lora.r", "lora.lora_alpha",
                "lora.target_modules", "training.learning_rate", "training.lr_scheduler_type",
                "training.num_train_epochs", "training.per_device_train_batch_size",
                "training.gradient_accumulation_steps", "training.max_length", "training.precision",
                "quantization.bnb_4bit_quant_type")
"""What a person looking at a fine-tune asks first."""


@dataclass
class RunReport:
    run_dir: Path
    status: RunState
    why_it_ended: str
    steps: int
    total_steps: int | None
    epochs: float | None
    training_seconds: float
    tokens_seen: int | None
    train_loss_first: float | None
    train_loss_last: float | None
    baseline_eval_loss: float | None
    best_eval_loss: float | None
    best_step: int | None
    final_eval_loss: float | None
    outcome: str | None
    adapter_dir: Path | None
    adapter_changed: bool | None
    plots: list[Path]
    checkpoints: list[Path]
    settings: dict[str, Any]
    """Notable settings: dotted key -> value."""
    stop_check: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    """Each export of the run (engine/after/export.py), with its round-trip check, oldest first."""

    @property
    def has_adapter(self) -> bool:
        return self.adapter_dir is not None

    @property
    def resumable(self) -> bool:
        """Stopped or cut short, with a checkpoint to go on from."""
        return self.status in ("stopped", "interrupted") and bool(self.checkpoints)


def perplexity(loss: float | None) -> str:
    """exp(loss), the per-token perplexity; '-' when there is no loss, 'NaN' when the loss was not a number."""
    if loss is None:
        return "-"
    if not math.isfinite(loss):
        return "NaN" if math.isnan(loss) else "inf"
    return f"{math.exp(loss):.2f}" if loss < 50 else "overflow"


def loss_text(loss: float | None) -> str:
    if loss is None:
        return "-"
    return f"{loss:.4f}" if math.isfinite(loss) else str(loss)


def clock(seconds: float | None) -> str:
    """h:mm:ss, or "-" when unknown."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def training_seconds(events: list[Event]) -> float:
    """Time spent training, each start (the first, and every resume) counted from its RunStarted to its last
    event, so the time a run spent stopped before it was resumed is not counted."""
    total, start, last = 0.0, None, None
    for event in events:
        if isinstance(event, RunStarted):
            if start is not None and last is not None:
                total += last - start
            start = event.time
        last = event.time
    if start is not None and last is not None:
        total += last - start
    return total


def trainer_state(run_dir: Path) -> dict[str, Any]:
    """The Trainer's state: the run's, or its newest checkpoint's when it did not end normally ({} when none)."""
    for path in [run_dir / "trainer_state.json"] + [c / "trainer_state.json" for c in reversed(checkpoints(run_dir))]:
        try:
            state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return state
    return {}


def tokens_seen(run_dir: Path) -> int | None:
    """Input tokens trained on (padding excluded)."""
    seen = trainer_state(run_dir).get("num_input_tokens_seen")
    return int(seen) if seen is not None else None


def tokens_by_step(run_dir: Path) -> dict[int, int]:
    """Tokens seen at each logged step (for curves aligned by tokens rather than steps)."""
    history = trainer_state(run_dir).get("log_history", [])
    return {int(e["step"]): int(e["num_input_tokens_seen"]) for e in history if "num_input_tokens_seen" in e}


def notable_settings(config: RunConfig) -> dict[str, Any]:
    settings = {}
    for key in NOTABLE_KEYS:
        if key == "method":
            settings[key] = config.method
        elif key.startswith("quantization.") and config.method != "qlora":
            continue
        else:
            settings[key] = config.get(key)
    return settings


def report_of(run_dir: Path) -> RunReport:
    summary = summarise_run(run_dir)
    if summary is None:
        from tuneterm.errors import RunDirError

        raise RunDirError(f"{run_dir}: not a tuneterm run directory (no {CONFIG_FILE})")
    skipped: list[SkippedLine] = []
    events = read_events(run_dir / EVENTS_FILE, skipped.append) if (run_dir / EVENTS_FILE).is_file() else []
    config = load_config(run_dir / CONFIG_FILE)
    steps = [e for e in events if isinstance(e, StepLogged)]
    evals = [e for e in events if isinstance(e, EvalFinished)]
    started = next((e for e in reversed(events) if isinstance(e, RunStarted)), None)
    stop = next((e for e in reversed(events) if isinstance(e, StopRequested)), None)
    last = last_of_run(events)
    finished = last if isinstance(last, RunFinished) else None
    best = evals[-1] if evals else None
    saved = (run_dir / "adapter_model.safetensors").is_file() or (run_dir / "model.safetensors").is_file()
    return RunReport(
        run_dir=run_dir, status=summary.status, why_it_ended=why_it_ended(summary.status, last, started, stop),
        steps=summary.step, total_steps=summary.total_steps, epochs=steps[-1].epoch if steps else None,
        training_seconds=training_seconds(events), tokens_seen=tokens_seen(run_dir),
        train_loss_first=steps[0].loss if steps else None, train_loss_last=steps[-1].loss if steps else None,
        baseline_eval_loss=best.baseline_eval_loss if best else None,
        best_eval_loss=finished.best_eval_loss if finished else best.best_eval_loss if best else None,
        best_step=best.best_step if best and (finished is None or finished.outcome == "improved") else None,
        final_eval_loss=evals[-1].eval_loss if evals else None,
        outcome=finished.outcome if finished else None, adapter_dir=run_dir if saved else None,
        adapter_changed=finished.adapter_changed if finished else None,
        plots=[p for p in (run_dir / "training_loss.png", run_dir / "training_eval_loss.png") if p.is_file()],
        checkpoints=checkpoints(run_dir), settings=notable_settings(config), stop_check=read_stop_check(run_dir),
        warnings=([e.message for e in events if isinstance(e, WarningIssued)] + [str(line) for line in skipped])[-20:],
        exports=read_exports(run_dir))


EXPORTS_FILE = "exports.json"


def read_exports(run_dir: Path) -> list[dict[str, Any]]:
    """The run's exports as engine/after/export.py recorded them (none when it has not been exported)."""
    try:
        found = json.loads((run_dir / EXPORTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def why_it_ended(status: RunState, last: Event | None, started: RunStarted | None,
                 stop: StopRequested | None = None) -> str:
    if isinstance(last, RunFailed):
        return f"failed: {last.reason}"
    if isinstance(last, RunFinished):
        if last.status == "early_stopped":
            return "stopped early: the eval loss stopped improving for as many evaluations as the patience allows"
        if last.status == "stopped":
            return f"stopped by {stop.reason if stop else 'request'}, with a checkpoint to resume from"
        planned = f"all {started.total_steps:,} planned steps" if started else "every planned step"
        return f"completed {planned}"
    if status == "running":
        return "still running"
    return "interrupted: its process ended without a last event (killed, or its machine went down)"
