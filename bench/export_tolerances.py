"""How far each GGUF type of a run is from its merged model: the numbers behind the round-trip check's tolerances.

Merges the run once (and once more at half strength: a GGUF of another adapter), converts each with llama.cpp's
converter to the lossless type, quantizes it to every type `tuneterm export` offers, and runs the round-trip check
of each against the full-strength merged model. Prints, per type, the mean and largest KL divergence per token, the
largest difference of a likely token's log-probability, how often both pick the same next token, and the
tolerance. The README's table is this script's output on the demo run (`tuneterm demo --headless`).

    python bench/export_tolerances.py RUN_DIR [--llama-cpp ARCHIVE_OR_CHECKOUT]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tuneterm.config import load_config
from tuneterm.engine.after.generate import read_eval_samples
from tuneterm.engine.after.llamacpp import (
    CONVERTER_TYPES,
    convert_arguments,
    find_converter,
    quantize_arguments,
    run_tool,
)
from tuneterm.engine.after.merge import merge, merged_dtype
from tuneterm.engine.after.roundtrip import TOLERANCE, check_round_trip
from tuneterm.engine.rundir.layout import CONFIG_FILE
from tuneterm.work import Work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--llama-cpp", type=Path)
    args = parser.parse_args()
    converter = find_converter(args.llama_cpp)
    lossless = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[
        merged_dtype(load_config(args.run_dir / CONFIG_FILE))]
    samples = read_eval_samples(args.run_dir)
    print(f"{args.run_dir.name}, {converter.version}")
    print(f"{'GGUF':34s} {'mean KL':>10s} {'max KL':>8s} {'max dlogp':>9s} {'same top':>8s} {'tolerance':>9s}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        log = work / "llama.cpp.log"
        merge(args.run_dir, work / "merged")
        merge(args.run_dir, work / "half", scale=0.5)
        for source in ("merged", "half"):
            run_tool(convert_arguments(converter, work / source, work / f"{source}-{lossless}.gguf", lossless),
                     "converting", Work(), log)
        files = []
        for quant in TOLERANCE:
            target = work / f"merged-{quant}.gguf"
            if quant in CONVERTER_TYPES:
                run_tool(convert_arguments(converter, work / "merged", target, quant), "converting", Work(), log)
            else:
                run_tool(quantize_arguments(work / f"merged-{lossless}.gguf", target, quant), "quantizing", Work(),
                         log)
            files.append((f"this adapter, {quant}", target, quant))
        files.append((f"the adapter at half strength, {lossless}", work / f"half-{lossless}.gguf", lossless))
        for label, path, quant in files:
            check = check_round_trip(path, quant, work / "merged", samples, Work())
            print(f"{label:34s} {check.mean_kl:10.2g} {check.max_kl:8.3f} {check.max_logprob_difference:9.3f} "
                  f"{check.same_top_token:8.1%} {check.tolerance:9g}")


if __name__ == "__main__":
    main()
