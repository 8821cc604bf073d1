"""The processes of one run under `accelerate launch` or `torchrun`: which one this is, and how they agree.

Every process of a distributed run runs the same `tuneterm train`; the launcher tells each its rank and the world
size in the environment. Only the main process (rank 0) writes the run directory: it makes the run plan (creating
the directory, checking a checkpoint to resume) and hands it to the others over the process group, so that every
process trains the same resolved config in the same directory. The others report nothing; the main process speaks
for the run.

Whatever one process does that involves the others (a step, a checkpoint, an evaluation) all must do at the same
step, or those waiting for it wait until the process group times out. So a request made to any process (stop,
save now, evaluate now, a new patience; from the control channel, which the main process reads, or from a signal,
which each process gets) takes effect where the processes agree on it: between optimizer steps, everywhere at once.

Alone (no launcher), every function here answers for one process without importing torch.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from tuneterm.engine.events import EVENTS_FILE, RunStarted, iter_events
from tuneterm.hardware import gpu_index_of_uuid
from tuneterm.plan.memory import Strategy

T = TypeVar("T")

SUPERVISED_VARIABLE = "TUNETERM_SUPERVISED"
"""Set by the supervisor of a detached launch (launch/supervisor.py), which holds the run's lock itself and reports
a launcher that fails."""
CONTROL_FROM_VARIABLE = "TUNETERM_CONTROL_FROM"
"""Where in control.jsonl the requests to a supervised run begin: those made while it was starting count."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """The processes of this run on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def launched() -> bool:
    """Whether this process is one of several started by a launcher."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def supervised() -> bool:
    return os.environ.get(SUPERVISED_VARIABLE) == "1"


def control_from() -> int | None:
    """The offset in control.jsonl from which requests count; None: from when the run starts listening."""
    offset = os.environ.get(CONTROL_FROM_VARIABLE)
    return int(offset) if supervised() and offset else None


def strategy() -> Strategy:
    """How the launcher spreads the run, as `accelerate launch` tells its processes (torchrun alone: DDP)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed-zero3" if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "deepspeed-zero2"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    return "ddp" if launched() else "single"


def join(cpu: bool, timeout_seconds: float, backend: str | None = None) -> None:
    """Join the run's process group (NCCL on GPUs, gloo on CPUs, DeepSpeed's when launched for it) as the Trainer
    will, with the config's ddp_timeout: the Trainer reuses this group."""
    from accelerate import PartialState

    PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_seconds), **({"backend": backend} if backend else {}))


def from_main(make: Callable[[], T]) -> T:
    """`make()` on the main process, its result on every process. When it fails the main process raises its own
    error and the others a MainProcessFailed, so that none waits for a plan that will not come."""
    if not launched():
        return make()
    from torch.distributed import broadcast_object_list

    made: list[Any] = [None, False]
    error: BaseException | None = None
    if is_main():
        try:
            made = [make(), True]
        except BaseException as exc:  # noqa: BLE001 - raised below, after the others have been told
            error = exc
    broadcast_object_list(made, src=0)
    if error is not None:
        raise error
    if not made[1]:
        raise MainProcessFailed
    plan: T = made[0]
    return plan


class MainProcessFailed(Exception):
    """The main process could not make the run plan; it says why."""


def agreed(values: Sequence[int]) -> list[int]:
    """The largest of each value over all processes: a flag raised in any process is raised in all."""
    if not launched():
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(value) for value in tensor.tolist()]


def ranks_unlike_main(value: str) -> list[int]:
    """The ranks whose `value` differs from the main process's (none when alone)."""
    if not launched():
        return []
    from torch.distributed import all_gather_object

    values: list[Any] = [None] * world_size()
    all_gather_object(values, value)
    return [number for number, other in enumerate(values) if other != values[0]]


def barrier() -> None:
    """Wait until every process got here (each has written its part of a checkpoint)."""
    if launched():
        import torch.distributed as dist

        dist.barrier()


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    if "gloo" in str(dist.get_backend()) or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def processes() -> list[dict[str, Any]]:
    """Every process of the run (rank, host, pid, and the GPU it trains on as NVML numbers it), in rank order."""
    this = {"rank": rank(), "host": socket.gethostname(), "pid": os.getpid(), "gpu": _this_gpu()}
    if not launched():
        return [this]
    from torch.distributed import all_gather_object

    everyone: list[Any] = [None] * world_size()
    all_gather_object(everyone, this)
    return everyone


def processes_on(started: RunStarted, host: str | None = None) -> list[dict[str, Any]]:
    """The run's processes (as its start listed them) on `host`, this machine unless said: only this machine's GPUs
    are NVML's to read, and only its process ids are this machine's to ask after."""
    host = host or socket.gethostname()
    return [p for p in started.processes if p.get("host") == host]


def ranks_by_gpu(started: RunStarted, host: str | None = None) -> dict[int, int]:
    """The GPUs (as nvidia-smi numbers them) that the run's processes on `host` (this machine unless said) train on,
    each with its process's rank: empty for a run on a CPU, on another machine, or recorded before RunStarted listed
    its processes."""
    return {p["gpu"]: p["rank"] for p in processes_on(started, host) if p.get("gpu") is not None}


def _this_gpu() -> int | None:
    """The NVML index of this process's GPU (the one nvidia-smi and the monitor show), None on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    return gpu_index_of_uuid(str(uuid)) if uuid is not None else None


_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "gloo",
               "ProcessGroup", "Socket Timeout")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether a collective operation failed: another process of the run is gone, or stopped answering."""
    if not launched():
        return False
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or any(sign in str(exc) for sign in _PEER_SIGNS)


def processes_left(run_dir: Path) -> list[int]:
    """The processes of a distributed run on this machine (as its last start listed them) that are still alive,
    when its lock no longer tells: the main process lets go of it before the others have exited."""
    if not (run_dir / EVENTS_FILE).is_file():
        return []
    started = [e for e in iter_events(run_dir / EVENTS_FILE) if isinstance(e, RunStarted)]
    if not started or started[-1].world_size < 2:
        return []
    return [p["pid"] for p in processes_on(started[-1]) if _alive(p["pid"])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
