"""A run killed at the worst moment, or signalled, keeps its work and resumes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.faults.conftest import hang_when, kill, start_training, steps_after_the_last_start, write_config
from tests.helpers import SLOW_STEPS, events_of, logged_step, noise_chat, wait_for, with_changes
from tuneterm.engine.events import RunFinished, RunStarted
from tuneterm.engine.run.plans import resume_run
from tuneterm.engine.run.runner import run
from tuneterm.engine.rundir.layout import MARKER_FILE
from tuneterm.engine.rundir.runs import summarise_run


def test_kill_9_while_a_checkpoint_is_saved_then_resume(tiny_run: dict, tmp_path: Path) -> None:
    run_dir = Path(tiny_run["training"]["output_dir"])
    flag = tmp_path / "saving"
    process = start_training(write_config(tmp_path / "run.yaml", tiny_run),
                             hang_when("tuneterm.engine.run.callback.mark_complete", "calls == 2", str(flag)))
    wait_for(flag.exists, what="the second checkpoint being saved")
    kill(process)
    process.wait(30)
    assert (run_dir / "checkpoint-2" / MARKER_FILE).is_file()
    assert (run_dir / "checkpoint-4").is_dir() and not (run_dir / "checkpoint-4" / MARKER_FILE).exists()
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "interrupted"

    plan = resume_run(run_dir)
    assert plan.resume_from == run_dir / "checkpoint-2"
    assert plan.skipped == ("checkpoint-4 skipped: it was never completed (the process stopped while saving it)",)
    events: list = []
    result = run(plan, events.append)
    assert isinstance(result, RunFinished) and result.status == "completed", result
    assert any("checkpoint-4 skipped" in getattr(e, "message", "") for e in events)
    steps = steps_after_the_last_start(run_dir)
    assert steps[0] == 3 and steps[-1] == result.global_step


def test_a_run_killed_while_saving_its_final_adapter_resumes_to_completed_without_more_steps(
        tiny_run: dict, tmp_path: Path) -> None:
    run_dir = Path(tiny_run["training"]["output_dir"])
    flag = tmp_path / "saving-final"
    process = start_training(write_config(tmp_path / "run.yaml", tiny_run),
                             hang_when("tuneterm.engine.run.runner.compare_saved", "True", str(flag)))
    wait_for(flag.exists, what="the final save")
    total = next(e.total_steps for e in events_of(run_dir) if isinstance(e, RunStarted))
    kill(process)
    process.wait(30)
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "interrupted"

    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "completed"
    assert result.global_step == total
    assert steps_after_the_last_start(run_dir) == [], "a completed run never trains past its last step"
    assert (run_dir / "adapter_check.json").is_file()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_that_resumes(tiny_run: dict, tmp_path: Path,
                                                                      signum: int) -> None:
    run_dir = Path(tiny_run["training"]["output_dir"])
    process = start_training(write_config(tmp_path / "run.yaml", tiny_run), SLOW_STEPS)
    wait_for(lambda: logged_step(run_dir) >= 3, what="three steps")
    kill(process, signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    finished = events_of(run_dir)[-1]
    assert isinstance(finished, RunFinished) and finished.status == "stopped"
    stopped_at = finished.global_step
    assert (run_dir / f"checkpoint-{stopped_at}" / MARKER_FILE).is_file()
    assert f"Continue it with: tuneterm train --resume {run_dir}" in out

    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "completed"
    assert steps_after_the_last_start(run_dir)[0] == stopped_at + 1


def test_a_second_signal_aborts_at_once_without_a_traceback(tiny_run: dict, tmp_path: Path) -> None:
    run_dir = Path(tiny_run["training"]["output_dir"])
    flag = tmp_path / "saving"
    slow_save = hang_when("tuneterm.engine.run.callback.mark_complete", "calls >= 2", str(flag))
    process = start_training(write_config(tmp_path / "run.yaml", with_changes(tiny_run, training={"eval_steps": 4})),
                             SLOW_STEPS + slow_save)
    wait_for(lambda: logged_step(run_dir) >= 5, what="five steps")
    kill(process, signal.SIGTERM)
    wait_for(flag.exists, what="the stop's checkpoint being saved")
    kill(process, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Aborted. Continue from the last complete checkpoint with: tuneterm train --resume" in err
    assert "Traceback" not in err
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "failed"  # the abort is recorded: RunFailed "interrupted"


def test_an_early_stopped_run_killed_while_saving_resumes_without_more_steps(base_config: dict,
                                                                              tmp_path: Path) -> None:
    config = with_changes(base_config, data=noise_chat(tmp_path),
                          lora={"r": 32, "lora_alpha": 64},
                          training={"learning_rate": 2e-2, "num_train_epochs": 40, "per_device_train_batch_size": 4,
                                    "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 2,
                                    "warmup_steps": 0, "lr_scheduler_type": "constant"})
    run_dir = Path(config["training"]["output_dir"])
    flag = tmp_path / "saving-final"
    process = start_training(write_config(tmp_path / "run.yaml", config),
                             hang_when("tuneterm.engine.run.runner.compare_saved", "True", str(flag)))
    wait_for(flag.exists, what="the final save")
    stopped_at = logged_step(run_dir)
    kill(process)
    process.wait(30)

    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "early_stopped"
    assert result.global_step == stopped_at
    assert steps_after_the_last_start(run_dir) == []


def test_a_killed_app_gives_the_terminal_back(tmp_path: Path) -> None:
    """kill (SIGTERM) ends the app as a quit does: the terminal leaves the app's screen and takes keys as before,
    with no `reset` needed; the exit status says a signal ended it."""
    from tests.helpers import Terminal

    with Terminal(["runs", "--runs-dir", str(tmp_path / "runs")], rows=24, columns=80) as terminal:
        wait_for(lambda: terminal.shows(b"No runs yet"), what="the start screen")
        drawn = len(terminal.screen)
        terminal.process.send_signal(signal.SIGTERM)
        assert terminal.process.wait(60) == 128 + signal.SIGTERM
        wait_for(lambda: b"\x1b[?1049l" in terminal.screen[drawn:], timeout=10,
                 what="the terminal's own screen back")
