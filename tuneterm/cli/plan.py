"""`tuneterm plan`: everything knowable about a run before it trains (model, data, schedule, memory per GPU with a
verdict, advice), and whether `tuneterm train` would refuse it."""

from __future__ import annotations

import argparse
import sys

from tuneterm.cli.common import EXIT_FAILED, EXIT_OK, Subcommands, config_arguments, library_output_routed
from tuneterm.config import load_config


def add_parser(subcommands: Subcommands) -> None:
    from tuneterm.plan.memory import STRATEGIES

    plan = subcommands.add_parser("plan", help="show what a run will cost and what the guides advise, without "
                                                "training",
                                  description="Everything knowable before training: model, data statistics, "
                                              "schedule, memory per GPU with a verdict, and advice. No GPU or "
                                              "network needed beyond the model's config.json and tokenizer.")
    config_arguments(plan)
    plan.add_argument("--world-size", type=int, default=1, metavar="N", help="number of GPUs (processes)")
    plan.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                      help="how several GPUs share the work: memory per GPU follows (default ddp: a full replica each)")
    plan.add_argument("--gpu-memory", type=float, metavar="GB",
                      help="plan for a GPU with this much free memory (bf16-capable) instead of this machine's")
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")
    plan.set_defaults(command=run, name="plan")


@library_output_routed
def run(args: argparse.Namespace) -> int:
    import json

    from tuneterm.hardware import hypothetical_gpu
    from tuneterm.plan.planner import make_plan
    from tuneterm.plan.report import format_plan, plan_to_json

    config = load_config(args.config, preset=args.preset, overrides=args.overrides)
    gpus = hypothetical_gpu(args.gpu_memory) if args.gpu_memory else None
    plan = make_plan(config, world_size=args.world_size, gpus=gpus, strategy=args.strategy)
    print(json.dumps(plan_to_json(plan), indent=2) if args.json else format_plan(plan))
    if plan.blocking:
        print(f"\n{len(plan.blocking)} problem{'s' if len(plan.blocking) > 1 else ''} would stop tuneterm train "
              "(listed above as Problem).", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
