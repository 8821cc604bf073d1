"""The engine end to end on tiny offline models: LoRA, QLoRA, early stopping, stop and resume."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import noise_chat, with_changes
from tuneterm.config import config_from_mapping
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    CheckpointSaved,
    EvalFinished,
    PatienceChanged,
    RunFinished,
    RunStarted,
    StepLogged,
    StopRequested,
    WarningIssued,
    read_events,
)
from tuneterm.engine.run.plans import new_run, resume_run
from tuneterm.engine.run.runner import run
from tuneterm.errors import ConfigError, RunDirError


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_lora_run_learns_and_leaves_a_complete_run_directory(finished_run) -> None:
    events, result, run_dir = finished_run.events, finished_run.result, finished_run.run_dir

    assert isinstance(result, RunFinished), result
    assert result.status == "completed"
    evals = [e.eval_loss for e in of_type(events, EvalFinished)]
    assert evals[0] == pytest.approx(max(evals)), "the first evaluation (before training) is the baseline"
    assert min(evals) < 0.8 * evals[0], f"eval loss did not fall: {evals}"

    started = of_type(events, RunStarted)[0]
    steps = of_type(events, StepLogged)
    assert started.total_steps == steps[-1].max_steps == result.global_step == steps[-1].step
    assert [s.step for s in steps] == list(range(1, started.total_steps + 1))

    for name in ("config.yaml", "events.jsonl", "adapter_model.safetensors", "adapter_config.json",
                 "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "training_loss.png",
                 "training_eval_loss.png", "adapter_check.json"):
        assert (run_dir / name).is_file(), name
    assert any(run_dir.glob("checkpoint-*/adapter_model.safetensors"))
    replayed = read_events(run_dir / "events.jsonl")
    assert [type(e).__name__ for e in replayed] == [type(e).__name__ for e in events]
    assert replayed[-1] == result

    check = json.loads((run_dir / "adapter_check.json").read_text())
    assert check["all_changed"] and check["changed"] == check["tensors"] > 0
    assert not check["lora_B_all_zero"]
    assert result.adapter_changed is True


def test_saved_adapter_loads_onto_the_base_model_and_changes_its_output(finished_run) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(finished_run.config["model"]["path"])
    inputs = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = base(inputs).logits
    tuned = PeftModel.from_pretrained(base, str(finished_run.run_dir))
    lora_b = {k: v for k, v in tuned.state_dict().items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    with torch.no_grad():
        after = tuned(inputs).logits
    assert not torch.equal(before, after)


def test_qlora_loads_the_base_model_in_4_bit_nf4_and_trains(base_config: dict) -> None:
    import bitsandbytes as bnb

    from tuneterm.engine.loading import load_model
    from tuneterm.hardware import Device

    config = config_from_mapping(with_changes(base_config, method="qlora", training={"num_train_epochs": 1}))
    model = load_model(config, "fp32", Device("cpu", "CPU", False))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and isinstance(q_proj.weight, bnb.nn.Params4bit)
    quantized = q_proj.weight.quant_state
    assert quantized is not None and quantized.quant_type == "nf4"
    assert quantized.nested, "double quantization is on by default"

    events: list = []
    result = run(new_run(config), events.append)
    assert isinstance(result, RunFinished), result
    evals = [e.eval_loss for e in of_type(events, EvalFinished)]
    assert min(evals) < evals[0]
    assert result.adapter_changed
    # The 8-bit optimizer's process-wide registry must not keep this run's embedding alive for the next one.
    assert not bnb.optim.GlobalOptimManager.get_instance().module_weight_config_triple


def test_early_stopping_stops_an_overfitting_run_and_keeps_the_best_checkpoint(base_config: dict,
                                                                               tmp_path: Path) -> None:
    config = with_changes(base_config, data=noise_chat(tmp_path), lora={"r": 32, "lora_alpha": 64},
                          training={"learning_rate": 2e-2, "num_train_epochs": 60, "per_device_train_batch_size": 4,
                                    "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 2,
                                    "warmup_steps": 0, "lr_scheduler_type": "constant"})
    plan = new_run(config_from_mapping(config))
    events: list = []
    result = run(plan, events.append)

    assert isinstance(result, RunFinished) and result.status == "early_stopped"
    started = of_type(events, RunStarted)[0]
    assert result.global_step < started.total_steps
    evals = of_type(events, EvalFinished)
    best = min(evals, key=lambda e: e.eval_loss)
    assert evals[-1].evals_since_improvement == 2 and evals[-1].eval_loss > best.eval_loss
    assert result.best_eval_loss == pytest.approx(best.eval_loss)
    assert result.best_checkpoint is not None and result.best_checkpoint.endswith(f"checkpoint-{best.step}")
    saved = load_file(str(plan.run_dir / "adapter_model.safetensors"))
    best_saved = load_file(str(Path(result.best_checkpoint) / "adapter_model.safetensors"))
    assert saved.keys() == best_saved.keys()
    assert all(torch.equal(saved[k], best_saved[k]) for k in saved)


def test_a_patience_changed_while_the_run_trains_is_the_one_early_stopping_counts(base_config: dict,
                                                                                 tmp_path: Path) -> None:
    """Started with a patience the run could never use up, changed to 2 at its first step: it stops early."""
    config = with_changes(base_config, data=noise_chat(tmp_path), lora={"r": 32, "lora_alpha": 64},
                          training={"learning_rate": 2e-2, "num_train_epochs": 60, "per_device_train_batch_size": 4,
                                    "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 500,
                                    "warmup_steps": 0, "lr_scheduler_type": "constant"})
    plan = new_run(config_from_mapping(config))
    control = RunControl()
    events: list = []

    def sink(event: object) -> None:
        events.append(event)
        if isinstance(event, StepLogged) and event.step == 1:
            control.set_patience(2)

    result = run(plan, sink, control)
    assert isinstance(result, RunFinished) and result.status == "early_stopped", result
    [changed] = of_type(events, PatienceChanged)
    assert changed.patience == 2 and changed.step == 2, "taken at the end of the step after the one asking"
    evals = of_type(events, EvalFinished)
    assert all(e.patience == 2 for e in evals if e.step >= changed.step)
    assert evals[-1].evals_since_improvement == 2
    assert result.global_step < of_type(events, RunStarted)[0].total_steps


def test_stop_from_another_thread_saves_a_checkpoint_and_resume_finishes_the_run(base_config: dict) -> None:
    plan = new_run(config_from_mapping(with_changes(base_config, training={"eval_steps": 4})))
    control = RunControl()
    events: list = []
    third_step = threading.Event()

    def sink(event: object) -> None:
        events.append(event)
        if isinstance(event, StepLogged) and event.step >= 3:
            third_step.set()

    results: list = []
    worker = threading.Thread(target=lambda: results.append(run(plan, sink, control)))
    worker.start()
    assert third_step.wait(timeout=120)
    control.request_stop("test")
    worker.join(timeout=120)

    stopped = results[0]
    assert isinstance(stopped, RunFinished) and stopped.status == "stopped"
    assert of_type(events, StopRequested)
    if not [e for e in of_type(events, EvalFinished) if e.step > 0]:  # stopped before evaluating: nothing is known
        assert stopped.outcome == "not_evaluated"
        assert not [e for e in of_type(events, WarningIssued) if "made the eval loss worse" in e.message]
    total = of_type(events, RunStarted)[0].total_steps
    assert 3 <= stopped.global_step < total
    checkpoint = plan.run_dir / f"checkpoint-{stopped.global_step}"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert of_type(events, CheckpointSaved)[-1].path.endswith(checkpoint.name)
    assert (plan.run_dir / "adapter_model.safetensors").is_file()

    resumed = resume_run(plan.run_dir)
    assert resumed.resume_from == checkpoint
    finished = run(resumed)
    assert isinstance(finished, RunFinished) and finished.status == "completed"
    assert finished.global_step == total

    log = read_events(plan.run_dir / "events.jsonl")
    starts = of_type(log, RunStarted)
    assert len(starts) == 2 and starts[1].resumed_from == str(checkpoint)
    steps_after_resume = [e.step for e in log[log.index(starts[1]):] if isinstance(e, StepLogged)]
    assert steps_after_resume == list(range(stopped.global_step + 1, total + 1))
    with pytest.raises(RunDirError, match="already completed"):
        resume_run(plan.run_dir)


def test_save_now_writes_a_checkpoint_between_evaluations_and_training_goes_on(base_config: dict) -> None:
    plan = new_run(config_from_mapping(with_changes(base_config, training={"eval_steps": 4, "num_train_epochs": 1})))
    control = RunControl()

    def sink(event: object) -> None:
        if isinstance(event, StepLogged) and event.step == 2:
            control.request_save()

    result = run(plan, sink, control)
    assert isinstance(result, RunFinished) and result.status == "completed"
    saved = [e.step for e in read_events(plan.run_dir / "events.jsonl") if isinstance(e, CheckpointSaved)]
    assert 3 in saved, saved
    assert result.global_step > 3


def test_an_existing_output_directory_is_never_touched(base_config: dict, tmp_path: Path) -> None:
    existing = tmp_path / "run"
    existing.mkdir()
    keep = existing / "adapter_model.safetensors"
    keep.write_bytes(b"precious")
    before = sorted(p.name for p in existing.iterdir())

    with pytest.raises(ConfigError, match="already exists and is not empty"):
        new_run(config_from_mapping(base_config))
    assert keep.read_bytes() == b"precious"
    assert sorted(p.name for p in existing.iterdir()) == before


def test_default_run_directories_are_new_each_time(base_config: dict, tmp_path: Path) -> None:
    config = with_changes(base_config)
    del config["training"]["output_dir"]
    first = new_run(config_from_mapping(config), runs_root=tmp_path / "runs").run_dir
    second = new_run(config_from_mapping(config), runs_root=tmp_path / "runs").run_dir
    assert first != second and first.is_dir() and second.is_dir()


def test_train_accepts_other_formats_through_the_same_data_layer(base_config: dict, chat_data: dict,
                                                                 tmp_path: Path) -> None:
    from datasets import Dataset

    rows = []
    for line in chat_data["train"].read_text().splitlines():
        turns = [m for m in json.loads(line)["messages"] if m["role"] != "system"]
        rows.append({"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                       for m in turns]})
    Dataset.from_list(rows).to_parquet(str(tmp_path / "sharegpt.parquet"))
    config = with_changes(base_config,
                          data={"train": str(tmp_path / "sharegpt.parquet"), "eval": None, "val_size": 0.1},
                          training={"num_train_epochs": 1})
    events: list = []
    result = run(new_run(config_from_mapping(config)), events.append)
    assert isinstance(result, RunFinished), result
    started = of_type(events, RunStarted)[0]
    assert started.config["data"]["format"] == "auto"
    distinct = {json.dumps(row, sort_keys=True) for row in rows}  # dropping system prompts made duplicates
    assert len(distinct) < len(rows)
    assert started.train_examples + started.eval_examples == len(distinct)
    evals = [e.eval_loss for e in of_type(events, EvalFinished)]
    assert min(evals) < evals[0]


def test_run_started_carries_the_eval_cadence_batch_and_memory_estimate_the_run_resolved(finished_run) -> None:
    started = of_type(finished_run.events, RunStarted)[0]
    training = started.config["training"]
    evals = sorted({e.step for e in of_type(finished_run.events, EvalFinished)} - {0})
    assert started.eval_steps == training["eval_steps"] == evals[0]
    assert started.early_stopping_patience == training["early_stopping_patience"]
    assert started.effective_batch_size == (training["per_device_train_batch_size"]
                                            * training["gradient_accumulation_steps"] * started.world_size)
    # On a CPU there is neither a CUDA context nor an allocator's slack: the total is the parts' peak.
    assert started.estimated_memory["weights"] > 0
    assert started.estimated_memory_total == pytest.approx(sum(started.estimated_memory.values()))


def test_the_planned_learning_rates_are_the_ones_the_trainer_logs(finished_run) -> None:
    """The schedule RunStarted carries, which the monitor draws, is the one the Trainer followed."""
    from tuneterm.plan.schedule import learning_rates

    started = of_type(finished_run.events, RunStarted)[0]
    training = started.config["training"]
    assert started.warmup_steps == math.ceil(training["warmup_steps"] * started.total_steps)
    curve = learning_rates(started.lr_scheduler_type, started.learning_rate, started.warmup_steps, started.total_steps)
    assert curve is not None
    planned = dict(curve)
    logged = {e.step: e.learning_rate for e in of_type(finished_run.events, StepLogged)}
    assert planned.keys() == logged.keys()
    for step, rate in logged.items():
        assert planned[step] == pytest.approx(rate, rel=1e-6, abs=1e-12), step
