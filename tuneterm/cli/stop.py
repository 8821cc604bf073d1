"""`tuneterm stop RUN_DIR`: ask a run, whoever started it, to finish its current step, save a checkpoint and the
adapter, and stop; then wait until every process of it has gone, so that a script can resume it next. A run that
ended some other way (it completed first, failed, was killed) is said as it ended, with a failing exit code.
`tuneterm stop EXPERIMENT_DIR` stops an experiment the same way: its run in progress, and every one after it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tuneterm.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subcommands

if TYPE_CHECKING:
    from tuneterm.engine.rundir.runs import RunSummary

WAIT_POLL_SECONDS = 0.5


def add_parser(subcommands: Subcommands) -> None:
    stop = subcommands.add_parser("stop", help="stop a running run (or experiment) after its current step, with a "
                                               "checkpoint",
                                  description="Ask a run (whoever started it) to finish the current step, save a "
                                              "checkpoint and the adapter, and stop; wait until it has. An "
                                              "experiment's directory stops the experiment: its run in progress, and "
                                              "the rest.")
    stop.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    stop.add_argument("--no-wait", action="store_true", help="ask and return at once")
    stop.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                      help="how long to wait for the run to stop (default 600)")
    stop.set_defaults(command=run, name="stop")


def run(args: argparse.Namespace) -> int:
    import time

    from tuneterm.engine.events import EVENTS_FILE
    from tuneterm.engine.experiment.directory import is_experiment
    from tuneterm.engine.launch.distributed import processes_left
    from tuneterm.engine.launch.handle import RunHandle
    from tuneterm.engine.rundir.layout import is_live
    from tuneterm.engine.rundir.runs import summarise_run

    if is_experiment(args.run_dir):
        return _stop_experiment(args)
    summary = summarise_run(args.run_dir)
    if summary is None:
        print(f"tuneterm stop: {args.run_dir} is not a tuneterm run directory", file=sys.stderr)
        return EXIT_USAGE
    if not is_live(args.run_dir):
        print(f"{args.run_dir} is not running (it is {summary.status.replace('_', ' ')}).", file=sys.stderr)
        return EXIT_FAILED
    events = args.run_dir / EVENTS_FILE
    asked_at = events.stat().st_size if events.is_file() else 0
    RunHandle(args.run_dir).stop("tuneterm stop")
    print(f"Asked {args.run_dir} to stop after its current step and save a checkpoint.", flush=True)
    if args.no_wait:
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while is_live(args.run_dir) or processes_left(args.run_dir):  # a distributed run: all its processes gone
        if time.monotonic() > deadline:
            print(f"It is still running after {args.timeout:.0f} s (a long step or save?); it will stop when it "
                  "can.", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(WAIT_POLL_SECONDS)
    summary = summarise_run(args.run_dir)
    assert summary is not None
    if summary.status == "stopped":
        print(f"Stopped at step {summary.step:,} with a checkpoint. Continue it with: "
              f"tuneterm train --resume {args.run_dir}")
        return EXIT_OK
    print(f"{args.run_dir} {_how_it_ended_instead(summary, _acted_on_since(events, asked_at))}", file=sys.stderr)
    return EXIT_FAILED


def _stop_experiment(args: argparse.Namespace) -> int:
    """The experiment's run in progress stopped after its step, with a checkpoint, and no other started."""
    import time

    from tuneterm.engine.experiment.directory import read_experiment
    from tuneterm.engine.experiment.results import results_of
    from tuneterm.engine.experiment.tables import headline
    from tuneterm.engine.launch.handle import RunHandle
    from tuneterm.engine.rundir.layout import is_live

    directory = args.run_dir
    if not is_live(directory):
        print(f"{directory} is not running ({headline(results_of(read_experiment(directory)))}).", file=sys.stderr)
        return EXIT_FAILED
    RunHandle(directory).stop("tuneterm stop")
    print(f"Asked experiment {directory} to stop: its run in progress stops after its current step with a checkpoint, "
          "and no other starts.", flush=True)
    if args.no_wait:
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while is_live(directory):
        if time.monotonic() > deadline:
            print(f"It is still running after {args.timeout:.0f} s (a long step or save?); it will stop when it "
                  "can.", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(WAIT_POLL_SECONDS)
    print(f"{headline(results_of(read_experiment(directory)))}. Go on with: tuneterm experiment --resume {directory}")
    return EXIT_OK


ENDED_OTHERWISE = {
    "completed": "completed all its steps",
    "early_stopped": "stopped early (its eval loss stopped improving)",
    "failed": "failed",
    "interrupted": "ended without a last event (killed, or its machine went down)",
    "running": "is still running",
}
"""How a run asked to stop ended instead, by its status."""


def _how_it_ended_instead(summary: RunSummary, acted: bool) -> str:
    """The truth about a run that did not stop on request: whether it read the request, and how it ended."""
    asked = "was asked to stop, but" if acted else "never acted on the request to stop:"
    reason = f": {summary.reason}" if summary.reason else ""
    again = f". Continue it with: tuneterm train --resume {summary.run_dir}" if summary.status == "interrupted" else ""
    return f"{asked} it {ENDED_OTHERWISE[summary.status]} at step {summary.step:,}{reason}{again}"


def _acted_on_since(events: Path, offset: int) -> bool:
    """Whether the run said it was stopping (StopRequested) in the events it wrote after `offset`."""
    from tuneterm.engine.events import StopRequested, iter_events

    return events.is_file() and any(isinstance(event, StopRequested) for event in iter_events(events, offset=offset))
