"""Faults on purpose: runs killed, signalled, starved of memory or disk, fed NaN, resumed from damaged checkpoints.

Runs that must be killed or signalled run `tuneterm train` in a child process; a few lines of Python given to the
child (a patch) make it slow or make it fail where the test needs it to. The other faults are injected in
process with monkeypatch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, events_of, with_changes
from tuneterm.engine.events import RunStarted, StepLogged


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# Child-process patches --------------------------------------------------------------------------------------------

def hang_when(function: str, condition: str, flag: str) -> str:
    """Patch `module.name` so that when `condition` holds (names: path, calls) it writes the flag file and hangs."""
    module, name = function.rsplit(".", 1)
    return f"""
import importlib, pathlib, time
_module = importlib.import_module({module!r})
_original = getattr(_module, {name!r})
_calls = {{"n": 0}}
def _hanging(*args, **kwargs):
    _calls["n"] += 1
    path, calls = pathlib.Path(str(args[-1] if args else "")), _calls["n"]
    if {condition}:
        pathlib.Path({flag!r}).write_text(str(path))
        time.sleep(120)
    return _original(*args, **kwargs)
setattr(_module, {name!r}, _hanging)
"""


def start_training(config: Path, patch: str = "", *arguments: str) -> subprocess.Popen[str]:
    code = (f"import sys\n{patch}\nfrom tuneterm.cli import main\n"
            f"sys.exit(main(['train', {str(config)!r}, *{list(arguments)!r}]))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)


def steps_after_the_last_start(run_dir: Path) -> list[int]:
    """The steps the run logged since it last started (a resume included): what it trained after that start."""
    log = events_of(run_dir)
    start = max(i for i, e in enumerate(log) if isinstance(e, RunStarted))
    return [e.step for e in log[start:] if isinstance(e, StepLogged)]


def kill(process: subprocess.Popen[str], signum: int = signal.SIGKILL) -> None:
    os.kill(process.pid, signum)


@pytest.fixture
def tiny_run(base_config: dict) -> dict:
    """The base config with checkpoints every 2 steps: a few seconds on a CPU, several checkpoints."""
    return with_changes(base_config, training={"eval_steps": 2, "num_train_epochs": 1})


def finished_event(run_dir: Path) -> dict:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return json.loads(lines[-1])
