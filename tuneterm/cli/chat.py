"""`tuneterm chat RUN_DIR`: talk to a run's tuned model (and, with --compare-base, to the same weights with the
adapter off) with the run's chat template; or, with --stop-check, check that its answers end, and record it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tuneterm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Subcommands, library_output_routed

if TYPE_CHECKING:
    from tuneterm.engine.after.generate import GenerationSettings, TunedModel


def add_parser(subcommands: Subcommands) -> None:
    chat = subcommands.add_parser("chat", help="talk to a run's tuned model, next to its base model",
                                  description="Generate from the tuned model (and with --compare-base from the base "
                                              "model, the same weights with the adapter off) with the run's chat "
                                              "template: one answer with --prompt, a conversation of single turns "
                                              "otherwise (ctrl+c stops an answer, ctrl+d leaves).")
    chat.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    chat.add_argument("--prompt", help="answer this and exit")
    chat.add_argument("--compare-base", action="store_true", help="also answer with the adapter switched off")
    chat.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (the default) is greedy")
    chat.add_argument("--top-p", type=float, default=1.0, metavar="P")
    chat.add_argument("--stop-check", action="store_true",
                      help="instead of chatting: check that answers to eval prompts end, and record it in the run")
    chat.set_defaults(command=run, name="chat")


@library_output_routed
def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.generate import GenerationSettings, TunedModel

    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
    if settings.problems():
        print("tuneterm chat: " + "; ".join(settings.problems()), file=sys.stderr)
        return EXIT_USAGE
    print(f"Loading {args.run_dir}...", file=sys.stderr, flush=True)
    model = TunedModel.load(args.run_dir)
    if args.compare_base and not model.has_adapter:
        print("tuneterm chat: a full fine-tune has no adapter to switch off, so there is no base to compare with",
              file=sys.stderr)
        return EXIT_USAGE
    if args.stop_check:
        return _stop_check(model, args.run_dir)
    print(f"{settings.describe()}; stops at {', '.join(model.describe()['stop_tokens'])}", file=sys.stderr)
    if args.prompt is not None:
        _answer(model, args.prompt, settings, args.compare_base)
        return EXIT_OK
    print("Type a message (ctrl+c stops an answer, ctrl+d leaves).", file=sys.stderr)
    while True:
        try:
            prompt = input("\n> ")
        except EOFError:
            print()
            return EXIT_OK
        except KeyboardInterrupt:
            print()
            return EXIT_INTERRUPTED
        if prompt.strip():
            try:
                _answer(model, prompt, settings, args.compare_base)
            except KeyboardInterrupt:
                print("\n[stopped]")


def _stop_check(model: TunedModel, run_dir: Path) -> int:
    from tuneterm.engine.after.stopcheck import check_stopping, save_stop_check

    check = check_stopping(model, model.eval_samples())
    print(f"Stop check: {check.summary()}")
    for runaway in check.runaway:
        print(f"  {runaway.where}: {runaway.question!r} -> {runaway.generated[:120]!r}...")
    for cause in check.causes[1:] + check.notes:
        print(f"  also: {cause}")
    print(f"Recorded in {save_stop_check(check, run_dir)}")
    return EXIT_OK if check.passed or not check.checked else EXIT_FAILED


def _answer(model: TunedModel, prompt: str, settings: GenerationSettings, compare_base: bool) -> None:
    ids = model.prompt_ids(prompt)
    for label, adapter in (("tuned", True), ("base", False))[:2 if compare_base else 1]:
        if compare_base:
            print(f"[{label}] ", end="", flush=True)
        generation = model.generate(ids, settings, adapter=adapter, on_text=lambda text: print(text, end="",
                                                                                              flush=True))
        print(f"\n[{generation.tokens} tokens, ran to the limit without ending]" if generation.hit_limit else "")
