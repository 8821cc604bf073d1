"""The last step is the last, whatever interrupts the run around it, and a look at a run never changes it.

A run killed while saving its last step resumes to "completed" without another step (the Trainer, resumed at its
step limit mid-epoch, would train one step before checking it); a stop asked for once the last step is done leaves
the run completed; an evaluation asked for by hand is reported but does not count against early stopping's
patience; a checkpoint asked for now is written at the step the request names.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.faults.conftest import hang_when, kill, start_training, steps_after_the_last_start, write_config
from tests.helpers import events_of, noise_chat, wait_for, with_changes
from tuneterm.config import config_from_mapping
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    CheckpointSaved,
    EvalFinished,
    Event,
    PhaseStarted,
    RunFinished,
    StepLogged,
)
from tuneterm.engine.run.plans import new_run, resume_run
from tuneterm.engine.run.runner import run
from tuneterm.engine.rundir.runs import summarise_run
from tuneterm.errors import RunDirError

LAST_STEP = 7
"""Mid-epoch (10 steps make an epoch of the base config's data): resumed there, the Trainer's loop would go on."""
ADAPTER = "adapter_model.safetensors"


@pytest.fixture
def ends_mid_epoch(base_config: dict) -> dict:
    """No eval split (the final adapter is the last checkpoint's) and a constant rate: one more step would change
    the adapter."""
    config = with_changes(base_config, training={"max_steps": LAST_STEP, "eval_steps": 3, "save_steps": 3,
                                                 "warmup_steps": 0, "lr_scheduler_type": "constant"})
    config["data"] = {"train": base_config["data"]["train"], "val_size": 0}
    return config


def _same_tensors(first: Path, second: Path) -> bool:
    a, b = load_file(str(first)), load_file(str(second))
    return a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)


def test_a_run_killed_while_saving_its_last_step_mid_epoch_resumes_to_completed_without_another_step(
        ends_mid_epoch: dict, tmp_path: Path) -> None:
    run_dir = Path(ends_mid_epoch["training"]["output_dir"])
    flag = tmp_path / "saving-the-adapter"
    process = start_training(write_config(tmp_path / "run.yaml", ends_mid_epoch),
                             hang_when("tuneterm.engine.run.runner.save_adapter", "True", str(flag)))
    wait_for(flag.exists, what="the last save")
    kill(process)
    process.wait(30)
    last = run_dir / f"checkpoint-{LAST_STEP}"
    assert (last / ADAPTER).is_file()
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "interrupted"

    plan = resume_run(run_dir)
    assert plan.resume_from == last
    result = run(plan)
    assert isinstance(result, RunFinished) and result.status == "completed", result
    assert result.global_step == LAST_STEP
    assert steps_after_the_last_start(run_dir) == [], "a run resumed at its last step trains no further"
    assert _same_tensors(run_dir / ADAPTER, last / ADAPTER), "the adapter is the last checkpoint's, unchanged"
    with pytest.raises(RunDirError, match="already completed"):
        resume_run(run_dir)


@pytest.mark.parametrize("when", ["the last checkpoint", "the final save"])
def test_a_stop_asked_after_the_last_step_leaves_the_run_completed(ends_mid_epoch: dict, when: str) -> None:
    plan = new_run(config_from_mapping(ends_mid_epoch))
    control = RunControl()

    def after_the_last_step(event: Event) -> None:
        if (isinstance(event, CheckpointSaved) and event.step == LAST_STEP and when == "the last checkpoint"
                or isinstance(event, PhaseStarted) and event.phase == "saving" and when == "the final save"):
            control.request_stop("a stop after the last step")

    result = run(plan, after_the_last_step, control)
    assert control.stop_requested
    assert isinstance(result, RunFinished) and result.status == "completed", result
    assert result.global_step == LAST_STEP
    with pytest.raises(RunDirError, match="already completed"):
        resume_run(plan.run_dir)


def _early_stopping_run(base_config: dict, data_folder: Path, output_dir: Path) -> dict:
    """Random answers: the eval loss turns up within a few steps and early stopping (patience 2) fires."""
    return with_changes(base_config, data=noise_chat(data_folder), lora={"r": 32, "lora_alpha": 64},
                        training={"learning_rate": 2e-2, "num_train_epochs": 40, "per_device_train_batch_size": 4,
                                  "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 2,
                                  "warmup_steps": 0, "lr_scheduler_type": "constant", "save_total_limit": 100,
                                  "output_dir": str(output_dir)})


def test_an_evaluation_asked_for_by_hand_is_reported_but_does_not_count_against_patience(
        base_config: dict, tmp_path: Path) -> None:
    untouched = run(new_run(config_from_mapping(_early_stopping_run(base_config, tmp_path, tmp_path / "untouched"))))
    assert isinstance(untouched, RunFinished) and untouched.status == "early_stopped", untouched

    config = _early_stopping_run(base_config, tmp_path, tmp_path / "looked-at")
    plan = new_run(config_from_mapping(config))
    control = RunControl()
    asked_at = untouched.global_step - 3  # odd: between two scheduled evaluations, late enough to be worse

    def look(event: Event) -> None:
        if isinstance(event, StepLogged) and event.step == asked_at - 1:
            control.request_evaluate()

    looked_at = run(plan, look, control)
    assert isinstance(looked_at, RunFinished) and looked_at.status == "early_stopped", looked_at
    manual = [e for e in events_of(plan.run_dir) if isinstance(e, EvalFinished) and e.step == asked_at]
    assert manual, "the evaluation asked for is reported"
    assert looked_at.global_step == untouched.global_step, "patience is the scheduled evaluations' alone"
    assert looked_at.best_checkpoint is not None and untouched.best_checkpoint is not None
    assert Path(looked_at.best_checkpoint).name == Path(untouched.best_checkpoint).name
    assert looked_at.best_eval_loss == untouched.best_eval_loss


def test_save_now_writes_the_checkpoint_of_the_step_it_names(base_config: dict) -> None:
    config = copy.deepcopy(base_config)
    config["training"].update(eval_steps=4, num_train_epochs=1, save_total_limit=100)
    plan = new_run(config_from_mapping(config))
    control = RunControl()
    named: list[int | None] = []

    def save_now(event: Event) -> None:
        if isinstance(event, StepLogged) and event.step == 2:
            named.append(control.request_save())

    result = run(plan, save_now, control)
    assert isinstance(result, RunFinished) and result.status == "completed"
    assert named and named[0] is not None, "the request names the step its checkpoint is saved at"
    saved = [e.step for e in events_of(plan.run_dir) if isinstance(e, CheckpointSaved)]
    assert named[0] in saved and (plan.run_dir / f"checkpoint-{named[0]}" / ADAPTER).is_file(), (named, saved)
    assert named[0] % 4, "between scheduled checkpoints"
