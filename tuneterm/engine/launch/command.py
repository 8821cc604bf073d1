"""The exact command that starts a run on chosen GPUs, with a strategy, on one machine or several.

A run on one GPU is `python -m tuneterm train --prepared RUN_DIR` with that GPU visible. On several it is
`accelerate launch --config_file RUN_DIR/accelerate.yaml -m tuneterm train --prepared RUN_DIR`: accelerate starts
one process per GPU and tells each (in its environment) how the processes share the work, DDP, FSDP or DeepSpeed
ZeRO-2/3; tuneterm reads that and trains accordingly (engine/launch/distributed.py).

The choice is written into the run directory (accelerate.yaml, and launch.json to start it again the same way
when it resumes), and the command is an argument list with the environment it needs, so the wizard can show it,
start it detached, and a person or a scheduler can run the very same line by hand. GPUs are named as nvidia-smi
numbers them: the command orders CUDA's devices by PCI bus, as NVML does.

The accelerate settings are those PEFT documents for LoRA and QLoRA: FSDP wraps each transformer layer with
use_orig_params off (the Trainer adds PEFT's wrap policy for the adapters and QLoRA's storage dtype), keeps
checkpoints sharded and gathers a full state dict only for the final adapter; ZeRO-3 initialises the model sharded
and saves 16-bit weights. Pure: nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import socket
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tuneterm.errors import ConfigError, Location, Problem
from tuneterm.plan.memory import STRATEGIES, Strategy

ACCELERATE_CONFIG_FILE = "accelerate.yaml"
LAUNCH_FILE = "launch.json"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchSpec:
    """Where and how a run trains: what the wizard asks, and what launch.json keeps."""

    strategy: Strategy = "single"
    gpus: tuple[int, ...] = ()
    """This machine's GPUs, as nvidia-smi numbers them; none: processes on the CPU (to try a distributed run)."""
    cpu_processes: int = 1
    """Processes per machine when there are no GPUs."""
    num_machines: int = 1
    machine_rank: int = 0
    """This machine's place (0: the machine the run directory is made on, whose process 0 reports the run)."""
    main_process_ip: str | None = None
    """The address of machine 0 that the others reach, with several machines."""
    main_process_port: int | None = None
    """Where machine 0 listens; None: 29500 with several machines, a free port on one (so runs side by side on
    one machine never collide)."""

    @property
    def processes_per_machine(self) -> int:
        return len(self.gpus) or self.cpu_processes

    @property
    def world_size(self) -> int:
        return self.processes_per_machine * self.num_machines


def launch_spec(gpus: str | None, strategy: str | None = None, cpu_processes: int | None = None,
                machines: int = 1, main_address: str | None = None) -> LaunchSpec | None:
    """A spec from the command line's words (`--gpus 0-3 --strategy fsdp --machines 2 --main-address host:port`);
    None when they ask for no launch. The strategy defaults to single for one process, ddp for more."""
    if gpus is None and strategy is None and cpu_processes is None and machines == 1:
        return None
    numbers = tuple(number for part in (gpus or "").split(",") if part.strip() for number in _gpu_numbers(part))
    host, _, port = (main_address or "").partition(":")
    world = (len(numbers) or cpu_processes or 1) * machines
    return LaunchSpec(strategy=strategy or ("single" if world == 1 else "ddp"),  # type: ignore[arg-type]
                      gpus=numbers, cpu_processes=cpu_processes or 1, num_machines=machines,
                      main_process_ip=host or None, main_process_port=int(port) if port.isdigit() else None)


def _gpu_numbers(part: str) -> range:
    """"3" or "0-3"."""
    first, _, last = part.strip().partition("-")
    if not first.isdigit() or last and not last.isdigit():
        raise ConfigError([Problem(f"{part!r} is not a GPU number or range (0,1 or 0-3)", Location(key="launch.gpus"))])
    return range(int(first), int(last or first) + 1)


def launch_problems(spec: LaunchSpec) -> list[Problem]:
    """What keeps a spec from starting, each said for the field it concerns (an empty list: it can start)."""
    problems = []

    def problem(message: str, field_name: str) -> None:
        problems.append(Problem(message, Location(key=f"launch.{field_name}")))

    if spec.strategy not in STRATEGIES:
        problem(f"{spec.strategy!r} is not one of {', '.join(STRATEGIES)}", "strategy")
    if len(set(spec.gpus)) != len(spec.gpus) or any(gpu < 0 for gpu in spec.gpus):
        problem(f"{list(spec.gpus)}: each GPU once, as nvidia-smi numbers them", "gpus")
    if spec.cpu_processes < 1:
        problem("at least one process", "cpu_processes")
    if spec.strategy == "single" and spec.world_size > 1:
        problem(f"one GPU trains alone; {spec.world_size} processes need ddp, fsdp or deepspeed", "strategy")
    if spec.strategy != "single" and spec.world_size < 2:
        problem(f"{spec.strategy} shares the work between processes: choose two GPUs or more", "gpus")
    if not spec.gpus and spec.strategy not in ("single", "ddp"):
        problem(f"{spec.strategy} needs GPUs; processes on the CPU train with ddp", "strategy")
    if spec.strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        problem("DeepSpeed is not installed here: pip install deepspeed (or choose fsdp)", "strategy")
    if spec.num_machines < 1 or not 0 <= spec.machine_rank < spec.num_machines:
        problem(f"machine {spec.machine_rank} of {spec.num_machines}: numbered from 0", "machine_rank")
    if spec.num_machines > 1 and not spec.main_process_ip:
        problem("with several machines, the address of machine 0 that the others reach", "main_process_ip")
    return problems


