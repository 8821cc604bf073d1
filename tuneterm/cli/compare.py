"""`tuneterm compare RUN_DIR...`: several runs side by side: their loss curves on one set of axes (printed, and
drawn with --out) and the settings that differ between them."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneterm.cli.common import EXIT_OK, Subcommands


def add_parser(subcommands: Subcommands) -> None:
    compare = subcommands.add_parser("compare", help="overlay the loss curves of several runs; list their "
                                                      "differences",
                                     description="The train and eval losses of the runs on one set of axes, and the "
                                                 "settings that differ between them.")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", type=Path, metavar="PNG", help="write the curves to this picture")
    compare.add_argument("--by", choices=("step", "tokens"), default="step", help="align the curves by step or by "
                                                                                    "tokens seen (default: step)")
    compare.set_defaults(command=run, name="compare")


def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.compare import differing_settings, load_curves, save_comparison

    curves = load_curves(args.run_dirs, args.by)
    for curve in curves:
        last = f"{curve.train[-1][1]:.4f}" if curve.train else "-"
        best = f"{min(v for _, v in curve.eval):.4f}" if curve.eval else "-"
        print(f"{curve.colour}  {curve.name}: last train loss {last}, lowest eval loss {best}")
    differing = differing_settings(curves)
    if differing:
        print("\nSettings that differ:")
        for key, values in differing:
            print(f"  {key}: " + " | ".join(str(v) for v in values))
    else:
        print("\nThe runs have the same settings.")
    if args.out:
        print(f"\nCurves: {save_comparison(curves, args.out, args.by)}")
    return EXIT_OK
