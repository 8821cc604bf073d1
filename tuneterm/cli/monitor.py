"""`tuneterm monitor RUN_DIR`: the app's monitor on one run, from any terminal: a finished run replayed, a live one
followed, with its controls. `tuneterm monitor EXPERIMENT_DIR`: the experiment's table, each of its runs a key away."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneterm.cli.app import open_app
from tuneterm.cli.common import EXIT_USAGE, Subcommands


def add_parser(subcommands: Subcommands) -> None:
    monitor = subcommands.add_parser("monitor", help="watch a run, live or finished, from any terminal",
                                     description="Open the monitor on a run directory: a finished run is replayed, "
                                                 "a live one followed, with stop, save-now, evaluate-now and "
                                                 "patience.")
    monitor.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run's directory, or an experiment's")
    monitor.set_defaults(command=run, name="monitor")


def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.experiment.directory import is_experiment
    from tuneterm.engine.rundir.layout import CONFIG_FILE
    from tuneterm.ui.app import Opening

    if is_experiment(args.run_dir):
        return open_app(args.run_dir.parent, Opening("experiment", run_dir=args.run_dir))
    if not (args.run_dir / CONFIG_FILE).is_file():
        print(f"tuneterm monitor: {args.run_dir} is not a tuneterm run directory (no config.yaml) nor an experiment's "
              "(no experiment.yaml)", file=sys.stderr)
        return EXIT_USAGE
    return open_app(args.run_dir.parent, Opening("monitor", run_dir=args.run_dir))
