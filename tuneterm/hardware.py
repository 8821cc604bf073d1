"""What the machine has: every NVIDIA GPU through NVML (nvidia-ml-py), the CPU and RAM through psutil.

NVML is initialised once, on first use, and nothing here raises: a machine without a driver gets an empty GPU
list with the reason, and a reading a GPU does not support (power on some boards, temperature in some VMs) is
None, shown as "n/a". The plan screen polls these readings while a person edits settings, and the monitor
polls them during training, so they must be cheap and never take the program down.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tuneterm.errors import ConfigError, Location, Problem

BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere: A100, RTX 30xx and newer


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    memory_total: int
    memory_used: int
    memory_free: int
    utilization: int | None
    """Percent of time a kernel was running over the last sample period."""
    temperature: int | None
    """Degrees Celsius."""
    power_watts: float | None
    power_limit_watts: float | None
    compute_capability: tuple[int, int] | None

    @property
    def bf16(self) -> bool | None:
        """Whether the GPU trains in bf16 (compute capability 8.0 or newer), None when unknown."""
        if self.compute_capability is None:
            return None
        return self.compute_capability >= BF16_MIN_COMPUTE_CAPABILITY


@dataclass(frozen=True)
class GpuSurvey:
    gpus: tuple[GpuReading, ...]
    driver: str | None = None
    reason: str = ""
    """Why the list is empty (no driver, no GPU, NVML error); empty when GPUs were read."""

    def only(self, indices: Iterable[int]) -> GpuSurvey:
        """The GPUs a run is to use (NVML indices, as nvidia-smi numbers them)."""
        chosen = set(indices)
        gpus = tuple(g for g in self.gpus if g.index in chosen)
        return GpuSurvey(gpus, self.driver, self.reason if gpus else f"none of GPUs {sorted(chosen)} was found")


@dataclass(frozen=True)
class HostReading:
    cpu_count: int
    cpu_percent: float
    memory_total: int
    memory_available: int


class _Nvml:
    """NVML, initialised lazily and once; its failure is kept as a reason instead of raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self._failure: str | None = None

    def module(self) -> tuple[Any, str | None]:
        with self._lock:
            if self._module is None and self._failure is None:
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._module = pynvml
                except ImportError:
                    self._failure = "nvidia-ml-py is not installed"
                except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
                    self._failure = f"no NVIDIA driver available ({_nvml_message(exc)})"
            return self._module, self._failure


