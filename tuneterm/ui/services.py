"""What the app reads from the machine and the world, gathered in one object so tests can replace it.

The app never calls NVML, psutil, the Hugging Face cache, the clock or the engine's runner directly: it asks these
services. The command line builds them from the real machine; tests build them with a fixed GPU, a temporary runs
directory and a frozen clock, so that screens are the same on every machine, and may replay a recorded run instead
of training one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuneterm.demo import built_demo_dir, demo_dir
from tuneterm.engine.experiment.runner import RunTrainer, engine_run
from tuneterm.hardware import GpuSurvey, HostReading, read_gpus, read_host
from tuneterm.plan.catalog import ModelEntry, cached_models


@dataclass
class Services:
    runs_dir: Path = Path("runs")
    read_gpus: Callable[[], GpuSurvey] = read_gpus
    read_host: Callable[[], HostReading] = read_host
    cached_models: Callable[[], list[ModelEntry]] = cached_models
    model_roots: tuple[Path, ...] = field(default_factory=lambda: (Path.cwd(),))
    """Where local model directories are looked for (two levels deep)."""
    demo_dir: Callable[[bool], Path] = demo_dir
    """Builds the demo model and data on first use (seconds), then returns where they are."""
    built_demo: Callable[[bool], Path | None] = built_demo_dir
    """Where the demo is when it has been built already (listing models never builds it)."""
    now: Callable[[], float] = time.time
    over_ssh: bool = field(default_factory=lambda: bool(os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY")))
    """Launching detaches by default in an SSH session: a dropped connection must never cost a run."""
    train_run: RunTrainer = engine_run
    """Trains a run started in the app (or each run of an experiment started in it), in the app's worker thread."""
