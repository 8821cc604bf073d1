"""Small helpers shared by the test modules."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tuneterm.engine.events import EVENTS_FILE, Event, StepLogged, read_events


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def wait_for(condition: Callable[[], object], timeout: float = 120.0, what: str = "") -> None:
    """Poll `condition` until it holds (for a process of its own: a detached run, an experiment); fail naming `what`
    after `timeout` seconds (the UI tests' wait_until waits on the app the same way)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.1)


def events_of(run_dir: Path) -> list[Event]:
    """The events a run has written so far (none before its events.jsonl exists)."""
    return read_events(run_dir / EVENTS_FILE) if (run_dir / EVENTS_FILE).is_file() else []


def logged_step(run_dir: Path) -> int:
    """The last step the run logged, 0 before its first."""
    steps = [e.step for e in events_of(run_dir) if isinstance(e, StepLogged)]
    return steps[-1] if steps else 0


def shared_by_the_workers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base directory of this test session, shared by its worker processes (pytest-xdist gives each worker a
    directory of its own inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(directory: Path, build: Callable[[Path], None]) -> Path:
    """`directory`, filled by `build` once however many processes ask for it at the same time: the first builds it
    under a lock beside it, the others wait, then take what it built. For files the tests only read."""
    built = directory.with_name(f"{directory.name}.built")
    with open(directory.with_name(f"{directory.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.is_file():
            shutil.rmtree(directory, ignore_errors=True)  # a build that failed half-way
            directory.mkdir(parents=True)
            build(directory)
            built.touch()
    return directory


TESTS = Path(__file__).parent
DATA = TESTS / "data"
"""Files the tests ship: broken datasets (data/bad) and real models' config.json (data/model_configs)."""
ROOT = TESTS.parent


def noise_chat(folder: Path) -> dict[str, str]:
    """16 training and 16 eval chats whose answers are random words: nothing in them generalises, so a high
    learning rate turns the eval loss up within a few steps and early stopping fires in seconds."""
    rng = random.Random(0)
    words = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima"]
    rows = [{"messages": [{"role": "user", "content": f"Code word {rng.randint(100, 999)}?"},
                          {"role": "assistant", "content": " ".join(rng.choices(words, k=6)) + "."}]}
            for _ in range(32)]
    return {"train": str(write_jsonl(folder / "t.jsonl", rows[:16])),
            "eval": str(write_jsonl(folder / "e.jsonl", rows[16:]))}


def with_changes(base: dict, **sections: object) -> dict:
    """A copy of a config mapping with some sections updated (a dict) or replaced (anything else)."""
    config = copy.deepcopy(base)
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


def two_recorded_runs(runs: Path) -> tuple[Path, Path]:
    """The recorded run twice, as two runs of one model in `runs` (named the way tuneterm names them): the second
    given another learning rate and micro-batch, with the values tuneterm derived differing as they would with them
    (its eval batch follows the micro-batch; it started on a busier machine, with one CPU thread)."""
    import shutil

    first, second = runs / "20261201-221907-model-lora", runs / "20261201-223015-model-lora"
    for run in (first, second):
        shutil.copytree(DATA / "recorded-run", run)
    config = second / "config.yaml"
    text = config.read_text()
    for old, new in (("learning_rate: 0.003", "learning_rate: 0.001"), ("per_device_train_batch_size: 8",
                                                                          "per_device_train_batch_size: 4"),
                     ("per_device_eval_batch_size: 8", "per_device_eval_batch_size: 4"),
                     ("cpu_threads: 2", "cpu_threads: 1")):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return first, second


SLOW_STEPS = """
import time, transformers
_step = transformers.Trainer.training_step
def _slow_step(self, *args, **kwargs):
    time.sleep(0.4)
    return _step(self, *args, **kwargs)
transformers.Trainer.training_step = _slow_step
"""
"""A patch for a child process that trains (tests/faults/conftest.py start_training, Terminal): each step takes
0.4 s more, so that a test acts while the run trains, and a run of a few dozen steps outlasts a busy machine's
delays without costing the test more than those steps."""


class Terminal:
    """tuneterm started in a pseudo-terminal of `rows` x `columns`, as a person's terminal runs it (not over SSH):
    everything it writes is read as it comes (a terminal that stops reading would block the app), into `screen`.
    `patch`: Python run in the process first (SLOW_STEPS). As a context manager, it kills the app at its end if the
    app is still running (a test that failed), then closes the terminal."""

    def __init__(self, arguments: list[str], rows: int = 30, columns: int = 100, patch: str = ""):
        import fcntl
        import os
        import pty
        import struct
        import subprocess
        import sys
        import termios
        import threading

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environment = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
        # COLUMNS and LINES would override the terminal's size (pytest-xdist's workers have them, at 80x24).
        for name in ("SSH_CONNECTION", "SSH_TTY", "COLUMNS", "LINES"):
            environment.pop(name, None)
        code = f"{patch}\nfrom tuneterm.cli import main\nraise SystemExit(main({arguments!r}))"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                                        env=environment, close_fds=True, start_new_session=True)
        os.close(slave)
        self.screen = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import os

        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen.extend(data)

    def shows(self, text: bytes) -> bool:
        """Whether the app has written `text` (escape sequences between its pieces aside)."""
        return text in self.screen.replace(b"\x1b[", b"")

    def type(self, keys: bytes) -> None:
        import os

        os.write(self.master, keys)

    def close(self) -> None:
        import os

        os.close(self.master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exception: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close()


# Work for worker processes (tuneterm.data.parallel), at module level so that a spawned process imports it.

def no_setup() -> None:
    return None


def doubled(state: None, item: int) -> tuple[int, int]:
    """A worker's result, and the process it came from."""
    return item * 2, os.getpid()


def forever(state: None, item: int) -> int:
    """A worker that never returns its item."""
    while True:
        time.sleep(0.01)


def doubled_slowly(item: int) -> tuple[int, int]:
    """The same in the process that hands out the work, slow enough that the workers get some of it."""
    time.sleep(0.02)
    return item * 2, os.getpid()
