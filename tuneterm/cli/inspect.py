"""`tuneterm inspect`: a dataset read with a model's tokenizer and chat template, before any run: its format,
every invalid record with its line, token statistics, what a max length cuts, and what would block a run."""

from __future__ import annotations

import argparse
import sys

from tuneterm.cli.common import EXIT_FAILED, EXIT_OK, Subcommands, library_output_routed
from tuneterm.config import RunConfig, load_config
from tuneterm.errors import TuneTermError


def add_parser(subcommands: Subcommands) -> None:
    inspect = subcommands.add_parser("inspect", help="check a dataset with a model's tokenizer and chat template",
                                     description="Format and evidence, every invalid record with its line, token "
                                                 "statistics, what a max length cuts, the checks that would block a "
                                                 "run, and examples with the trained text highlighted.")
    inspect.add_argument("data", help="a .jsonl/.json/.csv/.parquet file, a directory, or a hub dataset id")
    inspect.add_argument("--model", required=True,
                         help="model directory or hub id (the tokenizer files and config.json are enough)")
    inspect.add_argument("--max-length", type=int, metavar="N", help="report truncation at N (default: the "
                                                                      "suggested max length)")
    inspect.add_argument("--samples", type=int, default=3, metavar="K", help="examples to show (default 3)")
    inspect.add_argument("--format", default="auto", help="override the detected format")
    inspect.add_argument("--columns", metavar="YAML", help="map column names, e.g. '{instruction: question}'")
    inspect.add_argument("--train-on", choices=("responses", "all"), default="responses")
    inspect.add_argument("--reasoning", choices=("auto", "keep", "drop"), default="auto",
                         help="how reasoning is trained (data.reasoning; default auto)")
    inspect.add_argument("--chat-template", metavar="FILE_OR_TEMPLATE", help="use this chat template instead")
    inspect.add_argument("--memory-limited", action="store_true",
                         help="suggest the 95th percentile instead of the 99th")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(command=run, name="inspect")


@library_output_routed
def run(args: argparse.Namespace) -> int:
    import json

    import yaml

    from tuneterm.data.inspect import format_report, inspect_data, report_to_json
    from tuneterm.data.tokenizer import load_tokenizer

    try:
        columns = yaml.safe_load(args.columns) if args.columns else None
    except yaml.YAMLError:
        columns = args.columns  # validation below says what a mapping should look like
    mapping = {"model": {"path": args.model, "chat_template": args.chat_template},
               "data": {"train": args.data, "format": args.format, "columns": columns}}
    config = load_config(base=mapping, base_source="tuneterm inspect")
    tokenizer, template_warnings = load_tokenizer(config)
    report = inspect_data(config.get("data.train"), tokenizer, fmt=args.format, columns=config.get("data.columns"),
                          train_on=args.train_on, reasoning=args.reasoning, max_length=args.max_length,
                          samples=args.samples,
                          context_length=_context_length_or_none(config), memory_limited=args.memory_limited,
                          template_warnings=template_warnings)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2, ensure_ascii=False))
    else:
        print(format_report(report, color=sys.stdout.isatty()))
    return EXIT_FAILED if report.blocking else EXIT_OK


def _context_length_or_none(config: RunConfig) -> int | None:
    """A tokenizer-only directory has no config.json: then there is no context length to cap at."""
    from tuneterm.plan.planner import model_facts

    try:
        return model_facts(config).context_length
    except TuneTermError:
        return None