@dataclass(frozen=True)
class Launch:
    """A command that starts (or resumes) one run."""

    run_dir: Path
    spec: LaunchSpec
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    """Only what the command sets in the environment (the GPUs it sees); it inherits the rest."""
    accelerate_config: dict[str, Any] | None = None
    """The contents of RUN_DIR/accelerate.yaml; None for a single process, which needs no launcher."""

    def shell(self) -> str:
        """The command as one line for a shell or a scheduler script."""
        return " ".join([*(f"{name}={shlex.quote(value)}" for name, value in self.env.items()),
                         *map(shlex.quote, self.argv)])

    def on_machine(self, machine_rank: int) -> Launch:
        """The same launch as another machine runs it (the run directory on a filesystem all of them share)."""
        argv = list(self.argv)
        at = argv.index("--config_file")
        argv[at:at] = ["--machine_rank", str(machine_rank)]
        return replace(self, spec=replace(self.spec, machine_rank=machine_rank), argv=tuple(argv))


def build_launch(run_dir: Path, spec: LaunchSpec, resume: bool = False) -> Launch:
    """The command for a run directory (nothing is written: see write_launch). ConfigError when the spec cannot
    start, with every problem."""
    problems = launch_problems(spec)
    if problems:
        raise ConfigError(problems, summary="Cannot launch:")
    run_dir = run_dir.resolve()
    train = ["-m", "tuneterm", "train", "--resume" if resume else "--prepared", str(run_dir)]
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, spec.gpus))} \
        if spec.gpus else {}
    if spec.world_size == 1:
        return Launch(run_dir, spec, (sys.executable, *train), env)
    argv = (*_accelerate(), "--config_file", str(run_dir / ACCELERATE_CONFIG_FILE), *train)
    port = spec.main_process_port or (DEFAULT_PORT if spec.num_machines > 1 else _free_port())
    return Launch(run_dir, spec, argv, env, accelerate_config(spec, port))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accelerate() -> list[str]:
    """`accelerate launch` of this environment (its script next to this Python, else the module)."""
    script = Path(sys.executable).parent / "accelerate"
    return [str(script), "launch"] if script.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]


def accelerate_config(spec: LaunchSpec, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """accelerate's config file for a spec, machine 0 listening on `port`. Mixed precision is left to the run
    (training.precision)."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        # accelerate calls every process-per-device launch MULTI_GPU, on CPUs too (over gloo).
        "distributed_type": {"fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED",
                             "deepspeed-zero3": "DEEPSPEED"}.get(spec.strategy, "MULTI_GPU"),
        "num_processes": spec.world_size,
        "num_machines": spec.num_machines,
        "machine_rank": spec.machine_rank,
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": "no",
        "downcast_bf16": "no",
        "gpu_ids": "all",
        "use_cpu": not spec.gpus,
    }
    if spec.main_process_ip:
        config["main_process_ip"] = spec.main_process_ip
    if spec.strategy == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,
            "fsdp_offload_params": False,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_use_orig_params": False,
        }
    if spec.strategy.startswith("deepspeed"):
        zero3 = spec.strategy == "deepspeed-zero3"
        config["deepspeed_config"] = {
            "zero_stage": 3 if zero3 else 2,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": zero3,
            **({"zero3_save_16bit_model": True} if zero3 else {}),
            "deepspeed_multinode_launcher": "standard",
        }
    return config


def write_launch(launch: Launch) -> None:
    """accelerate.yaml and launch.json in the run directory: the command runs as shown, and resumes the same way."""
    if launch.accelerate_config is not None:
        (launch.run_dir / ACCELERATE_CONFIG_FILE).write_text(
            "# accelerate's settings for this run, written by tuneterm (see launch.json for the command).\n"
            + yaml.safe_dump(launch.accelerate_config, sort_keys=False), encoding="utf-8")
    spec = {**asdict(launch.spec), "gpus": list(launch.spec.gpus)}
    (launch.run_dir / LAUNCH_FILE).write_text(json.dumps({"spec": spec, "command": launch.shell()}, indent=2) + "\n",
                                              encoding="utf-8")


def prepare_launch(run_dir: Path, spec: LaunchSpec) -> Launch:
    """What the wizard calls for a new run directory: the command, with its files written beside the run."""
    launch = build_launch(run_dir, spec)
    write_launch(launch)
    return launch


def launch_for(run_dir: Path, resume: bool = False) -> Launch | None:
    """The run's own launch (from launch.json), to start or resume it the way it was planned; None for a run
    started without one."""
    path = run_dir / LAUNCH_FILE
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))["spec"]
    return build_launch(run_dir, LaunchSpec(**{**spec, "gpus": tuple(spec["gpus"])}), resume)
