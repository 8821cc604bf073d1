"""`tuneterm experiment`: a base config and its variations (a grid, a list, or both), planned before anything runs,
run one after another (or one per GPU side by side) detached by default, and compared in a table with the best
marked by eval loss. Also: going on with a stopped experiment, the table of one, and the `tuneterm train` line of
each variation for a scheduler or several machines."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn

from tuneterm.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Subcommands,
    config_arguments,
    library_output_routed,
    runs_dir_argument,
)
from tuneterm.config import load_config


def add_parser(subcommands: Subcommands) -> None:
    experiment = subcommands.add_parser(
        "experiment", help="run variations of a config and compare them",
        description="Variations of a run config, each a run of its own in one experiment directory: planned before "
                    "anything runs, run one after another (detached, unless --foreground), and compared in a table "
                    "whose best is marked by eval loss, in EXPERIMENT_DIR/README.md and the app (tuneterm monitor "
                    "EXPERIMENT_DIR).",
        epilog="Examples: tuneterm experiment run.yaml --vary lora.r=8,16,32 --vary training.learning_rate=1e-4,2e-4 | "
               "tuneterm experiment run.yaml --vary 'lora.r,lora.lora_alpha=[[8,16],[16,32],[32,64]]' | tuneterm "
               "experiment run.yaml --variation 'lora.r=32' --variation 'training.num_train_epochs=5' (the base runs "
               "too) | an experiments: section in run.yaml (see the README)")
    config_arguments(experiment)
    experiment.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                            help="an axis of a grid (every combination of the axes runs): its values, comma-separated "
                                 "or as a YAML list (KEY=[V1, V2]); keys that change together: "
                                 "'KEY1,KEY2=[[A1,B1],[A2,B2]]' (repeatable)")
    experiment.add_argument("--variation", action="append", default=[], metavar="'KEY=VALUE ...'",
                            help="one variation, as --set words; the base config runs too, to compare (repeatable)")
    experiment.add_argument("--name", dest="experiment_name",
                            help="the experiment's name (default: from the keys varied)")
    experiment.add_argument("--out", type=Path, metavar="DIR",
                            help="the experiment's directory (default: RUNS_DIR/DATE-TIME-NAME); new or empty")
    runs_dir_argument(experiment)
    experiment.add_argument("--measure-noise", action="store_true",
                            help="train the first variation again with another seed: the difference of the two is "
                                 "the noise between seeds, under which a difference is called a tie")
    experiment.add_argument("--gpus", metavar="LIST",
                            help="one variation per GPU, side by side (0,1 or 0-3), each where it fits")
    experiment.add_argument("--foreground", action="store_true",
                            help="run in this terminal, printing progress (ctrl+c stops after the current step)")
    what = experiment.add_mutually_exclusive_group()
    what.add_argument("--plan", action="store_true", help="print each variation's plan and run nothing")
    what.add_argument("--print-commands", action="store_true",
                      help="write the experiment's directory and print one `tuneterm train` per variation (each "
                           "trains it into its run directory there), for a scheduler or several machines; run "
                           "nothing")
    what.add_argument("--resume", type=Path, metavar="EXPERIMENT_DIR",
                      help="go on with a stopped experiment where it was")
    what.add_argument("--results", type=Path, metavar="EXPERIMENT_DIR",
                      help="print an experiment's table, and write its README.md, curves.png and results.json again")
    what.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # the process a detached experiment runs
    experiment.set_defaults(command=run, name="experiment")


def run(args: argparse.Namespace) -> int:
    if args.run is not None:
        return run_here(args.run)
    if args.results is not None:
        return _results(args.results)
    if args.resume is not None:
        return _resume(args.resume, args.foreground)
    directory = _new(args)
    if directory is None:
        return EXIT_OK
    return run_here(directory) if args.foreground else _detach(directory)


@library_output_routed
def _new(args: argparse.Namespace) -> Path | None:
    """The experiment planned and printed; its directory written, unless only the plan was asked for. ConfigError
    when no variation can run."""
    from tuneterm.engine.experiment.definition import read_section, spec_of
    from tuneterm.engine.experiment.directory import list_experiments, new_experiment_dir, write_experiment
    from tuneterm.engine.experiment.plan import (
        format_experiment_plan,
        measured_rate,
        plan_experiment,
        side_by_side_problems,
        with_not_run,
    )
    from tuneterm.engine.launch.command import launch_spec
    from tuneterm.errors import ConfigError
    from tuneterm.hardware import device_from_survey, read_gpus
    from tuneterm.plan.planner import make_plan

    config = load_config(args.config, preset=args.preset, overrides=args.overrides)
    source = str(args.config) if args.config else " ".join(
        [*([f"--preset {args.preset}"] if args.preset else []), *(f"--set {o}" for o in args.overrides)])
    side_by_side = launch_spec(args.gpus) if args.gpus else None
    gpus = side_by_side.gpus if side_by_side is not None else ()
    spec = spec_of(config, source, args.vary, args.variation, args.experiment_name,
                   read_section(args.config) if args.config else None, args.measure_noise, gpus)
    survey = read_gpus()
    if gpus:
        problems = side_by_side_problems(gpus, survey)
        if problems:
            raise ConfigError(problems, summary="Cannot run side by side:")
    planned_on = survey.only(gpus) if gpus else survey.only([survey.gpus[0].index]) if survey.gpus else survey
    roots = [args.runs_dir, *(e.directory for e in list_experiments(args.runs_dir))]
    plan = plan_experiment(spec, lambda variation: make_plan(variation, gpus=planned_on),
                           measured_rate(config, device_from_survey(planned_on).name, roots))
    print(format_experiment_plan(plan), flush=True)
    if not plan.runnable:
        raise ConfigError(list({str(p): p for v in plan.variations for p in v.problems[:1]}.values()),
                          summary="No variation can run:")
    if args.plan:
        return None
    directory = new_experiment_dir(spec, args.runs_dir, args.out)
    experiment = write_experiment(spec, with_not_run(plan), directory)
    if args.print_commands:
        print(f"\nExperiment directory: {directory}\nEach line trains one variation into its run directory there "
              f"(a scheduler's job can run it; on several machines, the directory on a filesystem all of them see). "
              f"When they have run: tuneterm experiment --results {directory}", file=sys.stderr, flush=True)
        print("\n".join(experiment.train_commands()), flush=True)
        return None
    return directory


def _detach(directory: Path) -> int:
    from tuneterm.engine.experiment.runner import EXPERIMENT_LOG, start_detached_experiment

    pid = start_detached_experiment(directory)
    print(f"\nExperiment directory: {directory}\nRunning detached (process {pid}); it goes on when this terminal "
          f"closes. Its output: {directory / EXPERIMENT_LOG}\n"
          f"  watch it:     tuneterm monitor {directory}\n"
          f"  stop it:      tuneterm stop {directory}\n"
          f"  go on later:  tuneterm experiment --resume {directory}")
    return EXIT_OK


def _resume(directory: Path, foreground: bool) -> int:
    from tuneterm.engine.experiment.directory import read_experiment
    from tuneterm.engine.experiment.results import results_of
    from tuneterm.engine.experiment.runner import resumable
    from tuneterm.engine.experiment.tables import format_results
    from tuneterm.engine.rundir.layout import is_live

    experiment = read_experiment(directory)
    if is_live(directory):
        print(f"{directory} is running already: watch it with tuneterm monitor {directory}", file=sys.stderr)
        return EXIT_FAILED
    if not resumable(experiment):
        print(format_results(results_of(experiment)))
        print(f"\nNothing is left to run in {directory}: every variation has ended.", file=sys.stderr)
        return EXIT_OK
    return run_here(directory) if foreground else _detach(directory)


def _results(directory: Path) -> int:
    from tuneterm.engine.experiment.directory import read_experiment
    from tuneterm.engine.experiment.results import results_of
    from tuneterm.engine.experiment.tables import format_results, write_results
    from tuneterm.engine.rundir.layout import is_live

    results = results_of(read_experiment(directory))
    print(format_results(results))
    if not is_live(directory):  # (a live experiment writes them itself, as each variation ends)
        print("\nWritten: " + ", ".join(str(path) for path in write_results(results)), file=sys.stderr)
    return EXIT_OK


def run_here(directory: Path) -> int:
    """The experiment in this process, to its end or a stop (ctrl+c, SIGTERM, a closed terminal; again: at
    once), printing each run's progress and, at the end, the table."""
    from tuneterm.console import ConsoleProgress, write_line
    from tuneterm.engine.experiment.directory import read_experiment
    from tuneterm.engine.experiment.results import results_of
    from tuneterm.engine.experiment.runner import ExperimentControl, run_experiment
    from tuneterm.engine.experiment.tables import format_results
    from tuneterm.engine.launch.signals import StopOnSignals

    control = ExperimentControl()

    def abort(name: str) -> NoReturn:
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), f"\nAborted ({name}). The run in progress goes on from its last complete "
                                          f"checkpoint with: tuneterm experiment --resume {directory}\n".encode())
        os._exit(EXIT_INTERRUPTED)

    with StopOnSignals(control, lambda message: write_line(f"\n{message}", sys.stderr), abort=abort):
        ended = run_experiment(directory, control, run_sink=lambda variation: ConsoleProgress(),
                               say=lambda text: write_line(f"== {text}", sys.stdout))
    results = results_of(read_experiment(directory))
    write_line("\n" + format_results(results), sys.stdout)
    if ended.status == "stopped":
        write_line(f"Go on with: tuneterm experiment --resume {directory}", sys.stdout)
    return EXIT_FAILED if any(row.state == "failed" for row in results.rows) else EXIT_OK
