"""Opening the app: `tuneterm [CONFIG.yaml]`, and the way every command that shows one of its screens opens it
(monitor, runs, demo).

The app draws on a terminal and reads keys from it: without one it would wait for keys forever, so open_app
refuses at once and says what works without a terminal. The app itself is imported only when it opens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tuneterm.cli.common import EXIT_OK, EXIT_USAGE, runs_dir_argument

if TYPE_CHECKING:
    from tuneterm.ui.app import Opening


def parser() -> argparse.ArgumentParser:
    """The arguments of `tuneterm` without a command."""
    parser = argparse.ArgumentParser(prog="tuneterm", description="Open the app: a new run, or CONFIG.yaml in the "
                                                                  "wizard's review step.")
    parser.add_argument("config", nargs="?", type=Path, help="a run config to review and launch")
    runs_dir_argument(parser)
    parser.set_defaults(command=run, name="app")
    return parser


def run(args: argparse.Namespace) -> int:
    from tuneterm.ui.app import Opening
    from tuneterm.ui.state.draft import Draft

    opening = Opening()
    if args.config is not None:
        opening = Opening("wizard", Draft.from_file(args.config), "review")
    return open_app(args.runs_dir, opening)


def has_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def open_app(runs_dir: Path, opening: Opening) -> int:
    from tuneterm.ui.app import make_app
    from tuneterm.ui.services import Services

    if not has_terminal():
        print("tuneterm: the app needs a terminal, and stdin or stdout is not one. Without a terminal: "
              "`tuneterm train CONFIG.yaml` trains, `tuneterm demo --headless` runs the demo, "
              "`tuneterm runs --plain` lists the runs, `tuneterm stop RUN_DIR` stops one.", file=sys.stderr)
        return EXIT_USAGE
    app = make_app(Services(runs_dir=runs_dir), opening)
    app.run()
    return app.return_code or EXIT_OK
