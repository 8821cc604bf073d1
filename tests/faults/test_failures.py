"""Failures during training, injected where the real ones happen: each ends in a true report, a kept checkpoint
and what to do."""

from __future__ import annotations

import errno
import json
import math
import shutil
import threading
from pathlib import Path

import pytest

from tests.faults.conftest import events_of
from tests.helpers import noise_chat, with_changes, write_jsonl
from tuneterm.config import config_from_mapping
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    CheckpointSaved,
    EvalFinished,
    Event,
    EventSink,
    RunFailed,
    RunFinished,
    StepLogged,
)
from tuneterm.engine.run.plans import new_run, resume_run
from tuneterm.engine.run.runner import run
from tuneterm.engine.rundir.layout import MARKER_FILE, mark_complete
from tuneterm.errors import ConfigError, RunDirError


def start(config: dict) -> tuple:
    plan = new_run(config_from_mapping(config))
    events: list = []
    return plan, run(plan, events.append), events


def stop_at_step(control: RunControl, step: int) -> EventSink:
    """A sink that asks the run to stop once it has logged `step`."""
    def sink(event: Event) -> None:
        if isinstance(event, StepLogged) and event.step == step:
            control.request_stop("test")

    return sink


def test_a_full_disk_while_saving_is_said_and_the_last_good_checkpoint_kept(tiny_run: dict,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    saves = {"n": 0}
    original = torch.save

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if "optimizer.pt" in str(f):
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    plan, result, events = start(tiny_run)
    assert isinstance(result, RunFailed), result
    assert result.reason.startswith("The disk is full (no space left on device) while saving at step 4")
    assert "The last good checkpoint, checkpoint-2, is kept" in result.reason
    assert result.last_good_checkpoint == str(plan.run_dir / "checkpoint-2")
    assert (plan.run_dir / "checkpoint-2" / MARKER_FILE).is_file()
    assert not (plan.run_dir / "checkpoint-4" / MARKER_FILE).exists()
    assert events_of(plan.run_dir)[-1] == result, "the failure is recorded as an event"
    assert "No space left on device" in (plan.run_dir / "error.log").read_text()
    resumed = resume_run(plan.run_dir)
    assert resumed.resume_from == plan.run_dir / "checkpoint-2"


def _nan_from_step(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """From `step` on the loss is NaN and so is a trainable weight, as after an update that blew up."""
    import torch
    import transformers

    original = transformers.Trainer.training_step

    def training_step(self, model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        loss = original(self, model, *args, **kwargs)
        if self.state.global_step + 1 >= step:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
            return torch.full_like(loss, float("nan"))
        return loss

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)


def test_a_loss_that_becomes_nan_stops_the_run_and_nothing_non_finite_is_saved(
        tiny_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_from_step(5, monkeypatch)
    plan, result, events = start(with_changes(tiny_run, training={"learning_rate": 1e-2}))
    assert isinstance(result, RunFailed) and result.error_type == "RunFailure", result
    assert result.reason.startswith("Training stopped at step 5: the loss became NaN or infinite. Likely causes: "
                                    "the learning rate 0.01 is high")
    assert "The last good checkpoint, checkpoint-4, is kept" in result.reason
    assert result.remedies[0]["set"] == {"training.learning_rate": 2e-4}, "the guides' start, far below 0.01"
    assert not (plan.run_dir / "checkpoint-6").exists(), "no checkpoint after the NaN"
    assert not (plan.run_dir / "adapter_model.safetensors").exists(), "no non-finite adapter"
    logged = [e.loss for e in events if isinstance(e, StepLogged)]
    assert all(loss != 0.0 for loss in logged), "a NaN is never logged as 0.0"
    for event in events:
        if isinstance(event, CheckpointSaved):  # every checkpoint kept holds numbers only
            from safetensors.torch import load_file

            tensors = load_file(str(Path(event.path) / "adapter_model.safetensors"))
            assert all(bool(t.isfinite().all()) for t in tensors.values())
    if result.last_good_checkpoint:
        assert Path(result.last_good_checkpoint, MARKER_FILE).is_file()


def _raise_oom() -> None:
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 23.64 GiB total capacity)")


def test_out_of_memory_in_training_names_what_overflowed_and_keeps_the_effective_batch(
        tiny_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    original = transformers.Trainer.training_step

    def step(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if self.state.global_step >= 3:
            _raise_oom()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    plan, result, _ = start(tiny_run)
    assert isinstance(result, RunFailed)
    assert result.reason.startswith("Out of GPU memory during training at step 3. The plan's largest parts: ")
    assert "The last good checkpoint, checkpoint-2, is kept" in result.reason
    changes = [r["set"] for r in result.remedies]
    assert {"training.per_device_train_batch_size": 4, "training.gradient_accumulation_steps": 4} in changes
    assert {"training.gradient_checkpointing": True} in changes
    for remedy in result.remedies:  # each keeps the effective batch of 8 x 2
        micro = remedy["set"].get("training.per_device_train_batch_size", 8)
        assert micro * remedy["set"].get("training.gradient_accumulation_steps", 2) == 16


def test_out_of_memory_in_evaluation_never_changes_the_training_batch(tiny_run: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import trl

    original = trl.SFTTrainer.prediction_step

    def predict(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if self.state.global_step >= 4:
            _raise_oom()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "prediction_step", predict)
    plan, result, _ = start(tiny_run)
    assert isinstance(result, RunFailed)
    assert result.reason.startswith("Out of GPU memory during evaluation at step 4")
    assert result.remedies == [{"set": {"training.per_device_eval_batch_size": 4}, "resume": True,
                                "why": "evaluation holds a whole eval batch at once; a smaller one does not change "
                                       "training at all"}]
    monkeypatch.setattr(trl.SFTTrainer, "prediction_step", original)
    resumed = resume_run(plan.run_dir, ["training.per_device_eval_batch_size=4"])
    finished = run(resumed)
    assert isinstance(finished, RunFinished) and finished.status == "completed"


def test_when_no_evaluation_beats_the_baseline_nothing_is_called_best(base_config: dict, tmp_path: Path) -> None:
    # Train on noise, evaluate on the real questions: every step makes the eval loss worse.
    import random

    rng = random.Random(1)
    noise = [{"messages": [{"role": "user", "content": "".join(rng.choices("xyzw", k=12))},
                           {"role": "assistant", "content": "".join(rng.choices("qjkv ", k=40))}]}
             for _ in range(48)]
    config = with_changes(base_config, data={"train": str(write_jsonl(tmp_path / "noise.jsonl", noise))},
                          training={"learning_rate": 3e-2, "eval_steps": 3, "num_train_epochs": 2,
                                    "warmup_steps": 0, "lr_scheduler_type": "constant"})
    plan, result, events = start(config)
    evals = [e for e in events if isinstance(e, EvalFinished)]
    assert evals[0].step == 0 and all(e.eval_loss > evals[0].eval_loss for e in evals[1:]), [e.eval_loss for e in evals]
    assert isinstance(result, RunFinished)
    assert result.outcome == "worse_than_baseline"
    assert result.best_eval_loss is None and result.best_checkpoint is None
    assert result.baseline_eval_loss == pytest.approx(evals[0].eval_loss)
    assert all(e.best_eval_loss is None for e in evals), "no evaluation is reported as best"
    assert any("training made the eval loss worse" in getattr(e, "message", "") for e in events)


def test_rotation_keeps_the_best_checkpoint_and_the_last(base_config: dict, tmp_path: Path) -> None:
    config = with_changes(base_config, data=noise_chat(tmp_path),
                          lora={"r": 32, "lora_alpha": 64},
                          training={"learning_rate": 2e-2, "num_train_epochs": 40, "per_device_train_batch_size": 4,
                                    "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 3,
                                    "warmup_steps": 0, "lr_scheduler_type": "constant", "save_total_limit": 1})
    plan, result, events = start(config)
    assert isinstance(result, RunFinished) and result.status == "early_stopped" and result.outcome == "improved"
    best = min((e for e in events if isinstance(e, EvalFinished) and e.step > 0), key=lambda e: e.eval_loss)
    kept = sorted(p.name for p in plan.run_dir.glob("checkpoint-*"))
    assert f"checkpoint-{best.step}" in kept and f"checkpoint-{result.global_step}" in kept
    assert result.best_checkpoint == str(plan.run_dir / f"checkpoint-{best.step}")

    # A run directory moved elsewhere keeps its best-checkpoint history when it resumes.
    stopped_plan = new_run(config_from_mapping(with_changes(config, training={
        "output_dir": str(tmp_path / "second"), "save_total_limit": 3})))
    control = RunControl()
    evaluations: list = []

    def sink(event: object) -> None:
        if isinstance(event, EvalFinished):
            evaluations.append(event)
            if len(evaluations) == 4:
                control.request_stop("test")

    assert isinstance(run(stopped_plan, sink, control), RunFinished)
    moved = tmp_path / "moved"
    shutil.move(str(stopped_plan.run_dir), moved)
    finished = run(resume_run(moved))
    assert isinstance(finished, RunFinished)
    assert finished.best_checkpoint is not None and Path(finished.best_checkpoint).parent == moved


def test_resume_refuses_changed_data_or_config_and_says_what_changed(tiny_run: dict, chat_data: dict,
                                                                     tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    shutil.copy(chat_data["train"], train)
    control = RunControl()
    plan = new_run(config_from_mapping(with_changes(tiny_run, data={"train": str(train)})))
    run(plan, stop_at_step(control, 3), control)
    with open(train, "a") as handle:
        handle.write(train.read_text().splitlines()[0] + "\n")
    with pytest.raises(RunDirError, match=rf"data.train: {train} changed \(\d[\d,]* bytes then, \d[\d,]* now\)"):
        resume_run(plan.run_dir)
    shutil.copy(chat_data["train"], train)
    config_file = plan.run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("learning_rate: 0.003", "learning_rate: 0.001"))
    with pytest.raises(RunDirError, match="training.learning_rate was 0.003 and is now 0.001 in config.yaml"):
        resume_run(plan.run_dir)
    config_file.write_text(config_file.read_text().replace("learning_rate: 0.001", "learning_rate: 0.003"))
    with pytest.raises(ConfigError, match="cannot change when resuming"):
        resume_run(plan.run_dir, ["training.learning_rate=0.001"])
    resumed = resume_run(plan.run_dir, ["training.gradient_checkpointing=true"])
    assert resumed.config.get("training.gradient_checkpointing") is True


def test_a_resumed_run_trains_exactly_as_an_uninterrupted_one(tiny_run: dict, tmp_path: Path) -> None:
    whole = with_changes(tiny_run, training={"output_dir": str(tmp_path / "whole")})
    _, finished, straight = start(whole)
    assert isinstance(finished, RunFinished)
    control = RunControl()
    plan = new_run(config_from_mapping(with_changes(tiny_run, training={"output_dir": str(tmp_path / "halves")})))
    run(plan, stop_at_step(control, 5), control)
    run(resume_run(plan.run_dir))
    by_step = {e.step: e for e in events_of(plan.run_dir) if isinstance(e, StepLogged)}  # the resumed value wins
    for event in (e for e in straight if isinstance(e, StepLogged)):
        assert by_step[event.step].loss == pytest.approx(event.loss, rel=1e-5), event.step
        assert by_step[event.step].learning_rate == pytest.approx(event.learning_rate, rel=1e-9), event.step


def test_a_failing_event_sink_never_stops_the_run(tiny_run: dict) -> None:
    def broken(event: object) -> None:
        if isinstance(event, StepLogged) and event.step == 2:
            raise RuntimeError("the screen fell over")

    plan = new_run(config_from_mapping(tiny_run))
    result = run(plan, broken)
    assert isinstance(result, RunFinished) and result.status == "completed"
    assert "the screen fell over" in (plan.run_dir / "sink-error.log").read_text()


def test_a_malicious_checkpoint_is_never_unpickled(tiny_run: dict, tmp_path: Path) -> None:
    control = RunControl()
    plan = new_run(config_from_mapping(tiny_run))
    run(plan, stop_at_step(control, 3), control)
    checkpoint = max(plan.run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    pwned = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (pwned,))

    import pickle

    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps(Exploit()))
    mark_complete(checkpoint)  # an attacker who can write files can write the marker too
    result = run(resume_run(plan.run_dir))
    assert isinstance(result, RunFailed)
    assert not pwned.exists(), "the pickle's code ran"


def test_a_token_is_never_written_anywhere_in_a_run(tiny_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_tunetermSECRETtoken0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ConfigError, match="training.hub_token: tuneterm never writes a token into a run"):
        config_from_mapping(with_changes(tiny_run, training={"hub_token": token}))
    plan, result, _ = start(tiny_run)
    assert isinstance(result, RunFinished)
    written = [p for p in plan.run_dir.rglob("*") if p.is_file()]
    assert len(written) > 20
    for path in written:  # binary files too: training_args.bin, optimizer.pt, safetensors
        assert token.encode() not in path.read_bytes(), path


def test_remote_code_never_runs_without_the_opt_in(tiny_run: dict, tmp_path: Path) -> None:
    model = tmp_path / "custom-model"
    shutil.copytree(tiny_run["model"]["path"], model)
    ran = tmp_path / "remote-code-ran"
    (model / "configuration_custom.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).touch()\n"
                                                   "from transformers import LlamaConfig as CustomConfig\n")
    config_json = json.loads((model / "config.json").read_text())
    config_json["model_type"] = "custom_unknown_to_transformers"
    config_json["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (model / "config.json").write_text(json.dumps(config_json))
    plan, result, _ = start(with_changes(tiny_run, model={"path": str(model)}))
    assert isinstance(result, RunFailed) and "trust_remote_code" in result.reason
    assert not ran.exists()


def test_nan_is_written_as_nan_in_the_event_log(tiny_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_from_step(3, monkeypatch)
    plan, result, _ = start(tiny_run)
    assert isinstance(result, RunFailed)
    [logged] = [e for e in events_of(plan.run_dir) if isinstance(e, StepLogged) and e.step == 3]
    assert math.isnan(logged.loss), "read back from events.jsonl as NaN, not 0.0"
    assert any('"loss": NaN' in line for line in (plan.run_dir / "events.jsonl").read_text().splitlines())


def test_stop_requested_twice_saves_once(tiny_run: dict) -> None:
    control = RunControl()
    saved: list = []

    def sink(event: object) -> None:
        if isinstance(event, StepLogged) and event.step == 3:
            assert control.request_stop("first") is True
            assert control.request_stop("second") is False
        if isinstance(event, CheckpointSaved):
            saved.append(event.step)

    result = run(new_run(config_from_mapping(tiny_run)), sink, control)
    assert isinstance(result, RunFinished) and result.status == "stopped"
    assert saved.count(result.global_step) == 1 and control.stop_reason == "first"


def test_the_training_thread_never_takes_the_caller_down(tiny_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def broken_callback(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise ValueError("a callback bug")

    monkeypatch.setattr(transformers.trainer_callback.CallbackHandler, "on_step_end", broken_callback)
    results: list = []
    plan = new_run(config_from_mapping(tiny_run))
    thread = threading.Thread(target=lambda: results.append(run(plan)))
    thread.start()
    thread.join(120)
    [result] = results
    assert isinstance(result, RunFailed) and "a callback bug" in result.reason
    assert "Traceback" in (plan.run_dir / "error.log").read_text()
