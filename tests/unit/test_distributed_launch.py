"""The launch command for chosen GPUs and a strategy: its arguments, environment and accelerate settings, what it
refuses, and how it is kept in the run directory to start the run again the same way."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from tuneterm.engine.launch.command import (
    LaunchSpec,
    accelerate_config,
    build_launch,
    launch_for,
    launch_problems,
    launch_spec,
    prepare_launch,
)
from tuneterm.errors import ConfigError

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def test_one_gpu_needs_no_launcher_only_the_gpu(tmp_path: Path) -> None:
    launch = build_launch(tmp_path, LaunchSpec(gpus=(3,)))
    assert launch.argv == (sys.executable, "-m", "tuneterm", "train", "--prepared", str(tmp_path.resolve()))
    assert launch.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "3"}
    assert launch.accelerate_config is None
    assert launch.shell() == (f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=3 {sys.executable} -m tuneterm "
                              f"train --prepared {tmp_path.resolve()}")


def test_several_gpus_go_through_accelerate_with_the_run_directorys_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run with space"
    launch = build_launch(run_dir, LaunchSpec("ddp", gpus=(2, 5)), resume=True)
    config_file = str(run_dir.resolve() / "accelerate.yaml")
    assert launch.argv == (ACCELERATE, "launch", "--config_file", config_file, "-m", "tuneterm", "train",
                           "--resume", str(run_dir.resolve()))
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "2,5" and launch.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert shlex.split(launch.shell()) == [f"{k}={v}" for k, v in launch.env.items()] + list(launch.argv)
    config = launch.accelerate_config
    assert config is not None
    assert (config["distributed_type"], config["num_processes"], config["num_machines"], config["use_cpu"]) == \
        ("MULTI_GPU", 2, 1, False)
    assert config["mixed_precision"] == "no", "the run's own training.precision decides"
    assert 1024 <= config["main_process_port"] < 65536, "a free port: runs side by side on one machine never collide"


def test_fsdp_settings_are_those_peft_documents_for_lora_and_qlora() -> None:
    fsdp = accelerate_config(LaunchSpec("fsdp", gpus=(0, 1, 2, 3)))
    assert fsdp["distributed_type"] == "FSDP"
    assert fsdp["fsdp_config"] == {
        "fsdp_version": 1, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False, "fsdp_cpu_ram_efficient_loading": True, "fsdp_sync_module_states": True,
        "fsdp_offload_params": False, "fsdp_sharding_strategy": "FULL_SHARD",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_use_orig_params": False}


def test_deepspeed_zero_2_and_3() -> None:
    zero2 = accelerate_config(LaunchSpec("deepspeed-zero2", gpus=(0, 1)))
    zero3 = accelerate_config(LaunchSpec("deepspeed-zero3", gpus=(0, 1)))
    assert zero2["distributed_type"] == zero3["distributed_type"] == "DEEPSPEED"
    assert zero2["deepspeed_config"] == {"zero_stage": 2, "offload_optimizer_device": "none",
                                         "offload_param_device": "none", "zero3_init_flag": False,
                                         "deepspeed_multinode_launcher": "standard"}
    assert zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["zero3_init_flag"] and zero3["deepspeed_config"]["zero3_save_16bit_model"]


def test_several_machines_share_one_config_and_each_gets_its_rank(tmp_path: Path) -> None:
    spec = LaunchSpec("fsdp", gpus=tuple(range(8)), num_machines=2, main_process_ip="10.0.0.1")
    launch = build_launch(tmp_path, spec)
    config = launch.accelerate_config
    assert config is not None
    assert (config["num_processes"], config["num_machines"], config["machine_rank"], config["main_process_ip"],
            config["main_process_port"]) == (16, 2, 0, "10.0.0.1", 29500)
    other = launch.on_machine(1)
    assert other.argv[:4] == (ACCELERATE, "launch", "--machine_rank", "1")
    assert other.argv[4:] == launch.argv[2:] and other.env == launch.env
    assert spec.world_size == 16


def test_the_command_line_words_make_a_spec() -> None:
    assert launch_spec(None) is None
    assert launch_spec("0-3,6") == LaunchSpec("ddp", gpus=(0, 1, 2, 3, 6))
    assert launch_spec("1") == LaunchSpec("single", gpus=(1,))
    assert launch_spec(None, cpu_processes=2) == LaunchSpec("ddp", cpu_processes=2)
    assert launch_spec("0,1", "fsdp", machines=2, main_address="head:1234") == LaunchSpec(
        "fsdp", gpus=(0, 1), num_machines=2, main_process_ip="head", main_process_port=1234)
    with pytest.raises(ConfigError, match="'a' is not a GPU number"):
        launch_spec("0,a")


@pytest.mark.parametrize("spec, key, words", [
    (LaunchSpec("ddp", gpus=(0,)), "launch.gpus", "two GPUs or more"),
    (LaunchSpec("single", gpus=(0, 1)), "launch.strategy", "one GPU trains alone"),
    (LaunchSpec("fsdp", cpu_processes=2), "launch.strategy", "fsdp needs GPUs"),
    (LaunchSpec("ddp", gpus=(1, 1)), "launch.gpus", "each GPU once"),
    (LaunchSpec("ddp", gpus=(0, 1), num_machines=2), "launch.main_process_ip", "address of machine 0"),
    (LaunchSpec("ddp", gpus=(0, 1), num_machines=2, machine_rank=2, main_process_ip="h"), "launch.machine_rank",
     "numbered from 0"),
    (LaunchSpec("zero", gpus=(0, 1)), "launch.strategy", "is not one of"),  # type: ignore[arg-type]
])
def test_what_cannot_start_is_said_for_its_field(spec: LaunchSpec, key: str, words: str, tmp_path: Path) -> None:
    problems = launch_problems(spec)
    assert any(p.location.key == key and words in p.message for p in problems), problems
    with pytest.raises(ConfigError):
        build_launch(tmp_path, spec)


def test_the_launch_is_kept_with_the_run_and_resumes_the_same_way(tmp_path: Path) -> None:
    launch = prepare_launch(tmp_path, LaunchSpec("ddp", gpus=(0, 1)))
    written = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    assert written == launch.accelerate_config
    again = launch_for(tmp_path, resume=True)
    assert again is not None and again.spec == launch.spec and again.env == launch.env
    assert again.argv[-2:] == ("--resume", str(tmp_path.resolve()))
    assert launch_for(tmp_path / "elsewhere") is None


def test_deepspeed_must_be_installed_to_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = LaunchSpec("deepspeed-zero3", gpus=(0, 1))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert [p.message for p in launch_problems(spec)] == [
        "DeepSpeed is not installed here: pip install deepspeed (or choose fsdp)"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert launch_problems(spec) == []
