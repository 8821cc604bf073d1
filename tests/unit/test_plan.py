"""Plan before training: step math, advice, hardware readings, presets, the staged planner and `tuneterm plan`."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from tests.helpers import DATA, ROOT
from tuneterm.cli import main
from tuneterm.config import config_from_mapping, load_config, preset_names
from tuneterm.data.summary import eval_split_size
from tuneterm.errors import ConfigError
from tuneterm.hardware import CPU, Device, GpuSurvey, read_gpus
from tuneterm.plan import schedule
from tuneterm.plan.advice import Context, LengthStats, advise
from tuneterm.plan.resolve import resolve, schedule_of

CONFIGS = DATA / "model_configs"


def test_the_guides_step_table_corrected() -> None:
    # 'LoRA Fine-Tuning Complete Guide' section 7: 5,986 examples, 2 GPUs x batch 4 x accumulation 4 = 32, 3 epochs.
    # Its table prints 141 total updates ("5986 / 32 x 3"), but 5986 / 32 x 3 is 561, and the Trainer, which
    # rounds batches up on each device, runs 564. Its val_size arithmetic does add up: 599 held out, 5,387 left.
    assert eval_split_size(5986, 0.1) == 599
    per_epoch = schedule.steps_per_epoch(5986, micro_batch=4, accumulation=4, world_size=2)
    assert (per_epoch, schedule.total_steps(per_epoch, 3)) == (188, 564)
    per_epoch = schedule.steps_per_epoch(5387, micro_batch=4, accumulation=4, world_size=2)
    assert schedule.total_steps(per_epoch, 3) == 507 and schedule.total_steps(per_epoch, 5) == 845


def test_schedule_of_a_resolved_config() -> None:
    config = config_from_mapping({"model": {"path": "m"}, "data": {"train": "t"}})
    resolved = resolve(config, CPU, train_examples=900)
    plan = schedule_of(resolved, 900, 100)
    assert plan.effective_batch_size == 16
    assert plan.steps_per_epoch == 57 and plan.total_steps == 171
    assert plan.warmup_steps == 18  # 10% of 171, rounded up as transformers does
    assert plan.eval_steps == 11 == resolved.get("training.eval_steps")  # 20% of an epoch
    assert resolved.get("training.precision") == "fp32" and "CPU" in resolved.why("training.precision")


def advice_for(mapping: dict, examples: int = 1000, device: Device = CPU, lengths: LengthStats | None = None):
    sections = {"model": {"path": "m"}, "data": {"train": "t"}}
    for key, value in mapping.items():
        sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    config = config_from_mapping(sections)
    resolved = resolve(config, device, train_examples=examples)
    advice = advise(Context(resolved, schedule_of(resolved, examples, examples // 10), None, lengths, device))
    return {a.field: a for a in advice}


def test_defaults_draw_no_advice() -> None:
    assert advice_for({}) == {}


def test_each_guide_rule_fires_with_a_fix() -> None:
    found = advice_for({"lora": {"r": 64, "lora_alpha": 16, "lora_dropout": 0.2},
                        "training": {"learning_rate": 1e-3, "weight_decay": 0.5, "warmup_steps": 0,
                                     "num_train_epochs": 5, "gradient_accumulation_steps": 1,
                                     "early_stopping_patience": 10, "eval_steps": 40}})
    assert found["training.learning_rate"].fix == {"training.learning_rate": 2e-4}
    assert found["lora.lora_alpha"].fix == {"lora.lora_alpha": 64}
    assert found["lora.r"].level == "info" and "5k" in found["lora.r"].why
    assert found["lora.lora_dropout"].fix == {"lora.lora_dropout": 0.0}
    assert found["training.weight_decay"].fix == {"training.weight_decay": 0.01}
    assert found["training.warmup_steps"].level == "warning"
    assert found["training.num_train_epochs"].fix == {"training.num_train_epochs": 3}
    assert found["training.gradient_accumulation_steps"].fix == {"training.gradient_accumulation_steps": 8}
    assert found["training.early_stopping_patience"].fix == {"training.early_stopping_patience": 3}
    assert "training.eval_steps" in found
    for advice in found.values():
        assert advice.why and advice.source and advice.message


def test_hardware_data_and_run_length_rules() -> None:
    ampere, turing = Device("cuda", "A100", True), Device("cuda", "T4", False)
    assert advice_for({"training": {"precision": "fp16"}}, device=ampere)["training.precision"].fix == {
        "training.precision": "bf16"}
    with pytest.raises(ConfigError, match="bf16 is not supported by T4.*use auto"):
        advice_for({"training": {"precision": "bf16"}}, device=turing)
    short = advice_for({"training": {"num_train_epochs": 1}}, examples=200)
    assert short["training.lr_scheduler_type"].fix == {"training.lr_scheduler_type": "constant_with_warmup"}
    assert "data.val_size" in advice_for({"data": {"val_size": 0}})
    assert "lora.target_modules" in advice_for({"lora": {"target_modules": ["q_proj", "v_proj"]}})
    lengths = LengthStats(p95=700, p99=900, examples=1000)
    assert advice_for({"training": {"max_length": 512}}, lengths=lengths)["training.max_length"].fix == {
        "training.max_length": 960}
    assert advice_for({"training": {"max_length": 4096}}, lengths=lengths)["training.max_length"].level == "info"
    assert "lora.use_rslora" in advice_for({"lora": {"r": 128, "lora_alpha": 128}}, examples=100_000)
    full = advice_for({"method": "full", "training": {"learning_rate": 2e-4}})
    assert full["training.learning_rate"].fix == {"training.learning_rate": 2e-5}


def test_the_learning_rate_rules_say_when_the_model_is_not_one_the_guides_measured(tiny_model: Path,
                                                                                     tmp_path: Path) -> None:
    from tuneterm.plan.model import load_model_facts

    def rate_advice(model: Path, learning_rate: float):
        config = resolve(config_from_mapping({"model": {"path": str(model)}, "data": {"train": "t"},
                                              "training": {"learning_rate": learning_rate}}), CPU,
                         train_examples=1000)
        found = advise(Context(config, schedule_of(config, 1000, 100), load_model_facts(str(model)), None, CPU))
        return next((a for a in found if a.field == "training.learning_rate"), None)

    for rate in (3e-3, 2e-4):  # the demo's rate, and the guides' start, which is the wrong start here
        tiny = rate_advice(tiny_model, rate)
        assert tiny is not None and tiny.level == "info" and tiny.fix == {}, "nothing to take: no rate is known"
        assert tiny.message == f"{rate:g}: the guides' 2e-4 does not apply to this model"
        assert "parameters: it is not a pretrained LLM like those the guides' learning rates come from (0.6B " \
               "parameters and more)" in tiny.why and "learns best near 3e-3" in tiny.why
    pretrained = rate_advice(_config_json_only(tmp_path, "qwen3-0.6b"), 3e-3)
    assert pretrained is not None and pretrained.level == "warning"
    assert pretrained.fix == {"training.learning_rate": 2e-4}, "a pretrained LLM gets the guides' advice"
    assert rate_advice(_config_json_only(tmp_path, "qwen3-0.6b"), 2e-4) is None


def test_real_nvml_readings_or_the_reason_there_are_none() -> None:
    survey = read_gpus()
    if not survey.gpus:  # no driver here: an empty list and why, never an exception
        assert survey.reason
        return
    for gpu in survey.gpus:
        assert gpu.name and gpu.memory_total >= gpu.memory_free > 0 and gpu.compute_capability is not None


def test_nvml_readings_are_parsed_and_unsupported_ones_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import tuneterm.hardware as hardware

    class NvmlError(Exception):
        pass

    def unsupported(*_args: object) -> None:
        raise NvmlError("Not Supported")

    memory = types.SimpleNamespace(total=24_000_000_000, used=1_000_000_000, free=23_000_000_000)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlSystemGetDriverVersion=lambda: "580.1",
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}", nvmlDeviceGetMemoryInfo=lambda h: memory,
        nvmlDeviceGetName=lambda h: "NVIDIA GeForce RTX 4090",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37), nvmlDeviceGetTemperature=unsupported,
        NVML_TEMPERATURE_GPU=0, nvmlDeviceGetPowerUsage=lambda h: 250_000, nvmlDeviceGetEnforcedPowerLimit=unsupported,
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 9))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(hardware, "_NVML", hardware._Nvml())
    [gpu] = hardware.read_gpus().gpus
    assert (gpu.name, gpu.memory_free, gpu.utilization, gpu.power_watts) == ("NVIDIA GeForce RTX 4090",
                                                                             23_000_000_000, 37, 250.0)
    assert gpu.temperature is None and gpu.power_limit_watts is None
    assert gpu.bf16 is True
    assert hardware.device_from_survey(GpuSurvey((gpu,))) == Device("cuda", "NVIDIA GeForce RTX 4090", True)


@pytest.mark.parametrize("name", preset_names())
def test_presets_are_valid_commented_configs(name: str) -> None:
    config = load_config(preset=name, overrides=["model.path=m", "data.train=t"])
    text = (ROOT / "presets" / f"{name}.yaml").read_text()
    assert text.startswith("# ") and len([line for line in text.splitlines() if "#" in line]) >= 3
    assert config.method in ("lora", "qlora")


def test_presets_cover_the_cases() -> None:
    assert {"cpu-quick-test", "lora-small-model", "qlora-7b-24gb", "style-transfer", "knowledge-injection",
            "classification"} <= set(preset_names())
    assert load_config(preset="knowledge-injection", overrides=["model.path=m", "data.train=t"]).get(
        "data.train_on") == "all"


def test_plan_command_text_and_json(tiny_model: Path, chat_data: dict, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {chat_data['train']}\n"
                      "lora:\n  lora_dropout: 0.3\ntraining:\n  learning_rate: 1e-3\n")
    assert main(["plan", str(config)]) == 0
    text = capsys.readouterr().out
    for heading in ("Model ", "Data ", "Schedule ", "Memory ", "Device ", "Advice", "Resolved config"):
        assert heading in text
    assert "fix: --set lora.lora_dropout=0.0" in text
    assert "0.001: the guides' 2e-4 does not apply to this model" in text, "a tiny model is no pretrained LLM"
    assert main(["plan", str(config), "--json", "--world-size", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"]["trainable_params"] > 0 and plan["model"]["total_params"] > plan["model"]["base_params"]
    assert plan["schedule"]["effective_batch_size"] == 32
    held_out = eval_split_size(160, 0.1)
    assert plan["schedule"]["train_examples"] == 160 - held_out
    assert plan["schedule"]["steps_per_epoch"] == schedule.steps_per_epoch(160 - held_out, 2, 8, 2)
    assert set(plan["schedule"]) >= {"steps_per_epoch", "total_steps", "warmup_steps", "eval_steps"}
    assert set(plan["memory"]) >= {"total_bytes", "breakdown", "verdict"}
    assert plan["memory"]["verdict"]["level"] in ("fits", "tight", "will not fit")
    assert {"level", "field", "message", "why", "source"} <= set(plan["advice"][0])
    assert plan["data"]["lengths"]["p99"] >= plan["data"]["lengths"]["p50"]


def _config_json_only(tmp_path: Path, name: str = "mistral-7b-v0.1") -> Path:
    model = tmp_path / name
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text((CONFIGS / f"{name}.json").read_text())
    return model


def test_plan_without_data_covers_the_model_memory_and_advice(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = _config_json_only(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(f"method: qlora\nmodel:\n  path: {model}\ntraining:\n  max_length: 2048\n"
                      "  learning_rate: 1e-3\n")
    assert main(["plan", str(config), "--gpu-memory", "24"]) == 0
    text = capsys.readouterr().out
    assert "7,241,732,096" in text.replace("7,241,732,096", "7,241,732,096") or "parameters trainable" in text
    assert "Schedule  needs the data" in text and "Memory    per GPU at 2048 tokens (the max length)" in text
    assert "FITS" in text and "fix: --set training.learning_rate=0.0002" in text
    assert main(["plan", str(config), "--json", "--gpu-memory", "24"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"]["base_params"] == 7_241_732_096
    assert plan["schedule"] is None and plan["data"] is None
    assert not [p for p in plan["problems"] if p["level"] == "error"]


def test_plan_says_what_would_stop_a_run_and_exits_non_zero(tmp_path: Path, chat_data: dict, tiny_model: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = _config_json_only(tmp_path)
    assert main(["plan", "--preset", "qlora-7b-24gb", "--set", f"model.path={model}", "--set",
                 "data.train=missing.jsonl", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert {"key": "data.train", "level": "error", "message": f"{Path.cwd() / 'missing.jsonl'}: no such file or "
                                                              "directory"} in plan["problems"]
    assert plan["memory"]["verdict"]["level"], "everything that can be planned still is"
    invalid = tmp_path / "invalid.jsonl"
    invalid.write_text(chat_data["train"].read_text() + '{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert main(["plan", "--set", f"model.path={tiny_model}", "--set", f"data.train={invalid}"]) == 1
    captured = capsys.readouterr()
    assert "Problem   data.train: 1 of 161 records are not valid" in captured.out
    assert f"\n            {invalid}:161: the conversation ends with a user turn" in captured.out
    assert "would stop tuneterm train" in captured.err


def test_a_config_problem_found_while_planning_is_a_config_problem(tmp_path: Path, tiny_model: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--set", f"model.path={tiny_model}", "--set", "training.precision=fp16"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Config problems:\n  training.precision: fp16 needs a CUDA GPU")


def test_plan_from_a_laptop_for_a_card_it_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _config_json_only(tmp_path)
    for gigabytes, level in ((24, "fits"), (4, "will not fit")):
        assert main(["plan", "--preset", "qlora-7b-24gb", "--set", f"model.path={model}", "--set",
                     "training.max_length=2048", "--gpu-memory", str(gigabytes), "--json"]) == 0
        planned = json.loads(capsys.readouterr().out)
        assert planned["memory"]["verdict"]["level"] == level
        assert planned["config"]["training"]["precision"] == "bf16"


def test_the_per_keystroke_stage_reuses_facts_and_data(tiny_model: Path, chat_data: dict) -> None:
    from tuneterm.hardware import HostReading
    from tuneterm.plan import planner

    config = config_from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}})
    facts = planner.model_facts(config)
    summary = planner.data_summary(config)
    assert planner.data_summary(config) is summary, "the data summary is cached per data settings"
    host = HostReading(cpu_count=2, cpu_percent=0.0, memory_total=16_000_000_000, memory_available=8_000_000_000)
    gpus = GpuSurvey((), reason="test")
    plans = {}
    for length in (64, 128):
        changed = config_from_mapping({**config.to_nested(), "training": {"max_length": length}})
        assert planner.data_summary(changed) is summary, "max_length does not touch the data summary"
        plans[length] = planner.plan_run(changed, facts, summary, gpus, host=host)
    assert plans[128].memory.total_bytes > plans[64].memory.total_bytes
    short_data = plans[64].data
    assert short_data is not None
    assert plans[64].schedule == plans[128].schedule or short_data.truncation.truncated_examples >= 0
    assert plans[128].targets[0].name.startswith("CPU RAM") and plans[128].targets[0].free_bytes == 8_000_000_000
    moved = config_from_mapping({**config.to_nested(), "data": {"train": str(chat_data["train"]), "val_size": 0.5}})
    assert planner.data_summary(moved) is summary, "the held-out share is derived, not read again"
    schedule = planner.plan_run(moved, facts, summary, gpus, host=host).schedule
    assert schedule is not None and schedule.train_examples == 80


def test_plan_problems_for_an_output_directory_in_use_and_a_model_without_tokenizer(
        tmp_path: Path, chat_data: dict, capsys: pytest.CaptureFixture[str]) -> None:
    model = _config_json_only(tmp_path)  # config.json only: enough for memory, not for the data statistics
    used = tmp_path / "used"
    used.mkdir()
    (used / "adapter_model.safetensors").write_text("precious")
    assert main(["plan", "--set", f"model.path={model}", "--set", f"data.train={chat_data['train']}", "--set",
                 f"training.output_dir={used}", "--json"]) == 1
    problems = {p["key"]: p for p in json.loads(capsys.readouterr().out)["problems"] if p["level"] == "error"}
    assert "already exists and is not empty" in problems["training.output_dir"]["message"]
    assert problems["data.train"]["message"].startswith(f"model.path: {model} is not a model directory: it has no "
                                                        "tokenizer files")
    assert (used / "adapter_model.safetensors").read_text() == "precious"
