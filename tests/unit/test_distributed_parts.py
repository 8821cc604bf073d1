"""The parts of a distributed run that need no second process: one process answers for itself, the launcher's
environment names the strategy, checkpoints of every layout resume, a run resumes only in as many processes as it
trained in, signals passed on by a launcher count once, and the other processes keep quiet."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tuneterm.engine.control import RunControl
from tuneterm.engine.events import EventLog, RunStarted
from tuneterm.engine.launch import distributed
from tuneterm.engine.launch.channel import ChannelListener, send
from tuneterm.engine.launch.command import LaunchSpec, launch_for, prepare_launch
from tuneterm.engine.launch.signals import StopOnSignals
from tuneterm.engine.run.plans import resume_run
from tuneterm.engine.rundir.layout import checkpoint_problem, mark_complete
from tuneterm.errors import RunDirError
from tuneterm.hardware import GpuReading, GpuSurvey, choose_cpu_threads


def test_alone_a_process_is_the_main_one_and_agrees_with_itself() -> None:
    assert (distributed.world_size(), distributed.rank(), distributed.launched(), distributed.is_main()) == \
        (1, 0, False, True)
    assert distributed.agreed([0, 1, 5]) == [0, 1, 5]
    assert distributed.from_main(lambda: "plan") == "plan"
    assert distributed.ranks_unlike_main("anything") == []
    distributed.barrier()
    assert distributed.strategy() == "single"


@pytest.mark.parametrize("environment, strategy", [
    ({"WORLD_SIZE": "4"}, "ddp"),
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_FSDP": "true"}, "fsdp"),
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
     "deepspeed-zero2"),
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     "deepspeed-zero3"),
])
def test_the_launchers_environment_names_the_strategy(environment: dict, strategy: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert distributed.strategy() == strategy and distributed.launched()


def test_only_the_main_process_writes_events(tmp_path: Path) -> None:
    received: list = []
    with EventLog(None, received.append) as silent:
        silent(RunStarted(run_dir="r", config={}, defaulted=[], notes={}, train_examples=1, eval_examples=0,
                          steps_per_epoch=1, total_steps=1, trainable_params=1, total_params=1, device="CPU"))
    assert silent.write_error is None and received == [] and not list(tmp_path.iterdir())


def test_requests_made_while_a_supervised_run_starts_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    send(tmp_path, "evaluate")
    offset = (tmp_path / "control.jsonl").stat().st_size
    send(tmp_path, "stop", reason="tuneterm stop")
    monkeypatch.setenv("TUNETERM_SUPERVISED", "1")
    monkeypatch.setenv("TUNETERM_CONTROL_FROM", str(offset))
    control = RunControl()
    ChannelListener(tmp_path, control, distributed.control_from()).poll()
    assert control.stop_requested and control.stop_reason == "tuneterm stop"
    assert not control.take_evaluate_request(), "a request from before the run was started is history"


def test_a_signal_passed_on_by_the_launcher_is_the_same_request() -> None:
    control = RunControl()
    with StopOnSignals(control, echo_seconds=30) as guard:
        guard._handle(signal.SIGINT, None)
        guard._handle(signal.SIGINT, None)  # the launcher passing on the terminal's Ctrl-C: no abort
    assert control.stop_requested and control.stop_reason == "Ctrl-C"
    with StopOnSignals(RunControl()) as alone, pytest.raises(KeyboardInterrupt):
        alone._handle(signal.SIGTERM, None)
        alone._handle(signal.SIGTERM, None)


def checkpoint(tmp_path: Path, files: list[str]) -> Path:
    path = tmp_path / "checkpoint-10"
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(name.encode())
    mark_complete(path)
    return path


@pytest.mark.parametrize("files", [
    ["trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors", "rng_state_0.pth",
     "rng_state_1.pth"],
    ["trainer_state.json", "optimizer_0/__0_0.distcp", "scheduler.pt", "pytorch_model_fsdp_0/__0_0.distcp"],
    ["trainer_state.json", "latest", "adapter_model.safetensors",
     "global_step10/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
     "global_step10/zero_pp_rank_0_mp_rank_00_model_states.pt"],
], ids=["ddp", "fsdp", "deepspeed"])
def test_checkpoints_of_every_layout_resume(tmp_path: Path, files: list[str]) -> None:
    assert checkpoint_problem(checkpoint(tmp_path, files)) is None


def test_fsdp_checkpoint_without_its_optimizer_shards_does_not(tmp_path: Path) -> None:
    path = checkpoint(tmp_path, ["trainer_state.json", "scheduler.pt", "pytorch_model_fsdp_0/__0_0.distcp"])
    assert checkpoint_problem(path) == "it has no optimizer.pt, so the optimizer and schedule would restart"


def test_a_run_resumes_only_in_as_many_processes_as_it_trained_in(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    checkpoint(run_dir, ["trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors"])
    (run_dir / "config.yaml").write_text("method: lora\n")
    with EventLog(run_dir / "events.jsonl") as emit:
        emit(RunStarted(run_dir=str(run_dir), config={}, defaulted=[], notes={}, train_examples=1, eval_examples=0,
                        steps_per_epoch=1, total_steps=1, trainable_params=1, total_params=1, device="CPU",
                        world_size=2))
    prepare_launch(run_dir, LaunchSpec("ddp", gpus=(0, 1)))
    with pytest.raises(RunDirError) as refused:
        resume_run(run_dir)
    resume = launch_for(run_dir, resume=True)
    assert resume is not None and "--resume" in resume.argv
    assert "this run trained in 2 processes and would resume in 1" in str(refused.value)
    assert str(refused.value).endswith(f"Resume it the way it ran: {resume.shell()}")
    with pytest.raises(RunDirError, match="in 4"):
        resume_run(run_dir, world_size=4)


def test_the_processes_of_a_run_still_alive_on_this_machine(tmp_path: Path) -> None:
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    host = socket.gethostname()
    with EventLog(tmp_path / "events.jsonl") as emit:
        emit(RunStarted(run_dir=str(tmp_path), config={}, defaulted=[], notes={}, train_examples=1, eval_examples=0,
                        steps_per_epoch=1, total_steps=1, trainable_params=1, total_params=1, device="CPU",
                        world_size=3, processes=[{"rank": 0, "host": host, "pid": gone, "gpu": None},
                                                 {"rank": 1, "host": host, "pid": os.getpid(), "gpu": None},
                                                 {"rank": 2, "host": "elsewhere", "pid": os.getpid(), "gpu": None}]))
    assert distributed.processes_left(tmp_path) == [os.getpid()]


def test_the_gpus_a_run_trains_on_here() -> None:
    host = socket.gethostname()
    start = RunStarted(run_dir="r", config={}, defaulted=[], notes={}, train_examples=1, eval_examples=0,
                       steps_per_epoch=1, total_steps=1, trainable_params=1, total_params=1, device="H100",
                       world_size=3, processes=[{"rank": 0, "host": host, "pid": 1, "gpu": 5},
                                                {"rank": 1, "host": host, "pid": 2, "gpu": 2},
                                                {"rank": 2, "host": "elsewhere", "pid": 3, "gpu": 0}])
    assert distributed.ranks_by_gpu(start) == {5: 0, 2: 1}


def test_processes_of_one_run_share_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    threads, why = choose_cpu_threads("auto", sample_seconds=0, processes=2)
    assert threads == max(1, cores // 2) and "shared by the 2 processes" in why


def test_the_gpus_a_run_uses() -> None:
    gpus = GpuSurvey(tuple(GpuReading(i, "H100", 80, 0, 80, None, None, None, None, (9, 0)) for i in range(4)))
    assert [g.index for g in gpus.only([1, 3]).gpus] == [1, 3]
    assert gpus.only([7]).reason == "none of GPUs [7] was found"
