"""`tuneterm demo`: the built-in tiny model and chat dataset (built once, offline, on a CPU), fine-tuned in the
app's wizard, or at once with --headless, printing progress as text."""

from __future__ import annotations

import argparse

from tuneterm.cli.app import open_app
from tuneterm.cli.common import Subcommands, runs_dir_argument
from tuneterm.cli.train import run_headless
from tuneterm.config import load_config


def add_parser(subcommands: Subcommands) -> None:
    demo = subcommands.add_parser("demo", help="fine-tune the built-in tiny model (offline, CPU, a few minutes)",
                                  description="Build (once) a tiny model and chat dataset and fine-tune a LoRA "
                                              "adapter on them. Works offline and on a CPU.")
    demo.add_argument("--headless", action="store_true", help="train at once, printing progress as text (no app)")
    demo.add_argument("--tools", action="store_true",
                      help="train on tool-calling and reasoning conversations (with Qwen3's chat template)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one value of the demo config")
    runs_dir_argument(demo)
    demo.set_defaults(command=run, name="demo")


def run(args: argparse.Namespace) -> int:
    from tuneterm.demo import demo_config, demo_dir
    from tuneterm.engine.run.start import StartingRun

    if not args.headless:
        from tuneterm.ui.app import Opening

        return open_app(args.runs_dir, Opening(demo=True, demo_overrides=tuple(args.overrides),
                                               demo_tools=args.tools))

    print("Preparing the demo model and data (built once, then cached)...", flush=True)
    directory = demo_dir(args.tools)
    config = load_config(overrides=args.overrides, base=demo_config(directory), base_source="demo")
    print(f"Demo model and data: {directory}", flush=True)
    return run_headless(StartingRun.new(config, args.runs_dir).plan)
