"""Runs that outlive the terminal: detached runs followed from a new monitor and stopped from any shell, and an
in-app run whose terminal disappears."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import yaml

from tests.helpers import SLOW_STEPS, Terminal, logged_step, wait_for, with_changes
from tuneterm.cli import main
from tuneterm.engine.after.report import report_of
from tuneterm.engine.events import RunFinished
from tuneterm.engine.run.plans import resume_run
from tuneterm.engine.run.runner import run
from tuneterm.engine.rundir.layout import MARKER_FILE, is_live
from tuneterm.engine.rundir.runs import summarise_run


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def long_run(base_config: dict) -> dict:
    config = copy.deepcopy(base_config)
    config["training"].update(max_steps=300, eval_steps=50, per_device_train_batch_size=2,
                              gradient_accumulation_steps=1)
    return config


async def test_a_detached_run_goes_on_alone_and_a_new_monitor_follows_it_to_the_end(
        base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.ui.conftest import make_services, screen_of, wait_until
    from tuneterm.ui.app import Opening, make_app
    from tuneterm.ui.screens.monitor import MonitorScreen

    base_config["training"]["num_train_epochs"] = 1
    assert main(["train", str(write_config(tmp_path, base_config)), "--detach"]) == 0
    out = capsys.readouterr().out
    run_dir = Path(base_config["training"]["output_dir"])
    assert f"Run directory: {run_dir}" in out and f"tuneterm monitor {run_dir}" in out
    # The process that started it has returned; the run goes on in its own session. A new monitor attaches.
    app = make_app(make_services(run_dir.parent), Opening("monitor", run_dir=run_dir))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        monitor = screen_of(app, MonitorScreen)
        await wait_until(pilot, lambda: monitor.view.result is not None, timeout=180, what="the detached run's end")
        assert isinstance(monitor.view.result, RunFinished) and monitor.view.result.status == "completed"
        assert monitor.view.step == monitor.view.total_steps
    assert (run_dir / "train.log").is_file() and "Run completed" in (run_dir / "train.log").read_text()


def test_tuneterm_stop_stops_a_detached_run_with_a_checkpoint_that_resumes(
        base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = long_run(base_config)
    assert main(["train", str(write_config(tmp_path, config)), "--detach"]) == 0
    run_dir = Path(config["training"]["output_dir"])
    wait_for(lambda: logged_step(run_dir) >= 5, what="five steps")
    running = summarise_run(run_dir)
    assert running is not None and running.status == "running"
    assert main(["stop", str(run_dir)]) == 0
    out = capsys.readouterr().out
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "stopped" and 5 <= summary.step < 300
    assert f"Stopped at step {summary.step}" in out
    assert (run_dir / f"checkpoint-{summary.step}" / MARKER_FILE).is_file()
    assert main(["stop", str(run_dir)]) == 1, "a run that is not running says so"
    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "completed" and result.global_step == 300


def test_an_in_app_run_whose_terminal_hangs_up_stops_with_a_checkpoint_that_resumes(base_config: dict,
                                                                                    tmp_path: Path) -> None:
    config = with_changes(long_run(base_config), training={"max_steps": 60})  # slow steps: 24 s or more
    run_dir = Path(config["training"]["output_dir"])
    with Terminal([str(write_config(tmp_path, config))], patch=SLOW_STEPS) as terminal:
        # The schedule is shown once the data is read: the plan is whole and ctrl+r launches.
        wait_for(lambda: terminal.shows(b"Ready to launch") and terminal.shows(b"eval examples"),
                 what="the review step with the data read")
        terminal.type(b"\x12")  # ctrl+r: launch, in the app (not over SSH, so not detached)
        wait_for(lambda: logged_step(run_dir) >= 3, what="three steps")
        assert is_live(run_dir)
        terminal.process.send_signal(signal.SIGHUP)
        terminal.process.wait(120)
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "stopped", summary
    assert (run_dir / f"checkpoint-{summary.step}" / MARKER_FILE).is_file()
    report = report_of(run_dir)  # what its summary and run card say: why, and that it can go on
    assert report.why_it_ended == "stopped by SIGHUP (the terminal went away), with a checkpoint to resume from"
    assert report.resumable
    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "completed"
