"""A detached launch, watched from start to end: `python -m tuneterm.engine.launch.supervisor RUN_DIR -- COMMAND...`.

A run started detached with a launch (engine/launch/command.py) runs its command, `accelerate launch ...` or a single
training process, under this small process, which outlives it:
- it holds the run's lock for as long as any process of the run lives, so the run counts as running until all are
  gone, and `tuneterm stop` returns only then;
- SIGTERM, SIGINT or SIGHUP (a scheduler, `kill`, a shutting-down machine) asks the run to stop as `tuneterm stop`
  does, through the control channel, so that every process stops at the same step with a checkpoint; a second one
  kills the launch at once;
- when the command ends without the run having said how it ended (a process was killed, ran out of memory outside
  Python, or another failed and took it down), it writes RunFailed with the rank and exit code the launcher
  reported, and where its output is.
The command runs in a session of its own and is told to end when this process does, so that nothing of the run
is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from tuneterm.engine.events import EVENTS_FILE, EventLog, RunFailed, RunFinished, iter_events
from tuneterm.engine.launch.channel import CONTROL_FILE, send
from tuneterm.engine.launch.detach import LOG_FILE
from tuneterm.engine.launch.distributed import CONTROL_FROM_VARIABLE, SUPERVISED_VARIABLE
from tuneterm.engine.launch.signals import NAMES, STOPPING_SIGNALS
from tuneterm.engine.rundir.layout import CONFIG_FILE, holding_run_lock, last_complete_checkpoint

LAUNCH_FAILED = "LaunchFailed"
TAIL_BYTES = 64 * 1024
# torchrun's summary of a failed launch names the first process that failed.
_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL)


def supervise(run_dir: Path, command: list[str], env: dict[str, str] | None = None, echo: bool = False) -> int:
    """Run the command (with `env` added to the environment) to its end and return its exit code, reporting an end
    the run did not report itself. Its output goes to RUN_DIR/train.log, and with `echo` to this process's too."""
    events, control = run_dir / EVENTS_FILE, run_dir / CONTROL_FILE
    start = events.stat().st_size if events.exists() else 0
    with holding_run_lock(run_dir), open(run_dir / LOG_FILE, "ab", buffering=0) as log:
        # Requests from now on count, made while the command starts too (`tuneterm stop` sees a live run).
        environment = {**os.environ, **(env or {}), SUPERVISED_VARIABLE: "1",
                       CONTROL_FROM_VARIABLE: str(control.stat().st_size if control.exists() else 0)}
        process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_end_with_parent)
        copying = threading.Thread(target=_copy_output, args=(process, log, echo), daemon=True)
        copying.start()
        with _SignalsStopTheRun(run_dir, process) as signals:
            code = process.wait()
        _end_what_is_left(process.pid)  # and so the last of the output
        copying.join()
        if code != 0 and not _ended_since(events, start):
            reason = "aborted by a second signal" if signals.aborted else _what_happened(run_dir / LOG_FILE, code)
            checkpoint, _ = last_complete_checkpoint(run_dir)
            again = (f"continue from {checkpoint.name} with: tuneterm train --resume {run_dir}" if checkpoint
                     else f"start it again with: tuneterm train {run_dir / CONFIG_FILE}")
            with EventLog(events) as emit:
                emit(RunFailed(reason=f"{reason}; {again}", error_type=LAUNCH_FAILED, log_path=str(run_dir / LOG_FILE),
                               last_good_checkpoint=str(checkpoint) if checkpoint else None))
    return code


def _copy_output(process: subprocess.Popen[bytes], log: BinaryIO, echo: bool) -> None:
    """What the command's processes write, into the log (and onto this terminal) until the last of them is gone."""
    assert process.stdout is not None  # a pipe, as asked
    while chunk := os.read(process.stdout.fileno(), 1 << 16):
        log.write(chunk)
        if echo:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()


def _end_with_parent() -> None:
    """In the command's process, before it starts: SIGTERM when this supervisor dies, even by kill -9 (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _SignalsStopTheRun:
    """While held, the first signal asks the run to stop after its step; the next kills the command's session."""

    def __init__(self, run_dir: Path, process: subprocess.Popen[bytes]):
        self.run_dir, self.process = run_dir, process
        self.asked = self.aborted = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = NAMES.get(signum, f"signal {signum}")
        if not self.asked:
            self.asked = True
            send(self.run_dir, "stop", reason=name)
            print(f"{name}: stopping after the current step and saving a checkpoint (again to abort now)", flush=True)
            return
        self.aborted = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> _SignalsStopTheRun:
        self.previous = {number: signal.signal(number, self._handle) for number in STOPPING_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def _end_what_is_left(group: int, grace_seconds: float = 30.0) -> None:
    """Processes of the command's session that outlived it (workers of a launcher killed outright): ended, so that
    none writes into the run after its end is reported."""
    deadline = time.monotonic() + grace_seconds
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
        while time.monotonic() < deadline:
            os.killpg(group, 0)
            time.sleep(0.2)
        os.killpg(group, signal.SIGKILL)


def _ended_since(events: Path, offset: int) -> bool:
    """Whether the run wrote its own end (RunFinished or RunFailed) after `offset`; a line that holds no event is
    said on this process's output (train.log) and gone past."""
    if not events.exists():
        return False
    return any(isinstance(event, (RunFinished, RunFailed)) for event in iter_events(events, offset=offset))


def _what_happened(log: Path, code: int) -> str:
    """The failure as the launcher reported it in the log: which rank, with what exit code or signal."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        tail = ""
    causes = _ROOT_CAUSE.findall(tail)
    if causes:
        rank, exit_code = causes[-1]
        return f"the process of rank {rank} {_ended(int(exit_code))}; its output is in {log}"
    return f"the run's command {_ended(code)} before the run ended; its output is in {log}"


def _ended(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name
    oom = " (often the kernel's out-of-memory killer: see dmesg)" if name == "SIGKILL" else ""
    return f"was killed by {name}{oom}"


if __name__ == "__main__":  # started detached (engine/launch/detach.py), its own output already going to train.log
    exit_code = supervise(Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:])
    raise SystemExit(exit_code if exit_code >= 0 else 128 - exit_code)  # killed by signal N: 128 + N, as shells say
