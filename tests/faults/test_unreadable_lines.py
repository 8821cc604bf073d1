"""Lines a run's files should not hold, as a full disk, a killed writer or a stray editor leaves them: garbage
bytes and cut lines in events.jsonl, a JSON value that is not a request and an unfinished line in control.jsonl,
a config.yaml that is not a mapping. Each is skipped and said (file and line), and nothing after it is lost."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import pytest

from tests.faults.conftest import write_config
from tests.helpers import events_of, logged_step, wait_for
from tests.ui.conftest import RECORDED_RUN, make_services, screen_of, wait_until
from tuneterm.cli import main
from tuneterm.config import config_from_mapping
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    CheckpointSaved,
    Event,
    RunFinished,
    RunStarted,
    StepLogged,
    WarningIssued,
    event_from_json,
)
from tuneterm.engine.launch.handle import RunHandle
from tuneterm.engine.run.plans import new_run
from tuneterm.engine.run.runner import run
from tuneterm.engine.rundir.layout import holding_run_lock, is_live
from tuneterm.ui.follow import EventFollower

GARBAGE = b"\x00" * 24 + b"\xff\xfe"
"""What a full disk or a crash can leave where a line was being written: zeroed blocks, bytes that are no text."""
HALF_A_REQUEST = b'{"action": "sa'
UNREADABLE = re.compile(r"events\.jsonl line (\d+) is not a readable event \(skipped\): .+")


def damage_events(run_dir: Path) -> tuple[list[int], int]:
    """Garbage bytes as the third line and the fifth line cut in half, as a full disk leaves them, then a last
    line cut without its newline: the numbers of the two damaged complete lines, and the cut last line's."""
    path = run_dir / "events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, GARBAGE + b"\n")
    lines[4] = lines[4][:len(lines[4]) // 2] + b"\n"
    path.write_bytes(b"".join(lines) + lines[-1][:20])
    return [3, 5], len(lines) + 1


def said_on(stderr: str) -> list[int]:
    """The line numbers said unreadable, in the order said."""
    return [int(match.group(1)) for match in UNREADABLE.finditer(stderr)]


@pytest.fixture
def stopped_run(tiny_run: dict) -> Path:
    """A real run stopped after its third step, with a checkpoint to resume from."""
    control = RunControl()

    def stop_at_the_third_step(event: Event) -> None:
        if isinstance(event, StepLogged) and event.step >= 3:
            control.request_stop("the test")

    plan = new_run(config_from_mapping(copy.deepcopy(tiny_run)))
    result = run(plan, stop_at_the_third_step, control)
    assert isinstance(result, RunFinished) and result.status == "stopped", result
    return plan.run_dir


@pytest.fixture
def recorded_run(tmp_path: Path) -> Path:
    """The recorded 132-step run, copied into a runs directory of this test."""
    run_dir = tmp_path / "runs" / "recorded"
    shutil.copytree(RECORDED_RUN, run_dir)
    return run_dir


# events.jsonl --------------------------------------------------------------------------------------------------------

def test_a_damaged_run_still_resumes_saying_each_unreadable_line_once(
        stopped_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged, cut_last_line = damage_events(stopped_run)
    assert main(["train", "--resume", str(stopped_run)]) == 0
    stderr = capsys.readouterr().err
    # Said as the resume read the run; the cut last line once the resumed run had ended it, as its end read it.
    assert said_on(stderr) == [*damaged, cut_last_line], stderr
    assert "Traceback" not in stderr
    events = events_of(stopped_run)
    assert any(isinstance(e, RunFinished) and e.status == "stopped" for e in events), "the events after the damage"
    assert any(isinstance(e, RunStarted) and e.resumed_from for e in events), "not glued to the cut line"
    assert isinstance(events[-1], RunFinished) and events[-1].status == "completed"


def test_compare_reads_a_damaged_run_and_says_which_lines_it_skipped(
        stopped_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged, _ = damage_events(stopped_run)
    assert main(["compare", str(stopped_run)]) == 0
    out, err = capsys.readouterr()
    assert said_on(err) == damaged, err
    assert err.count("\n") == len(damaged), "one line each, no traceback"
    assert f"{stopped_run.name}: last train loss" in out


async def test_the_monitor_of_a_damaged_run_shows_it_with_the_skipped_lines_as_warnings(recorded_run: Path) -> None:
    from tuneterm.ui.app import Opening, make_app
    from tuneterm.ui.screens.monitor import MonitorScreen
    from tuneterm.ui.screens.summary import SummaryScreen

    damaged, _ = damage_events(recorded_run)
    app = make_app(make_services(recorded_run.parent), Opening("monitor", run_dir=recorded_run))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the summary")
        summary = screen_of(app, SummaryScreen)
        await wait_until(pilot, lambda: summary.report is not None, timeout=20, what="the run's report")
        assert summary.report is not None and summary.report.status == "completed"
        assert [int(m.group(1)) for w in summary.report.warnings if (m := UNREADABLE.fullmatch(w))] == damaged
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        monitor = screen_of(app, MonitorScreen)
        await wait_until(pilot, lambda: monitor.view.result is not None, timeout=20, what="the run's end")
        assert monitor.view.step == 132, "the events after the damaged lines"
        assert [int(m.group(1)) for w in monitor.view.warnings if (m := UNREADABLE.fullmatch(w))] == damaged


def test_a_live_runs_half_written_last_line_is_read_once_it_is_complete(recorded_run: Path) -> None:
    path = recorded_run / "events.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + GARBAGE + b"\n" + lines[3][:30])
    follower = EventFollower(recorded_run, lambda events, more: None, lambda: None)
    first = follower.read_new()
    assert [type(e) for e in first[:3]] == [type(event_from_json(line)) for line in lines[:3]]
    assert [e.message for e in first[3:] if isinstance(e, WarningIssued)] == [
        "events.jsonl line 4 is not a readable event (skipped): not text (invalid start byte at byte 24)"]
    assert len(first) == 4, "the line still being written is no error"
    with open(path, "ab") as handle:
        handle.write(lines[3][30:])
    assert follower.read_new() == [event_from_json(lines[3])]


# config.yaml ---------------------------------------------------------------------------------------------------------

def test_the_run_list_shows_a_run_whose_config_is_not_a_mapping_with_what_is_wrong(
        recorded_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = recorded_run.parent / "broken"
    shutil.copytree(recorded_run, broken)
    (broken / "config.yaml").write_text("- method: lora\n- a list where the settings should be\n")
    assert main(["runs", "--plain", "--runs-dir", str(recorded_run.parent)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"completed +132/132 .* {re.escape(str(recorded_run))}\n", out), out
    assert re.search(rf"completed +132/132 .* \? +{re.escape(str(broken))}\n +! config\.yaml is not a mapping of "
                     r"settings \(it holds a list\)\n", out), out


# control.jsonl and tuneterm stop ------------------------------------------------------------------------------------

def _detached(config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, int]:
    """A run started with `tuneterm train --detach`: its directory and the process it runs in."""
    assert main(["train", str(write_config(tmp_path / "run.yaml", config)), "--detach"]) == 0
    pid = int(re.search(r"Running detached \(process (\d+)\)", capsys.readouterr().out).group(1))  # type: ignore
    return Path(config["training"]["output_dir"]), pid


def test_a_non_object_line_and_a_half_line_in_control_jsonl_leave_a_detached_run_stoppable(
        base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = copy.deepcopy(base_config)
    config["training"].update(max_steps=2000, eval_steps=1000, per_device_train_batch_size=2,
                              gradient_accumulation_steps=1)
    run_dir, pid = _detached(config, tmp_path, capsys)
    control = run_dir / "control.jsonl"
    try:
        wait_for(lambda: logged_step(run_dir) >= 3, what="three steps")
        with open(control, "ab") as handle:
            handle.write(b"[1, 2]\n")
        RunHandle(run_dir).save_now()
        wait_for(lambda: any(isinstance(e, CheckpointSaved) for e in events_of(run_dir)), timeout=60,
                 what="the save asked after a line that is no request")
        with open(control, "ab") as handle:
            handle.write(HALF_A_REQUEST)  # a writer killed half-way through its line
        assert main(["stop", str(run_dir), "--timeout", "120"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"Stopped at step \d+ with a checkpoint", out), out
        lines = control.read_bytes().splitlines()
        warnings = [e.message for e in events_of(run_dir) if isinstance(e, WarningIssued) and e.source
                    == "control channel"]
        assert warnings == [
            f"control.jsonl line {lines.index(b'[1, 2]') + 1} is not a readable request (skipped): "
            "a JSON list, not an object",
            f"control.jsonl line {lines.index(HALF_A_REQUEST) + 1} is not a readable request (skipped): "
            "not JSON (Unterminated string starting at: line 1 column 12 (char 11))"]
        assert b'"action": "stop"' in lines[-1], "the stop is a line of its own"
    finally:
        if is_live(run_dir):
            os.killpg(pid, signal.SIGKILL)


def test_tuneterm_stop_tells_the_truth_about_a_run_that_completed_without_acting_on_it(
        recorded_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = recorded_run / "events.jsonl"
    lines = events.read_bytes().splitlines(keepends=True)
    events.write_bytes(b"".join(lines[:-1]))  # live: no end yet
    holding, ending = threading.Event(), threading.Event()

    def a_run_that_never_reads_its_requests() -> None:
        with holding_run_lock(recorded_run):
            holding.set()
            ending.wait(2.0)
            with open(events, "ab") as handle:
                handle.write(lines[-1])

    threading.Thread(target=a_run_that_never_reads_its_requests, daemon=True).start()
    holding.wait(10)
    assert main(["stop", str(recorded_run), "--timeout", "30"]) == 1
    out, err = capsys.readouterr()
    assert "Stopped" not in out
    assert err.strip() == f"{recorded_run} never acted on the request to stop: it completed all its steps at step 132"
