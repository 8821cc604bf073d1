"""`tuneterm train`: a run without the app, from a config, a preset or --set words, or resumed from its run
directory; in this process, detached in a process of its own, or through a launch on chosen GPUs, several
processes or several machines (whose command it prints).

It is also the process every launch runs (`train --prepared RUN_DIR`, or `--resume` under the launcher), so the
same command speaks for the run in the main process and only of failing in the others.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tuneterm.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Subcommands,
    config_arguments,
    runs_dir_argument,
)
from tuneterm.config import load_config

if TYPE_CHECKING:
    from tuneterm.engine.run.plans import RunPlan


def add_parser(subcommands: Subcommands) -> None:
    from tuneterm.plan.memory import STRATEGIES

    train = subcommands.add_parser("train", help="train headless from a config file",
                                   description="Train from CONFIG.yaml without the TUI, printing progress.")
    config_arguments(train)
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue a stopped or interrupted run from its last complete checkpoint")
    runs_dir_argument(train)
    train.add_argument("--detach", action="store_true",
                       help="run in a process of its own that outlives the terminal; print its run directory")
    train.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)  # the process --detach starts
    launch = train.add_argument_group("several GPUs or machines (a new run: started through accelerate launch, "
                                      "whose command is printed and kept in the run directory)")
    launch.add_argument("--gpus", metavar="LIST", help="GPUs to train on, as nvidia-smi numbers them: 0,1 or 0-3")
    launch.add_argument("--strategy", choices=STRATEGIES,
                        help="how the GPUs share the work (default: single for one GPU, ddp for more)")
    launch.add_argument("--cpu-processes", type=int, metavar="N", help="N processes on the CPU instead of GPUs")
    launch.add_argument("--machines", type=int, default=1, metavar="N",
                        help="machines training together, each with the same GPUs (this one is machine 0)")
    launch.add_argument("--main-address", metavar="HOST[:PORT]",
                        help="this machine's address as the others reach it, with --machines")
    train.set_defaults(command=run, name="train")


def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.launch import distributed
    from tuneterm.engine.launch.command import launch_spec
    from tuneterm.engine.launch.detach import LOG_FILE
    from tuneterm.engine.launch.supervisor import supervise
    from tuneterm.engine.run.start import StartingRun, start_detached_run
    from tuneterm.plan.planner import check_before_start

    spec = launch_spec(args.gpus, args.strategy, args.cpu_processes, args.machines, args.main_address)
    if args.resume and (args.config or args.preset):
        print("tuneterm train --resume takes the run directory (and --set for what may change on resume): a "
              "resumed run keeps its own config.yaml", file=sys.stderr)
        return EXIT_USAGE
    if spec is not None and (args.resume or args.prepared or distributed.launched()):
        print("tuneterm train: --gpus, --strategy, --cpu-processes and --machines launch a new run; a run resumes "
              "the way it was launched", file=sys.stderr)
        return EXIT_USAGE
    if args.prepared:
        starting = StartingRun.prepared(args.prepared)
    elif args.resume:
        starting = StartingRun.resumed(args.resume, args.overrides)
    elif args.config is None and args.preset is None and not args.overrides:
        print("tuneterm train: give a CONFIG.yaml (or --preset, or --set KEY=VALUE for each setting), or "
              "--resume RUN_DIR", file=sys.stderr)
        return EXIT_USAGE
    else:
        config = load_config(args.config, preset=args.preset, overrides=args.overrides)
        if not distributed.launched():  # (under a launcher, the main process's run reads the data for all)
            check_before_start(config)
        starting = StartingRun.new(config, args.runs_dir, spec)
    plan, launch = starting.plan, starting.launch
    if launch is not None:
        print(f"Command: {launch.shell()}", flush=True)
        for machine in range(1, launch.spec.num_machines):
            print(f"  machine {machine} runs: {launch.on_machine(machine).shell()}", flush=True)
    if args.detach and not distributed.launched():
        pid = start_detached_run(plan)
        print(f"Run directory: {plan.run_dir}\nRunning detached (process {pid}); it goes on when this terminal "
              f"closes. Its output: {plan.run_dir / LOG_FILE}\n"
              f"  watch it:  tuneterm monitor {plan.run_dir}\n  stop it:   tuneterm stop {plan.run_dir}")
        return EXIT_OK
    if launch is not None:
        return EXIT_OK if supervise(plan.run_dir, list(launch.argv), launch.env, echo=True) == 0 else EXIT_FAILED
    return run_headless(plan)


def run_headless(plan: RunPlan) -> int:
    """Train the planned run in this process, printing its progress (the main process of a launch) or only its
    failure (the others); ctrl+c or a signal stops it after the current step, with a checkpoint, and a second one
    ends it at once. Its output may outlive the terminal: what cannot reach it is dropped, never a failure."""
    from tuneterm.console import ConsoleProgress, write_line
    from tuneterm.engine.control import RunControl
    from tuneterm.engine.events import RunFailed, RunFinished
    from tuneterm.engine.launch import distributed
    from tuneterm.engine.launch.signals import StopOnSignals
    from tuneterm.engine.run.runner import run as run_plan

    main = distributed.is_main()  # under a launcher the main process speaks for the run, the others only of failing
    if main:
        write_line(f"Run directory: {plan.run_dir}", sys.stdout)
    control = RunControl()
    announce = (lambda message: write_line(f"\n{message}", sys.stderr)) if main else (lambda message: None)
    with StopOnSignals(control, announce, echo_seconds=2.0 if distributed.launched() else 0.0,
                       abort=lambda name: _abort(plan, main, name)):
        result = run_plan(plan, ConsoleProgress() if main else None, control)
    if not main and isinstance(result, RunFailed):
        write_line(f"[rank {distributed.rank()}] {ConsoleProgress().format(result)}", sys.stderr)
    return EXIT_OK if isinstance(result, RunFinished) else EXIT_FAILED


def _abort(plan: RunPlan, main: bool, signal_name: str) -> NoReturn:
    """The second signal: the run is recorded as aborted, said in one line, and the process ends on the spot, from
    wherever the main thread was (a save in C++, a finalizer): nothing of the run's may run after it."""
    from tuneterm.engine.events import EVENTS_FILE, EventLog, RunFailed
    from tuneterm.engine.rundir.layout import last_complete_checkpoint

    try:
        if main:  # the disk or the terminal may be gone: the abort stands all the same
            with contextlib.suppress(OSError):
                checkpoint, _ = last_complete_checkpoint(plan.run_dir)
                with EventLog(plan.run_dir / EVENTS_FILE) as emit:
                    emit(RunFailed(reason=f"aborted by a second signal ({signal_name}); continue with: tuneterm "
                                          f"train --resume {plan.run_dir}", error_type="Aborted",
                                   last_good_checkpoint=str(checkpoint) if checkpoint else None))
            # Straight to the descriptor: the signal may have come in the middle of a write to sys.stderr.
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), f"\nAborted. Continue from the last complete checkpoint with: tuneterm "
                                              f"train --resume {plan.run_dir}\n".encode())
    finally:
        os._exit(EXIT_INTERRUPTED)
