"""Running an experiment: its variations one after another in this process, or one per GPU side by side.

One after another, every variation trains in this process through the engine's runner (the very function
`tuneterm train` calls), so the training libraries are imported once for all of them, and each run is an ordinary
run: its own directory, lock, events, control channel and card. Side by side, each variation is started detached
on a GPU of its own, as `tuneterm train --gpus N --detach` starts a run, and watched until it ends.

The experiment holds its own lock while it runs (EXPERIMENT_DIR/.lock) and reads its own control channel
(EXPERIMENT_DIR/control.jsonl): `tuneterm stop EXPERIMENT_DIR`, the app's stop key, a signal or a closed terminal
ask the experiment to stop, which asks the run in progress to stop after its step, with a checkpoint, and starts
no other. A run stopped on its own (`tuneterm stop RUN_DIR`) stops alone: the experiment goes on with the next.
A variation that fails is recorded with its reason and the others go on. Started again (`tuneterm experiment
--resume`), an experiment goes on where it was: what ended stays as it ended, a run that was stopped or cut off
resumes from its last complete checkpoint, and what never ran starts.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tuneterm.config import load_config
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    EVENTS_FILE,
    Event,
    EventLog,
    EventSink,
    ExperimentEnded,
    ExperimentStarted,
    RunFailed,
    RunFinished,
    VariationEnded,
    read_events,
)
from tuneterm.engine.experiment.definition import Variation
from tuneterm.engine.experiment.directory import Experiment, read_experiment
from tuneterm.engine.experiment.results import ENDED, RESUMABLE, results_of
from tuneterm.engine.experiment.tables import write_results
from tuneterm.engine.launch.channel import ChannelListener
from tuneterm.engine.launch.command import LaunchSpec, build_launch, write_launch
from tuneterm.engine.launch.detach import start_detached, start_in_session
from tuneterm.engine.launch.handle import RunHandle
from tuneterm.engine.run.plans import RunPlan
from tuneterm.engine.run.start import StartingRun, start_detached_run
from tuneterm.engine.rundir.layout import holding_run_lock, is_live, last_complete_checkpoint
from tuneterm.engine.rundir.runs import summarise_run
from tuneterm.errors import TuneTermError

EXPERIMENT_LOG = "experiment.log"
"""The output of an experiment that runs detached (and of its runs, one after another)."""
POLL_SECONDS = 1.0

RunTrainer = Callable[[RunPlan, EventSink, RunControl], Event]
"""Trains a run to its end, reporting to the sink and listening to the control; returns the last event (RunFinished
or RunFailed). The engine's runner; the app's tests replay a recorded run instead."""


class ExperimentControl(RunControl):
    """The experiment's control: a stop asked of it is asked of every run it has in progress, and no run starts
    after it. What else a control takes (save now, evaluate now, patience) is for a run: ask the run."""

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict[Path, Callable[[str], object]] = {}
        self._runs_lock = threading.Lock()

    def request_stop(self, reason: str = "requested") -> bool:
        first = super().request_stop(reason)
        with self._runs_lock:
            stops = list(self._runs.values())
        for stop in stops:
            stop(reason)
        return first

    def watch(self, run_dir: Path, stop: Callable[[str], object]) -> None:
        """A run in progress, stopped by `stop(reason)` when the experiment is (at once, if it is stopping)."""
        with self._runs_lock:
            self._runs[run_dir] = stop
        if self.stop_requested:
            stop(self.stop_reason)

    def unwatch(self, run_dir: Path) -> None:
        with self._runs_lock:
            self._runs.pop(run_dir, None)

    @contextlib.contextmanager
    def running(self, run_dir: Path, stop: Callable[[str], object]) -> Iterator[None]:
        self.watch(run_dir, stop)
        try:
            yield
        finally:
            self.unwatch(run_dir)


def engine_run(plan: RunPlan, sink: EventSink, control: RunControl) -> Event:
    """The engine's runner, imported when the first variation starts."""
    from tuneterm.engine.run.runner import run

    return run(plan, sink, control)


