"""What several commands share: their exit codes, the arguments more than one of them takes (a run config, the
runs directory), and what the libraries print while a command loads a model outside a run, defined once so that
they read and behave the same in every command."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_parser(subcommands)` of each command module adds its parser to."""
Command = Callable[[argparse.Namespace], int]
"""What each command module's `run` is, and what its parser stores as `command`."""


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """A run config: a file, a preset, and --set overrides on top (train, plan)."""
    parser.add_argument("config", nargs="?", type=Path, help="the run config (YAML)")
    parser.add_argument("--preset", metavar="NAME",
                        help="start from a preset (cpu-quick-test, lora-small-model, qlora-7b-24gb, style-transfer, "
                             "knowledge-injection, classification); the config file and --set override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set training.learning_rate=1e-4 (repeatable)")


def runs_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                        help="where new run directories are created and runs are listed from (default: ./runs)")


Result = TypeVar("Result")


def library_output_routed(command: Callable[[argparse.Namespace], Result]) -> Callable[[argparse.Namespace], Result]:
    """A command that loads a model or a tokenizer outside a run (plan, inspect, chat, merge), with what the
    libraries print routed as a run routes it (engine/capture.py): each warning a person can act on once, as a
    `warning (library): ...` line on stderr, and their deprecation notices and progress bars not at all."""

    @functools.wraps(command)
    def routed(args: argparse.Namespace) -> Result:
        from tuneterm.console import ConsoleProgress
        from tuneterm.engine.capture import library_output_as_events

        with library_output_as_events(ConsoleProgress(sys.stderr)):
            return command(args)

    return routed
