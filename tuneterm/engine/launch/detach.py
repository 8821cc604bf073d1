"""Runs that outlive the terminal: the engine in a process of its own, in a session of its own.

A detached run is started with an argument list (never a shell) as `python -m tuneterm train --prepared
RUN_DIR`, with no terminal: closing the terminal or the SSH session (SIGHUP) does not reach it, and it owns its
signal handlers (SIGTERM still stops it gracefully). Its console output goes to RUN_DIR/train.log, its events to
events.jsonl as always; any terminal follows it with `tuneterm monitor RUN_DIR` and controls it through the
control channel (`tuneterm stop RUN_DIR`).

A run with a launch of its own (launch.json: chosen GPUs, several processes, several machines; engine/launch/command.py)
starts its command under a supervisor (engine/launch/supervisor.py) that outlives it and reports a launch that fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tuneterm.engine.launch.command import launch_for
from tuneterm.engine.rundir.layout import is_live
from tuneterm.errors import RunDirError

LOG_FILE = "train.log"


def start_detached(run_dir: Path, resume: bool = False, wait_seconds: float = 60.0) -> int:
    """Start the run (or resume it) in its own session, the way its launch says when it has one, and return its
    process id (the supervisor's, for a launch) once it holds the run's lock, so that a run list never shows it as
    interrupted while it starts."""
    launch = launch_for(run_dir, resume)
    if launch is None:
        command = [sys.executable, "-m", "tuneterm", "train", "--resume" if resume else "--prepared",
                   str(run_dir.resolve())]
    else:
        command = [sys.executable, "-m", "tuneterm.engine.launch.supervisor", str(run_dir.resolve()), "--",
                   *launch.argv]
    return start_in_session(command, run_dir, run_dir / LOG_FILE, launch.env if launch else {}, wait_seconds)


def start_in_session(command: list[str], directory: Path, log_path: Path, env: dict[str, str] | None = None,
                     wait_seconds: float = 60.0, what: str = "the run") -> int:
    """Start `command` in a session of its own, its output appended to `log_path`, and return its process id once
    it holds the lock of `directory` (`what`: a run's, or an experiment's), or once `wait_seconds` have passed."""
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                   env=environment)
    deadline = time.monotonic() + wait_seconds
    while not is_live(directory):
        if process.poll() is not None:
            raise RunDirError(f"{what} stopped as it started (exit code {process.returncode}); see {log_path}")
        if time.monotonic() > deadline:
            break  # it is slow to import; it is running, a list will say so once it holds the lock
        time.sleep(0.05)
    return process.pid
