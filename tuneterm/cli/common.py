"""What several commands share: their exit codes, and the arguments more than one of them takes (a run config,
the runs directory), defined once so that they read and behave the same in every command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

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
