"""`tuneterm export RUN_DIR OUT_DIR --format gguf|ollama|adapter-gguf|merged`: the tuned model for llama.cpp, LM
Studio, Ollama or transformers, written only after it was checked against the model that was trained."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tuneterm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Subcommands


def add_parser(subcommands: Subcommands) -> None:
    from tuneterm.engine.after.export import DEFAULT_QUANT, FORMATS, QUANTS

    export = subcommands.add_parser(
        "export", help="the tuned model as a GGUF (llama.cpp, LM Studio), for Ollama, or merged",
        description="Merge the adapter, convert it with llama.cpp's own converter (and quantizer), and check the "
                    "GGUF in llama.cpp against the merged model on the run's eval prompts before writing OUT_DIR. "
                    "GGUF formats need `pip install 'tuneterm[export]'`.")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a new (or empty) directory")
    export.add_argument("--format", choices=FORMATS, default="gguf",
                        help="gguf: one GGUF file; ollama: the GGUF with a Modelfile (its template from the run's "
                             "chat template); adapter-gguf: the adapter alone, for llama.cpp's --lora over the base; "
                             "merged: safetensors for transformers (default: gguf)")
    export.add_argument("--quant", choices=QUANTS, metavar="TYPE",
                        help=f"the GGUF's type: {', '.join(QUANTS)} (default: {DEFAULT_QUANT}; f16 for adapter-gguf)")
    export.add_argument("--scale", type=float, default=1.0, metavar="S",
                        help="the adapter's strength, e.g. 0.5 for an overfitted adapter (lora_alpha x S; default 1)")
    export.add_argument("--llama-cpp", type=Path, metavar="PATH",
                        help="llama.cpp's converter: the source archive of the installed llama-cpp-python, or a "
                             "llama.cpp checkout (default: the cache, fetched with pip the first time; "
                             "TUNETERM_LLAMA_CPP sets it too)")
    export.set_defaults(command=run, name="export")


def run(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.export import export, prepare
    from tuneterm.errors import Cancelled

    def phase(text: str) -> None:
        print(f"{text}...", flush=True)

    plan = prepare(args.run_dir, args.out_dir, args.format, args.quant, args.scale, args.llama_cpp, phase)
    try:
        result = export(plan, on_phase=phase)
    except (Cancelled, KeyboardInterrupt):
        print("Export interrupted: nothing was written.", flush=True)
        return EXIT_INTERRUPTED
    for note in result.notes:
        print(f"Note: {note}")
    if result.round_trip is not None:
        print(f"Checked in llama.cpp against the merged model: {_summary(result.round_trip)}")
    print(f"Exported ({result.format}{', ' + result.quant if result.quant else ''}) to {result.out_dir}: "
          f"{', '.join(result.files)}")
    if result.converter:
        print(f"Converted by {result.converter}.")
    print(f"Next: {result.next_step}")
    if result.format == "ollama":
        print("(ollama create needs Ollama installed and its server running on this machine.)")
    return EXIT_OK if result.passed else EXIT_FAILED


def _summary(check: dict[str, Any]) -> str:
    ended = sum(a["gguf_ended"] for a in check["answers"])
    return (f"KL divergence {check['mean_kl']:.2g} nats per token (allowed {check['tolerance']:g} for "
            f"{check['quant']}), the same next token at {check['same_top_token']:.1%} of {check['positions']} "
            f"positions, {ended} of {len(check['answers'])} greedy answers ended by themselves "
            f"({check['identical_answers']} identical to the merged model's).")
