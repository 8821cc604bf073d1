"""Starting a run, the same way from the command line and from the app.

`tuneterm train`, `tuneterm demo`, the wizard's launch and a run started again after a failure all begin here: a
new run directory (with its launch command written beside it when it trains on chosen GPUs, in several processes
or on several machines: engine/launch/command.py), a run resumed the way it was launched, or a directory prepared
for the process that a launch or a detached start runs. What follows is the caller's: training in this process,
running the launch, or starting it detached (start_detached_run), so that a run started either way is the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tuneterm.config import RunConfig, load_config
from tuneterm.engine.launch import distributed
from tuneterm.engine.launch.command import Launch, LaunchSpec, launch_for, prepare_launch
from tuneterm.engine.launch.detach import start_detached
from tuneterm.engine.run.plans import RunPlan, new_run, planned_by_main, prepared_run, resume_run
from tuneterm.engine.rundir.layout import CONFIG_FILE


@dataclass(frozen=True)
class StartingRun:
    """A run about to start: its plan, and the command that starts it when this process does not train it alone."""

    plan: RunPlan
    launch: Launch | None = None
    """The run's launch (chosen GPUs, several processes or machines); None: this process trains it."""

    @classmethod
    def new(cls, config: RunConfig, runs_root: Path, spec: LaunchSpec | None = None) -> StartingRun:
        """A new run directory under `runs_root`, with the launch `spec` asks for written beside it."""
        plan = planned_by_main(partial(new_run, config, runs_root), lambda: config)
        return cls(plan, prepare_launch(plan.run_dir, spec) if spec is not None else None)

    @classmethod
    def resumed(cls, run_dir: Path, overrides: Sequence[str] = ()) -> StartingRun:
        """A stopped or interrupted run, from its last complete checkpoint. A run launched on several GPUs (its
        launch.json) resumes the same way, started from here; a process of that launch trains its part itself."""
        launch = launch_for(run_dir, resume=True) \
            if not distributed.launched() and not distributed.supervised() else None
        plan = planned_by_main(partial(resume_run, run_dir, overrides, launch.spec.world_size if launch else None),
                               partial(load_config, run_dir / CONFIG_FILE, overrides=overrides))
        return cls(plan, launch)

    @classmethod
    def prepared(cls, run_dir: Path) -> StartingRun:
        """The run a launch or a detached start made its directory for, trained by this process."""
        return cls(planned_by_main(partial(prepared_run, run_dir), partial(load_config, run_dir / CONFIG_FILE)))

    @classmethod
    def again(cls, run_dir: Path, overrides: Sequence[str], resume: bool, runs_root: Path) -> StartingRun:
        """A run again with changed settings (`overrides`, --set's words): resumed from its last checkpoint, or
        started anew from its config in a new directory under `runs_root`."""
        if resume:
            return cls.resumed(run_dir, overrides)
        return cls.new(load_config(run_dir / CONFIG_FILE, overrides=overrides), runs_root)


def start_detached_run(plan: RunPlan) -> int:
    """Start (or resume) the planned run in a process of its own that outlives this one, the way its launch says
    when it has one; the id of that process."""
    return start_detached(plan.run_dir, resume=plan.resume_from is not None)
