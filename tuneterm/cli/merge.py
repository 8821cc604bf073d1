"""`tuneterm merge RUN_DIR OUT_DIR`: the base model with the run's adapter merged in, as one standalone model,
written only after checking that its logits equal base + adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneterm.cli.common import EXIT_OK, Subcommands, library_output_routed


def add_parser(subcommands: Subcommands) -> None:
    merge = subcommands.add_parser("merge", help="merge a run's adapter into its base model: one standalone model",
                                   description="Write the base model with the adapter merged in (safetensors, "
                                               "tokenizer, chat template, generation config) to a new directory, "
                                               "after checking that its logits equal base + adapter.")
    merge.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    merge.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a new (or empty) directory")
    merge.add_argument("--scale", type=float, default=1.0, metavar="S",
                       help="the adapter's strength, e.g. 0.5 for an overfitted adapter (lora_alpha x S; default 1)")
    merge.set_defaults(command=run, name="merge")


@library_output_routed
def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.merge import merge
    from tuneterm.plan.memory import size

    result = merge(args.run_dir, args.out_dir, args.scale, lambda phase: print(f"{phase}...", flush=True))
    for note in result.notes:
        print(f"Note: {note}")
    print(f"Merged model: {result.out_dir} ({size(result.bytes_written)}, {result.dtype}). Its logits equal "
          f"base + adapter within {result.max_logit_difference:.2g} (allowed {result.tolerance:g} of the largest, "
          f"{result.largest_logit:.3g}) on {result.probes} prompts.\nLoad it with "
          f"AutoModelForCausalLM.from_pretrained(\"{result.out_dir}\").")
    return EXIT_OK