def run_experiment(directory: Path, control: ExperimentControl | None = None, train_run: RunTrainer = engine_run,
                   run_sink: Callable[[Variation], EventSink] = lambda variation: lambda event: None,
                   say: Callable[[str], object] = lambda text: None) -> ExperimentEnded:
    """Run what is left of the experiment to its end, or until it is asked to stop; its README.md and results.json
    are written again as each variation ends, with curves.png at the end. `run_sink(variation)` watches each run's
    events, `say` hears what the experiment does (a line each)."""
    experiment = read_experiment(directory)
    control = control or ExperimentControl()
    # The channel is read from before the lock is taken: whoever sees the experiment live may ask it to stop.
    with ChannelListener(directory, control), holding_run_lock(directory), \
            EventLog(directory / EVENTS_FILE) as emit:
        before = read_events(directory / EVENTS_FILE, lambda skipped: None)
        left = [v for v in experiment.runnable if state_of(experiment, v) not in ENDED]
        emit(ExperimentStarted(variations=[v.name for v in left], gpus=list(experiment.gpus),
                               resumed=any(isinstance(e, ExperimentStarted) for e in before)))
        say(f"Experiment {experiment.name}: {len(left)} of {len(experiment.runnable)} variations to run"
            + (f", one per GPU on GPUs {', '.join(map(str, experiment.gpus))}" if experiment.gpus else ""))
        runs = _Runs(experiment, control, emit, say)
        if experiment.gpus:
            runs.side_by_side(left)
        else:
            runs.one_after_another(left, train_run, run_sink)
        ended = (ExperimentEnded(status="stopped", reason=control.stop_reason) if control.stop_requested
                 else ExperimentEnded(status="finished"))
        emit(ended)
        write_results(results_of(experiment))
        say(f"Experiment {experiment.name} {ended.status}" + (f" ({ended.reason})" if ended.reason else "")
            + f"; its table: {directory / 'README.md'}")
        return ended


def state_of(experiment: Experiment, variation: Variation) -> str:
    """pending (no run yet), or its run's status (running, completed, stopped, failed...)."""
    summary = summarise_run(experiment.run_dir(variation))
    return "pending" if summary is None else summary.status


