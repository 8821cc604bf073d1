"""`tuneterm stop RUN_DIR`: ask a run, whoever started it, to finish its current step, save a checkpoint and the
adapter, and stop; then wait until every process of it has gone, so that a script can resume it next."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneterm.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subcommands

WAIT_POLL_SECONDS = 0.5


def add_parser(subcommands: Subcommands) -> None:
    stop = subcommands.add_parser("stop", help="stop a running run after its current step, with a checkpoint",
                                  description="Ask a run (whoever started it) to finish the current step, save a "
                                              "checkpoint and the adapter, and stop; wait until it has.")
    stop.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    stop.add_argument("--no-wait", action="store_true", help="ask and return at once")
    stop.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                      help="how long to wait for the run to stop (default 600)")
    stop.set_defaults(command=run, name="stop")


def run(args: argparse.Namespace) -> int:
    import time

    from tuneterm.engine.launch.distributed import processes_left
    from tuneterm.engine.launch.handle import RunHandle
    from tuneterm.engine.rundir.layout import is_live
    from tuneterm.engine.rundir.runs import summarise_run

    summary = summarise_run(args.run_dir)
    if summary is None:
        print(f"tuneterm stop: {args.run_dir} is not a tuneterm run directory", file=sys.stderr)
        return EXIT_USAGE
    if not is_live(args.run_dir):
        print(f"{args.run_dir} is not running (it is {summary.status.replace('_', ' ')}).", file=sys.stderr)
        return EXIT_FAILED
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
    print(f"Stopped at step {summary.step:,} ({summary.status.replace('_', ' ')}). Continue it with: "
          f"tuneterm train --resume {args.run_dir}")
    return EXIT_OK
