"""The supervisor of a detached launch, driven by small stand-in commands: it reports an end the run did not report
(naming the rank and exit code the launcher gave), leaves a reported end alone, holds the run's lock throughout,
turns a signal into a stop request, aborts on the second, and leaves no process of the command behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import ROOT, wait_for
from tuneterm.engine.events import RunFailed, RunFinished, read_events
from tuneterm.engine.launch.supervisor import LAUNCH_FAILED, supervise
from tuneterm.engine.rundir.layout import is_live

TORCHRUN_SUMMARY = textwrap.dedent("""\
    torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
    ============================================================
    tuneterm FAILED
    ------------------------------------------------------------
    Failures:
    [1]:
      time      : 2026-11-23_14:39:56
      host      : gpu-box
      rank      : 0 (local_rank: 0)
      exitcode  : -15 (pid: 2703)  (SIGTERM)
    ------------------------------------------------------------
    Root Cause (first observed failure):
    [0]:
      time      : 2026-11-23_14:39:56
      host      : gpu-box
      rank      : 3 (local_rank: 3)
      exitcode  : -9 (pid: 2704)  (SIGKILL)
    ============================================================
    """)


def stand_in(script: str) -> list[str]:
    """A command that runs `script` with the run directory as RUN."""
    return [sys.executable, "-c", "import os, sys, json, time\nfrom pathlib import Path\n"
            "RUN = Path(os.environ['RUN'])\n" + textwrap.dedent(script)]


def supervised(run_dir: Path, script: str) -> int:
    return supervise(run_dir, stand_in(script), {"RUN": str(run_dir), "PYTHONPATH": str(ROOT)})


def last_event(run_dir: Path):  # noqa: ANN201
    return read_events(run_dir / "events.jsonl")[-1]


def test_a_process_killed_under_the_launcher_is_a_failed_run_naming_its_rank(tmp_path: Path) -> None:
    assert supervised(tmp_path, f"print({TORCHRUN_SUMMARY!r}); raise SystemExit(1)") == 1
    failed = last_event(tmp_path)
    assert isinstance(failed, RunFailed) and failed.error_type == LAUNCH_FAILED
    assert failed.reason == (f"the process of rank 3 was killed by SIGKILL (often the kernel's out-of-memory killer: "
                             f"see dmesg); its output is in {tmp_path / 'train.log'}; start it again with: tuneterm "
                             f"train {tmp_path / 'config.yaml'}")
    assert failed.log_path == str(tmp_path / "train.log")
    assert "Root Cause" in (tmp_path / "train.log").read_text(), "the command's output is kept"


def test_without_the_launchers_summary_the_exit_is_said_as_it_was(tmp_path: Path) -> None:
    assert supervised(tmp_path, "raise SystemExit(3)") == 3
    assert last_event(tmp_path).reason.startswith("the run's command exited with code 3 before the run ended")
    assert supervised(tmp_path, "os.kill(os.getpid(), 9)") == -9
    assert last_event(tmp_path).reason.startswith("the run's command was killed by SIGKILL")


def test_an_end_the_run_reported_itself_is_left_alone_and_the_lock_is_held_throughout(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl").write_text('{"action": "stop"}\n')
    script = """
        from tuneterm.engine.events import EventLog, RunFinished
        from tuneterm.engine.rundir.layout import is_live
        seen = {"live": is_live(RUN), "supervised": os.environ["TUNETERM_SUPERVISED"],
                "control_from": os.environ["TUNETERM_CONTROL_FROM"]}
        (RUN / "seen.json").write_text(json.dumps(seen))
        with EventLog(RUN / "events.jsonl") as emit:
            emit(RunFinished(status="completed", run_dir=str(RUN), global_step=7))
        raise SystemExit(1)
    """
    assert supervised(tmp_path, script) == 1
    assert json.loads((tmp_path / "seen.json").read_text()) == {"live": True, "supervised": "1",
                                                                "control_from": "19"}
    events = read_events(tmp_path / "events.jsonl")
    assert len(events) == 1 and isinstance(events[0], RunFinished)
    assert not is_live(tmp_path)


def test_what_the_command_leaves_running_is_ended(tmp_path: Path) -> None:
    script = """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        (RUN / "child").write_text(str(child.pid))
        raise SystemExit(1)
    """
    supervised(tmp_path, script)
    assert not _alive(int((tmp_path / "child").read_text()))


def start_supervisor(run_dir: Path, script: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "tuneterm.engine.launch.supervisor", str(run_dir), "--",
                                *stand_in(script)], cwd=ROOT, env={**os.environ, "RUN": str(run_dir)})
    wait_for((run_dir / "started").exists, 30, "the command's start")
    return process


def test_a_signal_asks_the_run_to_stop_through_its_channel(tmp_path: Path) -> None:
    (tmp_path / "control.jsonl").write_text('{"action": "stop", "reason": "long ago"}\n')
    script = """
        from tuneterm.engine.events import EventLog, RunFinished
        control = RUN / "control.jsonl"
        (RUN / "started").touch()
        while len(control.read_bytes()) <= int(os.environ["TUNETERM_CONTROL_FROM"]):
            time.sleep(0.05)
        request = json.loads(control.read_bytes()[int(os.environ["TUNETERM_CONTROL_FROM"]):])
        with EventLog(RUN / "events.jsonl") as emit:
            emit(RunFinished(status="stopped", run_dir=str(RUN), global_step=3))
        (RUN / "request.json").write_text(json.dumps(request))
    """
    supervisor = start_supervisor(tmp_path, script)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0
    request = json.loads((tmp_path / "request.json").read_text())
    assert (request["action"], request["reason"]) == ("stop", "SIGTERM")
    assert isinstance(last_event(tmp_path), RunFinished)


def test_a_second_signal_aborts_the_whole_launch(tmp_path: Path) -> None:
    script = """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        (RUN / "child").write_text(str(child.pid))
        (RUN / "started").touch()
        time.sleep(60)
    """
    supervisor = start_supervisor(tmp_path, script)
    supervisor.send_signal(signal.SIGTERM)
    control = tmp_path / "control.jsonl"
    wait_for(lambda: control.exists() and b'"stop"' in control.read_bytes(), 30, "the first signal, taken")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 128 + signal.SIGKILL
    assert last_event(tmp_path).reason.startswith("aborted by a second signal")
    assert not _alive(int((tmp_path / "child").read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
