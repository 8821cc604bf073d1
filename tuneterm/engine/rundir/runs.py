"""The runs in a runs directory, each summed up from its own files, whoever started it.

A run's status comes from the last event of its events.jsonl and from its lock (held by the process running
it): completed, early_stopped or stopped (RunFinished), failed (RunFailed), running (a live process holds the
lock), or interrupted (no process and no last event: it was killed, or its machine went down). Only the head
and the tail of events.jsonl are read, so listing runs with 100k logged steps stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tuneterm.engine.events import (
    EVENTS_FILE,
    EvalFinished,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
    event_from_json,
)
from tuneterm.engine.rundir.layout import CONFIG_FILE, is_live

RunState = Literal["running", "completed", "early_stopped", "stopped", "failed", "interrupted"]
TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    status: RunState
    method: str | None
    model: str | None
    started: float
    """Seconds since the epoch: when the run began (its first event, or its config when it has none)."""
    updated: float
    """When its events.jsonl last changed."""
    step: int = 0
    total_steps: int | None = None
    best_eval_loss: float | None = None
    reason: str = ""
    """Why it failed, for failed runs."""

    @property
    def name(self) -> str:
        return self.run_dir.name


def _head_and_tail(path: Path) -> tuple[list[Event], list[Event]]:
    """The first events (up to the run's start) and the events of the last TAIL_BYTES."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = [_event(line) for line in handle.read(min(size, TAIL_BYTES)).split(b"\n")[:50]]
        handle.seek(max(0, size - TAIL_BYTES))
        lines = handle.read().split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line may be cut
    return [e for e in head if e], [e for e in (_event(line) for line in lines) if e]


def _event(line: bytes) -> Event | None:
    try:
        return event_from_json(line.decode("utf-8"))
    except (ValueError, KeyError, TypeError):
        return None  # a half-written last line of a live run, or a line cut by the tail window


def summarise_run(run_dir: Path) -> RunSummary | None:
    """None for a directory that is not a tuneterm run."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    events_path = run_dir / EVENTS_FILE
    head, tail = _head_and_tail(events_path) if events_path.is_file() else ([], [])
    live = is_live(run_dir)
    last = tail[-1] if tail else None
    status: RunState
    reason = ""
    if live:
        status = "running"
    elif isinstance(last, RunFinished):
        status = last.status
    elif isinstance(last, RunFailed):
        status, reason = "failed", last.reason
    else:
        status = "interrupted"
    started = next((e for e in reversed(head + tail) if isinstance(e, RunStarted)), None)
    steps = [e for e in tail if isinstance(e, StepLogged)]
    evals = [e for e in tail if isinstance(e, EvalFinished)]
    best = last.best_eval_loss if isinstance(last, RunFinished) else evals[-1].best_eval_loss if evals else None
    model = config.get("model", {}).get("path") if isinstance(config.get("model"), dict) else None
    return RunSummary(
        run_dir=run_dir, status=status, method=config.get("method"), model=model,
        started=head[0].time if head else os.stat(config_path).st_mtime,
        updated=os.stat(events_path).st_mtime if events_path.is_file() else os.stat(config_path).st_mtime,
        step=last.global_step if isinstance(last, RunFinished) else steps[-1].step if steps else 0,
        total_steps=started.total_steps if started else None, best_eval_loss=best, reason=reason)


def list_runs(root: Path) -> list[RunSummary]:
    """Every run under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [summarise_run(path) for path in root.iterdir() if path.is_dir()]
    return sorted((s for s in found if s is not None), key=lambda s: -s.started)
