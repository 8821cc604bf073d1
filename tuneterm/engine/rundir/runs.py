"""The runs in a runs directory, each summed up from its own files, whoever started it.

A run's status comes from the last event of its events.jsonl and from its lock (held by the process running
it): completed, early_stopped or stopped (RunFinished), failed (RunFailed), running (a live process holds the
lock), or interrupted (no process and no last event: it was killed, or its machine went down). Only the head
and the tail of events.jsonl are read, so listing runs with 100k logged steps stays fast. A run whose files are
damaged (a config that is not a mapping, lines of events.jsonl a full disk left unreadable) is still listed, with
what is wrong with it, so that one bad run never hides the others.
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
    SkipReport,
    StepLogged,
    events_of_lines,
    last_of_run,
    line_number_at,
)
from tuneterm.engine.rundir.layout import CONFIG_FILE, is_live

RunState = Literal["running", "completed", "early_stopped", "stopped", "failed", "interrupted"]
TAIL_BYTES = 256 * 1024
HEAD_LINES = 50


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
    problems: tuple[str, ...] = ()
    """What is wrong with the run's files as read: a config that is not a mapping, lines that hold no event."""

    @property
    def name(self) -> str:
        return self.run_dir.name


def _head_and_tail(path: Path, skipped: SkipReport) -> tuple[list[Event], list[Event]]:
    """The first events (up to the run's start) and the events of the last TAIL_BYTES; in a short file both are
    the same lines, each told to `skipped` twice when it holds no event. Only whole lines count: the head's last
    piece and the tail's first may be cut by the window, the file's last may still be being written."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head_lines = handle.read(min(size, TAIL_BYTES)).split(b"\n")[:HEAD_LINES + 1][:-1]
        tail_start = max(0, size - TAIL_BYTES)
        handle.seek(tail_start)
        tail_lines = handle.read().split(b"\n")[:-1]
    if tail_start:
        tail_start += len(tail_lines[0]) + 1 if tail_lines else 0
        tail_lines = tail_lines[1:]
    head = list(events_of_lines(head_lines, path, lambda: 1, skipped))
    tail = list(events_of_lines(tail_lines, path, lambda: line_number_at(path, tail_start), skipped))
    return head, tail


def _read_config(config_path: Path) -> tuple[dict[str, Any], str]:
    """The run's config as a mapping, and what is wrong with the file when it is not one ("" when nothing)."""
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return {}, f"{CONFIG_FILE} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if config is None:
        return {}, ""
    if not isinstance(config, dict):
        return {}, f"{CONFIG_FILE} is not a mapping of settings (it holds a {type(config).__name__})"
    return config, ""


def summarise_run(run_dir: Path) -> RunSummary | None:
    """None for a directory that is not a tuneterm run."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return None
    config, config_problem = _read_config(config_path)
    unreadable: dict[int, str] = {}
    events_path = run_dir / EVENTS_FILE
    head, tail = _head_and_tail(events_path, lambda skipped: unreadable.setdefault(skipped.number, str(skipped))) \
        if events_path.is_file() else ([], [])
    live = is_live(run_dir)
    last = last_of_run(tail)
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
    model = config["model"].get("path") if isinstance(config.get("model"), dict) else None
    method = config.get("method")
    return RunSummary(
        run_dir=run_dir, status=status, method=method if isinstance(method, str) else None, model=model,
        started=head[0].time if head else os.stat(config_path).st_mtime,
        updated=os.stat(events_path).st_mtime if events_path.is_file() else os.stat(config_path).st_mtime,
        step=last.global_step if isinstance(last, RunFinished) else steps[-1].step if steps else 0,
        total_steps=started.total_steps if started else None, best_eval_loss=best, reason=reason,
        problems=tuple(problem for problem in (config_problem, *unreadable.values()) if problem))


def list_runs(root: Path) -> list[RunSummary]:
    """Every run under `root`, newest first (runs started at the same time: by name, the later first)."""
    if not root.is_dir():
        return []
    found = [summarise_run(path) for path in root.iterdir() if path.is_dir()]
    return sorted((s for s in found if s is not None), key=lambda s: (s.started, s.run_dir.name), reverse=True)
