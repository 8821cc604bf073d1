"""`tuneterm runs`: the runs of a runs directory with their status, step and best eval loss, and its experiments;
printed, or in the app to open one. A run with damaged files is printed with what is wrong with them, under its
line."""

from __future__ import annotations

import argparse
import sys

from tuneterm.cli.app import open_app
from tuneterm.cli.common import EXIT_OK, Subcommands, runs_dir_argument


def add_parser(subcommands: Subcommands) -> None:
    runs = subcommands.add_parser("runs", help="list the runs of a runs directory and open one",
                                  description="The runs with their status (running, completed, stopped, failed, "
                                              "interrupted...), step and best eval loss; enter opens one.")
    runs_dir_argument(runs)
    runs.add_argument("--plain", action="store_true", help="print the list instead of opening the app")
    runs.set_defaults(command=run, name="runs")


def run(args: argparse.Namespace) -> int:
    if args.plain:
        from tuneterm.engine.experiment.directory import list_experiments
        from tuneterm.engine.experiment.results import results_of
        from tuneterm.engine.experiment.tables import headline
        from tuneterm.engine.rundir.runs import list_runs

        runs, experiments = list_runs(args.runs_dir), list_experiments(args.runs_dir)
        if not runs and not experiments:
            print(f"No runs in {args.runs_dir}.", file=sys.stderr)
        for experiment in experiments:
            print(f"{'experiment':13s} {headline(results_of(experiment))}  {experiment.directory}")
        for summary in runs:
            best = f"{summary.best_eval_loss:.4f}" if summary.best_eval_loss is not None else "-"
            total = f"/{summary.total_steps}" if summary.total_steps else ""
            print(f"{summary.status:13s} {summary.step:>7}{total:<8} best {best:>8}  {summary.method or '?':6s} "
                  f"{summary.run_dir}")
            for problem in summary.problems:
                print(f"{'':13s} ! {problem}")
        return EXIT_OK
    from tuneterm.ui.app import Opening

    return open_app(args.runs_dir, Opening("runs"))
