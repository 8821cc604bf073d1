"""Real distributed runs: two processes on the CPU (gloo) training the tiny model through accelerate launch.

One run directory and one events.jsonl however many processes train; the step count the plan predicts for two
processes is the one the Trainer runs; a save-now request is carried out by every process and training goes on;
`tuneterm stop` stops every process at the same step with a checkpoint that resumes; a process that dies ends the
run as failed, naming it, instead of leaving the others waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, logged_step, wait_for, with_changes
from tuneterm.cli import main
from tuneterm.config import config_from_mapping
from tuneterm.engine.events import CheckpointSaved, RunFailed, RunFinished, RunStarted, StepLogged, read_events
from tuneterm.engine.launch.channel import send
from tuneterm.engine.launch.command import LaunchSpec, prepare_launch
from tuneterm.engine.launch.detach import start_detached
from tuneterm.engine.run.plans import new_run
from tuneterm.engine.rundir.layout import MARKER_FILE, is_live
from tuneterm.engine.rundir.runs import summarise_run
from tuneterm.plan import schedule

TWO_CPU_PROCESSES = LaunchSpec("ddp", cpu_processes=2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(pid: int) -> bool:
    """Running (a process that ended but that its parent, this test for a supervisor, has not reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def saved(run_dir: Path) -> list[int]:
    """The steps of the checkpoints saved so far."""
    return [e.step for e in read_events(run_dir / "events.jsonl") if isinstance(e, CheckpointSaved)]


def started(run_dir: Path) -> list[RunStarted]:
    path = run_dir / "events.jsonl"
    return [e for e in read_events(path) if isinstance(e, RunStarted)] if path.exists() else []


def test_two_processes_under_accelerate_launch_train_one_run_with_the_predicted_steps(
        base_config: dict, tiny_model: Path, tmp_path: Path) -> None:
    config = with_changes(base_config, training={"num_train_epochs": 1})
    del config["training"]["output_dir"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = tmp_path / "runs"
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(free_port())]
    result = subprocess.run([*accelerate, "-m", "tuneterm", "train", str(path), "--runs-dir", str(runs)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    run_dirs = list(runs.iterdir())
    assert len(run_dirs) == 1, "the main process made the run directory, the other trained in it"
    run_dir = run_dirs[0]
    assert result.stdout.count("Run directory:") == 1, "the main process speaks for the run"
    events = read_events(run_dir / "events.jsonl")
    (start,) = [e for e in events if isinstance(e, RunStarted)]
    assert start.world_size == 2 and start.strategy == "ddp"
    assert sorted(p["rank"] for p in start.processes) == [0, 1] and len({p["pid"] for p in start.processes}) == 2
    # 160 examples, micro-batch 8 on each of 2 processes, accumulation 2: 10 batches per process, 5 steps.
    predicted = schedule.total_steps(schedule.steps_per_epoch(160, 8, 2, world_size=2), 1)
    assert (start.train_examples, start.total_steps, predicted) == (160, 5, 5)
    assert schedule.total_steps(schedule.steps_per_epoch(160, 8, 2), 1) == 10, "alone it would be twice as many"
    assert [e.step for e in events if isinstance(e, StepLogged)] == [1, 2, 3, 4, 5], "no step logged twice"
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "completed" and finished.global_step == 5
    assert yaml.safe_load((run_dir / "trainer_state.json").read_text())["global_step"] == 5

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    before = base(tokens).logits
    tuned = PeftModel.from_pretrained(base, str(run_dir))
    assert not torch.allclose(tuned(tokens).logits, before), "the adapter two processes trained changes the model"


def test_save_now_and_tuneterm_stop_reach_every_process_of_a_detached_launch_and_the_run_resumes(
        base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = with_changes(base_config, training={"max_steps": 40, "per_device_train_batch_size": 2,
                                                  "gradient_accumulation_steps": 1, "eval_steps": 20,
                                                  "per_device_eval_batch_size": 16})
    plan = new_run(config_from_mapping(config))
    run_dir = plan.run_dir
    prepare_launch(run_dir, TWO_CPU_PROCESSES)
    supervisor = start_detached(run_dir)
    wait_for(lambda: logged_step(run_dir) >= 3, what="three steps")
    send(run_dir, "save")  # every process must take part in a save: one alone would wait for the other forever
    wait_for(lambda: saved(run_dir), what="the checkpoint asked for")
    [saved_at] = saved(run_dir)
    wait_for(lambda: logged_step(run_dir) > saved_at, what="training going on after the save")
    pids = [p["pid"] for p in started(run_dir)[0].processes]
    assert main(["stop", str(run_dir)]) == 0
    assert not any(alive(pid) for pid in (*pids, supervisor)), "every process is gone when tuneterm stop returns"
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "stopped" and 3 <= summary.step < 40
    assert (run_dir / f"checkpoint-{summary.step}" / MARKER_FILE).is_file()

    assert main(["train", "--resume", str(run_dir)]) == 0, "resumed under the launcher it was launched with"
    assert "accelerate launch --config_file" in capsys.readouterr().out
    events = read_events(run_dir / "events.jsonl")
    assert [e.world_size for e in events if isinstance(e, RunStarted)] == [2, 2]
    steps = [e.step for e in events if isinstance(e, StepLogged)]
    assert steps == list(range(1, 41)), "each step logged once, the resumed ones after the stopped ones"
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "completed" and finished.global_step == 40


def test_a_process_that_dies_fails_the_run_naming_it_instead_of_a_hang(base_config: dict, tmp_path: Path) -> None:
    config = with_changes(base_config, training={"max_steps": 500, "per_device_train_batch_size": 2,
                                                  "gradient_accumulation_steps": 1, "eval_steps": 250})
    run_dir = new_run(config_from_mapping(config)).run_dir
    prepare_launch(run_dir, TWO_CPU_PROCESSES)
    supervisor = start_detached(run_dir)
    wait_for(lambda: started(run_dir), what="the run's start")
    pids = {p["rank"]: p["pid"] for p in started(run_dir)[0].processes}
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: not is_live(run_dir), timeout=90, what="the run's end")
    failed = read_events(run_dir / "events.jsonl")[-1]
    assert isinstance(failed, RunFailed)
    assert failed.reason.startswith("the process of rank 1 was killed by SIGKILL"), failed.reason
    assert failed.log_path == str(run_dir / "train.log")
    # Every process gone, the supervisor last: it lets go of the run's lock just before it exits.
    wait_for(lambda: not any(alive(pid) for pid in (*pids.values(), supervisor)), timeout=30,
             what="every process of the run to exit")
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "failed"
