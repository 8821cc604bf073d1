"""`tuneterm push RUN_DIR REPO_ID`: the run's adapter (or its checked merged model or GGUF) on the Hugging Face Hub,
with the run card as its model card."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneterm.cli.common import EXIT_OK, Subcommands


def add_parser(subcommands: Subcommands) -> None:
    push = subcommands.add_parser("push", help="upload a run's adapter, merged model or GGUF to the Hugging Face Hub",
                                  description="Upload to REPO_ID (created if needed) with the run card as the model "
                                              "card. The token is huggingface_hub's: HF_TOKEN, or `hf auth login`.")
    push.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    push.add_argument("repo_id", metavar="REPO_ID", help="USER/NAME or ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--what", choices=("adapter", "merged", "gguf"), default="adapter",
                      help="adapter (default); merged or gguf: the newest export of the run that passed its check")
    push.set_defaults(command=run, name="push")


def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.push import push

    pushed = push(args.run_dir, args.repo_id, args.what, args.private, lambda text: print(f"{text}...", flush=True))
    print(f"Uploaded {len(pushed.files)} files to {pushed.url}{' (private)' if pushed.private else ''}.")
    return EXIT_OK
