"""Runs that outlive the terminal: the engine in a process of its own, in a session of its own.

A detached run is started with an argument list (never a shell) as `python -m tuneterm train --prepared
RUN_DIR`, with no terminal: closing the terminal or the SSH session (SIGHUP) does not reach it, and it owns its
signal handlers (SIGTERM still stops it gracefully). Its console output goes to RUN_DIR/train.log, its events to
events.jsonl as always; any terminal follows it with `tuneterm monitor RUN_DIR` and controls it through the
control channel (`tuneterm stop RUN_DIR`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tuneterm.engine.rundir import is_live
from tuneterm.errors import RunDirError

LOG_FILE = "train.log"


def start_detached(run_dir: Path, resume: bool = False, wait_seconds: float = 60.0) -> int:
    """Start the run (or resume it) in its own session and return its process id once it holds the run's lock,
    so that a run list never shows it as interrupted while it starts."""
    argument = "--resume" if resume else "--prepared"
    command = [sys.executable, "-m", "tuneterm", "train", argument, str(run_dir.resolve())]
    with open(run_dir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + wait_seconds
    while not is_live(run_dir):
        if process.poll() is not None:
            raise RunDirError(f"the run stopped as it started (exit code {process.returncode}); see "
                              f"{run_dir / LOG_FILE}")
        if time.monotonic() > deadline:
            break  # it is slow to import; it is running, the run list will say so once it holds the lock
        time.sleep(0.05)
    return process.pid