def _nvml_message(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


_NVML = _Nvml()


Reading = TypeVar("Reading")


def _optional(read: Callable[[], Reading]) -> Reading | None:
    try:
        return read()
    except Exception:  # a reading this GPU or driver does not support
        return None


def read_gpus() -> GpuSurvey:
    nvml, failure = _NVML.module()
    if nvml is None:
        return GpuSurvey((), reason=failure or "NVML unavailable")
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        return GpuSurvey((), reason=f"NVML could not count GPUs ({_nvml_message(exc)})")
    if count == 0:
        return GpuSurvey((), driver=_optional(nvml.nvmlSystemGetDriverVersion), reason="no NVIDIA GPU found")
    gpus = []
    for index in range(count):
        reading = _read_gpu(nvml, index)
        if reading is not None:
            gpus.append(reading)
    reason = "" if gpus else "NVML found GPUs but could not read any"
    return GpuSurvey(tuple(gpus), driver=_optional(nvml.nvmlSystemGetDriverVersion), reason=reason)


def _read_gpu(nvml: Any, index: int) -> GpuReading | None:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:
        return None
    name = _optional(lambda: nvml.nvmlDeviceGetName(handle)) or f"GPU {index}"
    power = _optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    limit = _optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    return GpuReading(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_total=int(memory.total),
        memory_used=int(memory.used),
        memory_free=int(memory.free),
        utilization=_optional(lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        temperature=_optional(lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
        power_watts=power / 1000 if power is not None else None,
        power_limit_watts=limit / 1000 if limit is not None else None,
        compute_capability=_optional(lambda: tuple(nvml.nvmlDeviceGetCudaComputeCapability(handle))),
    )


def gpu_index_of_uuid(uuid: str) -> int | None:
    """The NVML index of the GPU with this UUID (as torch or nvidia-smi give it), None when NVML cannot tell: how a
    process under CUDA_VISIBLE_DEVICES finds which of the machine's GPUs it has."""
    nvml, _ = _NVML.module()
    if nvml is None:
        return None
    name = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    return _optional(lambda: int(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(name))))


def hypothetical_gpu(free_gigabytes: float) -> GpuSurvey:
    """A GPU to plan for from another machine: this much free memory, bf16-capable (Ampere or newer)."""
    size = int(free_gigabytes * 1e9)
    reading = GpuReading(index=0, name=f"planned GPU with {free_gigabytes:g} GB free", memory_total=size,
                         memory_used=0, memory_free=size, utilization=None, temperature=None, power_watts=None,
                         power_limit_watts=None, compute_capability=BF16_MIN_COMPUTE_CAPABILITY)
    return GpuSurvey((reading,), reason="given with --gpu-memory")


def read_host() -> HostReading:
    import psutil

    memory = psutil.virtual_memory()
    return HostReading(cpu_count=psutil.cpu_count() or 1, cpu_percent=psutil.cpu_percent(interval=None),
                       memory_total=int(memory.total), memory_available=int(memory.available))


# --------------------------------------------------------------------------------------------------------------
# The device a run trains on, and the precision that follows from it


@dataclass(frozen=True)
class Device:
    kind: str
    """"cuda", "mps" or "cpu"."""
    name: str
    bf16: bool
    """Whether this device trains in bf16 (Ampere or newer for NVIDIA GPUs)."""


CPU = Device("cpu", "CPU", False)


def device_from_survey(survey: GpuSurvey) -> Device:
    """The device a run would use, judged from NVML (the first GPU, as the Trainer picks it)."""
    if not survey.gpus:
        return CPU
    first = survey.gpus[0]
    return Device("cuda", first.name, bool(first.bf16))


def resolve_precision(setting: str, device: Device) -> tuple[str, str]:
    """The precision to train in, and why; a precision the device cannot train in is a ConfigError."""
    if setting == "auto":
        if device.kind != "cuda":
            return "fp32", f"auto: mixed precision needs a GPU; {device.name} trains in fp32"
        if device.bf16:
            return "bf16", f"auto: {device.name} supports bf16, whose wide range cannot underflow gradients"
        return "fp16", f"auto: {device.name} has no bf16, so fp16 with loss scaling"
    where = Location(key="training.precision")
    if setting == "fp16" and device.kind != "cuda":
        raise ConfigError([Problem(f"fp16 needs a CUDA GPU and this machine has {device.name}; use auto", where)])
    if setting == "bf16" and device.kind == "cuda" and not device.bf16:
        raise ConfigError([Problem(f"bf16 is not supported by {device.name} (it needs an Ampere or newer GPU); use "
                                   "auto, which picks fp16 with loss scaling", where)])
    return setting, "set in the config"


BUSY_CORE_PERCENT = 50.0


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity, where the system has one)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def busy_cores(sample_seconds: float = 0.3) -> list[int]:
    """The cores this process may run on that are busy now (over BUSY_CORE_PERCENT for `sample_seconds`)."""
    import psutil

    busy_by_core = psutil.cpu_percent(interval=sample_seconds, percpu=True)
    return [core for core in usable_cores() if core < len(busy_by_core) and busy_by_core[core] >= BUSY_CORE_PERCENT]


def choose_cpu_threads(setting: int | str, sample_seconds: float = 0.3, processes: int = 1) -> tuple[int, str]:
    """Threads for training on the CPU, and why: a number given in the config, or one per core that is free now;
    with several processes of one run on this machine, an equal share of the cores each.

    PyTorch starts one thread per core and its threads wait for each other at every operation: when another
    process holds a core, every step waits for the slowest thread (bench/cpu_threads.py measures it).
    """
    if setting != "auto":
        return int(setting), "set in the config"
    usable = usable_cores()
    if processes > 1:  # the other processes are busy starting too: their cores are not someone else's work
        share = max(1, len(usable) // processes)
        return share, f"auto: {len(usable)} cores shared by the {processes} processes of this run on this machine"
    busy = busy_cores(sample_seconds)
    threads = max(1, len(usable) - len(busy))
    if not busy:
        return threads, f"auto: one per core ({len(usable)} cores, none busy when the run started)"
    return threads, (f"auto: {len(busy)} of {len(usable)} cores were busy with other work when the run started "
                     f"(over {BUSY_CORE_PERCENT:.0f}%), and threads that share a busy core slow every step")


# --------------------------------------------------------------------------------------------------------------
# What a GPU can compute, for MFU

# Dense (not 2:4 sparse) 16-bit tensor-core peaks in TFLOP/s from NVIDIA's datasheets, bf16 and fp16 alike, by a
# piece of the name NVML and torch give the GPU; the more specific names first. None: no published figure (AWS's A10G
# is a variant of the A10 whose peak NVIDIA does not publish).
_PEAK_TFLOPS_16BIT: tuple[tuple[str, float | None], ...] = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H100", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A40", 150.0), ("A30", 165.0), ("A10G", None), ("A10", 125.0), ("V100", 125.0), ("T4", 65.0))


def peak_flops(device: Device, precision: str) -> tuple[float | None, str]:
    """The device's dense tensor peak in FLOP/s for training in `precision`, or None with the reason (the
    denominator of MFU, which is then not shown rather than guessed)."""
    if device.kind != "cuda":
        return None, f"n/a on {device.name}"
    if precision not in ("bf16", "fp16"):
        return None, f"n/a in {precision} (the peaks are 16-bit tensor-core peaks)"
    for piece, tflops in _PEAK_TFLOPS_16BIT:
        if piece.lower() in device.name.lower():
            if tflops is None:
                break
            return tflops * 1e12, f"{device.name}: {tflops:g} TFLOP/s dense {precision} (NVIDIA's datasheet)"
    return None, f"n/a: the peak of {device.name} is not known to tuneterm"