class _Runs:
    """The variations of one start of the experiment, and what it says of each as it ends."""

    def __init__(self, experiment: Experiment, control: ExperimentControl, emit: EventSink,
                 say: Callable[[str], object]):
        self.experiment, self.control, self.emit, self.say = experiment, control, emit, say
        self.count = len(experiment.runnable)

    def label(self, variation: Variation) -> str:
        return f"[{self.experiment.runnable.index(variation) + 1}/{self.count}] {variation.name}"

    def starting(self, variation: Variation, spec: LaunchSpec | None = None) -> StartingRun:
        """Its run as it stands: new, resumed from its last complete checkpoint, or its prepared directory again
        (a run cut off before its first checkpoint)."""
        run_dir = self.experiment.run_dir(variation)
        if summarise_run(run_dir) is None:
            return StartingRun.new(load_config(self.experiment.config_path(variation)), self.experiment.directory,
                                   spec)
        checkpoint, _ = last_complete_checkpoint(run_dir)
        if spec is not None:
            write_launch(build_launch(run_dir, spec))  # on the GPU free now, whichever it ran on before
        return StartingRun.resumed(run_dir) if checkpoint is not None else StartingRun.prepared(run_dir)

    def ended(self, variation: Variation, status: str, reason: str = "") -> None:
        run_dir = self.experiment.run_dir(variation)
        self.emit(VariationEnded(variation=variation.name, status=status, reason=reason,
                                 run_dir=str(run_dir) if run_dir.is_dir() else None))
        self.say(f"{self.label(variation)}: {status.replace('_', ' ')}" + (f": {reason}" if reason else ""))
        with contextlib.suppress(OSError, TuneTermError):  # the table is written again at the end all the same
            write_results(results_of(self.experiment), curves=False)

    def one_after_another(self, left: list[Variation], train_run: RunTrainer,
                          run_sink: Callable[[Variation], EventSink]) -> None:
        for variation in left:
            if self.control.stop_requested:
                return
            run_dir = self.experiment.run_dir(variation)
            if state_of(self.experiment, variation) == "running":  # another process runs it (a scheduler's job)
                self.say(f"{self.label(variation)}: running in another process; waiting for its end")
                self.wait_for([variation])
                continue
            try:
                starting = self.starting(variation)
            except TuneTermError as exc:
                self.ended(variation, "failed", f"it could not start: {exc}")
                continue
            self.say(f"{self.label(variation)}: {'resuming' if starting.plan.resume_from else 'training'} in "
                     f"{run_dir}")
            run_control = RunControl()
            with self.control.running(run_dir, run_control.request_stop):
                result = train_run(starting.plan, run_sink(variation), run_control)
            if isinstance(result, RunFinished):
                self.ended(variation, result.status)
            else:
                self.ended(variation, "failed", result.reason if isinstance(result, RunFailed) else "")

    def side_by_side(self, left: list[Variation]) -> None:
        """Each variation detached on a GPU of its own, the next started on the first GPU that is free."""
        queue, free = list(left), list(self.experiment.gpus)
        running: dict[Path, tuple[Variation, int]] = {}
        while queue or running:
            while queue and free and not self.control.stop_requested:
                variation, gpu = queue.pop(0), free.pop(0)
                if state_of(self.experiment, variation) == "running":
                    free.append(gpu)
                    self.wait_for([variation])
                    continue
                run_dir = self.experiment.run_dir(variation)
                try:
                    starting = self.starting(variation, LaunchSpec(gpus=(gpu,)))
                    if starting.plan.resume_from is None:
                        start_detached_run(starting.plan)
                    else:
                        start_detached(run_dir, resume=True)
                except TuneTermError as exc:
                    free.append(gpu)
                    self.ended(variation, "failed", f"it could not start: {exc}")
                    continue
                self.control.watch(run_dir, RunHandle(run_dir).stop)
                running[run_dir] = (variation, gpu)
                self.say(f"{self.label(variation)}: training on GPU {gpu} in {run_dir}")
            if not running:
                return
            time.sleep(POLL_SECONDS)
            for run_dir, (variation, gpu) in list(running.items()):
                if not is_live(run_dir):
                    del running[run_dir]
                    free.append(gpu)
                    self.control.unwatch(run_dir)
                    self.report_end(variation)

    def wait_for(self, variations: list[Variation]) -> None:
        """Runs of another process: waited for (and asked to stop when the experiment is), then recorded."""
        for variation in variations:
            run_dir = self.experiment.run_dir(variation)
            with self.control.running(run_dir, RunHandle(run_dir).stop):
                while is_live(run_dir):
                    time.sleep(POLL_SECONDS)
            self.report_end(variation)

    def report_end(self, variation: Variation) -> None:
        summary = summarise_run(self.experiment.run_dir(variation))
        status = summary.status if summary is not None else "failed"
        self.ended(variation, status, summary.reason if summary is not None else "its run directory is gone")


def start_detached_experiment(directory: Path) -> int:
    """Run (or go on with) the experiment in a process and session of its own that outlives this terminal, its
    output in EXPERIMENT_DIR/experiment.log; its process id once it holds the experiment's lock."""
    command = [sys.executable, "-m", "tuneterm", "experiment", "--run", str(directory.resolve())]
    return start_in_session(command, directory, directory / EXPERIMENT_LOG, what="the experiment")


def resumable(experiment: Experiment) -> bool:
    """Whether starting it again would run anything: a variation never run, stopped, or cut off."""
    return not is_live(experiment.directory) and any(
        state_of(experiment, v) in ("pending", *RESUMABLE) for v in experiment.runnable)
