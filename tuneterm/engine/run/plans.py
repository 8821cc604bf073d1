"""The plan of a run: a new run directory, a prepared one (a detached run starts this way), or a run resumed from
its last complete checkpoint after checking that what it started from is unchanged.

Under a launcher every process runs the same plan (planned_by_main): the main process makes it, the others receive
it, so that only one creates the run directory or checks the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tuneterm.config import RunConfig, load_config, parse_override
from tuneterm.engine.events import EVENTS_FILE, RunFinished, RunStarted, read_events
from tuneterm.engine.launch import distributed
from tuneterm.engine.launch.command import launch_for
from tuneterm.engine.loading import detect_device
from tuneterm.engine.rundir import fingerprint
from tuneterm.engine.rundir.layout import CONFIG_FILE, DEFAULT_RUNS_ROOT, create_run_dir, resume_point
from tuneterm.errors import ConfigError, Location, Problem, RunDirError
from tuneterm.plan.planner import startup_problems


@dataclass(frozen=True)
class RunPlan:
    config: RunConfig
    run_dir: Path
    resume_from: Path | None = None
    skipped: tuple[str, ...] = ()
    """Newer checkpoints that resuming passes over, each with why."""


def new_run(config: RunConfig, runs_root: Path = DEFAULT_RUNS_ROOT) -> RunPlan:
    """A new run directory holding the run's config from the start, so that a run which fails before training
    is still a run: listed as failed, with its config to start it again. A config that cannot start (no data, a
    mistyped path, an output directory in use) is refused before anything is written."""
    problems = startup_problems(config)
    if problems:
        raise ConfigError(problems)
    run_dir = create_run_dir(config, runs_root)
    run_config(config).save(run_dir / CONFIG_FILE)
    return RunPlan(config, run_dir)


def prepared_run(run_dir: Path) -> RunPlan:
    """A run directory made by new_run whose run has not started yet (a detached run starts this way)."""
    return RunPlan(load_config(run_dir / CONFIG_FILE), run_dir)


def run_config(config: RunConfig) -> RunConfig:
    """The config as a run directory keeps it: without the output directory, so that running it again makes a
    new run instead of being refused for writing into this one."""
    if not config.get("training.output_dir"):
        return config
    return config.resolved({"training.output_dir": (None, "each run gets a new directory; this one was "
                                                          f"{config.get('training.output_dir')}")})


def resume_run(run_dir: Path, overrides: Iterable[str] = (), world_size: int | None = None) -> RunPlan:
    """Continue a stopped or interrupted run from its last complete checkpoint, with its saved config, after
    checking that the data, the model and the config are still those the run started from, and that it resumes
    in as many processes as it trained in (`world_size`: this process's launch unless said). `overrides` (--set)
    may change only what does not change what is trained (the eval batch, gradient checkpointing, patience...)."""
    checkpoint, skipped = resume_point(run_dir)
    events_path = run_dir / EVENTS_FILE
    events = read_events(events_path) if events_path.exists() else []
    finished = [e for e in events if isinstance(e, RunFinished)]
    if finished and finished[-1].status in ("completed", "early_stopped"):
        raise RunDirError(f"{run_dir}: this run already {finished[-1].status.replace('_', ' ')}; "
                          f"start a new one with tuneterm train {run_dir / CONFIG_FILE}")
    started = [e for e in events if isinstance(e, RunStarted)]
    world_size = world_size or distributed.world_size()
    if started and started[-1].world_size != world_size:
        raise RunDirError(_other_world_size(run_dir, started[-1], world_size))
    config = load_config(run_dir / CONFIG_FILE, overrides=overrides)
    changing = {parse_override(text)[0] for text in overrides} - fingerprint.CHANGEABLE_ON_RESUME
    if changing:
        raise ConfigError([Problem("cannot change when resuming: the checkpoint's optimizer state and schedule "
                                   "belong to the run as it started; start a new run to change it (keys that may "
                                   f"change: {', '.join(sorted(fingerprint.CHANGEABLE_ON_RESUME))})",
                                   Location(key=key)) for key in sorted(changing)])
    if overrides:
        config.save(run_dir / CONFIG_FILE)
    changed = fingerprint.changes(config, run_dir)
    if changed:
        raise RunDirError(f"{run_dir}: cannot resume: what the run was started from has changed, and its "
                          "checkpoint's optimizer state and schedule belong to the original. "
                          + "; ".join(changed) + f". Start a new run instead: tuneterm train {run_dir / CONFIG_FILE}")
    return RunPlan(config, run_dir, checkpoint, tuple(skipped))


def _other_world_size(run_dir: Path, started: RunStarted, world_size: int) -> str:
    """Why a run resumes only with as many processes as it trained with, and how."""
    launch = launch_for(run_dir, resume=True)
    how = f": {launch.shell()}" if launch else " (under the same launcher settings)"
    return (f"{run_dir}: this run trained in {started.world_size} process{'es' if started.world_size > 1 else ''} "
            f"and would resume in {world_size}: its checkpoint's optimizer state, data order and schedule belong "
            f"to {started.world_size}. Resume it the way it ran{how}")


def planned_by_main(make: Callable[[], RunPlan], settings: Callable[[], RunConfig]) -> RunPlan:
    """The run plan made once. Alone, by this process; under a launcher, by the main process (which creates the run
    directory or checks the checkpoint), handed to every other so that all train the same plan. `settings` is the
    config every process reads first, to join the process group as the Trainer would (ddp_timeout, ddp_backend)."""
    if not distributed.launched():
        return make()
    config = settings()
    distributed.join(cpu=bool(config.get("training.use_cpu")) or detect_device().kind != "cuda",
                     timeout_seconds=config.get("training.ddp_timeout", DDP_TIMEOUT_SECONDS),
                     backend=config.get("training.ddp_backend"))
    return distributed.from_main(make)


DDP_TIMEOUT_SECONDS = 1800
"""TrainingArguments' default: how long a process waits for the others at a collective operation."""
