"""The command line: `tuneterm [CONFIG.yaml]` opens the app, `tuneterm COMMAND ...` runs one command.

One module per command, each with its arguments (`add_parser`) and what it does (`run`), so that a command is read
and changed in one place; `main` assembles them, and turns the errors a person can act on into messages and exit
codes. A command builds a run config or reads a run directory and hands it to the engine or the app: nothing here
knows how training works. Importing the command line (and `tuneterm --help`) must stay free of torch and the
Hugging Face libraries, so the commands import the engine inside `run`.
"""

from __future__ import annotations

import argparse
import sys

from tuneterm import __version__
from tuneterm.cli import (
    app,
    chat,
    compare,
    demo,
    experiment,
    export,
    inspect,
    merge,
    monitor,
    plan,
    push,
    runs,
    stop,
    train,
)
from tuneterm.cli.common import EXIT_FAILED, EXIT_USAGE, Command
from tuneterm.errors import ConfigError, RunDirError, TuneTermError, listed

COMMANDS = (train, plan, inspect, monitor, runs, stop, chat, merge, export, push, compare, experiment, demo)
"""The command modules, in the order --help lists them."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, commands = _parser()
    if not argv or argv[0] not in commands and not argv[0].startswith("-") or argv[0] == "--runs-dir":
        args = app.parser().parse_args(argv)
    else:
        args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return EXIT_USAGE
    try:
        command: Command = args.command
        return command(args)
    except ConfigError as exc:
        print(f"{exc.summary}\n{listed(exc.problems)}", file=sys.stderr)
        return EXIT_USAGE
    except RunDirError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except TuneTermError as exc:
        print(f"tuneterm {args.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> tuple[argparse.ArgumentParser, set[str]]:
    """The parser of `tuneterm COMMAND ...`, and the names of its commands."""
    parser = argparse.ArgumentParser(prog="tuneterm", usage="tuneterm [CONFIG.yaml] [--runs-dir DIR] | tuneterm "
                                                            "COMMAND ...",
                                     description="LoRA / QLoRA fine-tuning from a terminal. Without a command, "
                                                 "the app opens (with CONFIG.yaml: at its review step).")
    parser.add_argument("--version", action="version", version=f"tuneterm {__version__}")
    subcommands = parser.add_subparsers(metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subcommands)
    return parser, set(subcommands.choices)
