"""Packing on and off on the demo's variable-length chat data, on the CPU: tokens per second and steps.

Alternating rounds of tuneterm's own headless run (the engine, as `tuneterm train` runs it) on the demo model and
data, one epoch of the 700 training conversations (22 to 83 tokens, mean 44), micro-batch 8 x accumulation 2,
LoRA r16, no evaluation, one CPU thread. "off" pads each micro-batch to its longest example; "on" packs with
best-fit decreasing into rows of max_length (128) and flattens each micro-batch into one padding-free row.
Tokens per second count real (non-padding) tokens: the epoch's tokens, the same in both, over the time from the
first optimizer step to the last (both taken when the Trainer logged them), in wall-clock seconds and in the
process's CPU seconds (which other work on a shared machine disturbs less). Each run is a fresh process.

    python bench/packing_cpu.py [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def settings(directory: Path, packing: bool, threads: int, output: Path) -> dict:
    return {"method": "lora", "model": {"path": str(directory / "model")},
            "data": {"train": str(directory / "data" / "train.jsonl"), "val_size": 0},
            "lora": {"r": 16, "lora_alpha": 32},
            "training": {"learning_rate": 3e-3, "num_train_epochs": 1, "per_device_train_batch_size": 8,
                         "gradient_accumulation_steps": 2, "gradient_checkpointing": False, "cpu_threads": threads,
                         "packing": packing, "save_steps": 100_000, "load_best_model_at_end": False,
                         "output_dir": str(output)}}


def measure(packing: bool, threads: int, folder: Path) -> dict:
    """One run in this process: steps, real tokens of the epoch, and seconds from the first step to the last."""
    from transformers.utils import logging as hf_logging

    from tuneterm.config import config_from_mapping
    from tuneterm.demo import demo_dir
    from tuneterm.engine.events import RunFinished, RunStarted, StepLogged
    from tuneterm.engine.run.plans import new_run
    from tuneterm.engine.run.runner import run

    hf_logging.disable_progress_bar()
    directory = demo_dir()
    events: list = []
    cpu: dict[int, float] = {}

    def sink(event: object) -> None:
        events.append(event)
        if isinstance(event, StepLogged):
            cpu[event.step] = time.process_time()

    plan = new_run(config_from_mapping(settings(directory, packing, threads, folder / "run")), folder)
    result = run(plan, sink)
    if not isinstance(result, RunFinished):
        raise SystemExit(f"the run failed: {result}")
    steps = [e for e in events if isinstance(e, StepLogged)]
    started = next(e for e in events if isinstance(e, RunStarted))
    seconds = steps[-1].time - steps[0].time
    # The epoch's real tokens are the data's; the first step's share is left out with its time.
    tokens = started.tokens_per_step or 0.0
    cpu_seconds = cpu[steps[-1].step] - cpu[steps[0].step]
    return {"steps": len(steps), "planned_steps": started.total_steps, "seconds": seconds,
            "tokens_per_second": tokens * (len(steps) - 1) / seconds,
            "tokens_per_cpu_second": tokens * (len(steps) - 1) / cpu_seconds,
            "padding_share": statistics.fmean(e.padding_share for e in steps if e.padding_share is not None)}


def in_fresh_process(packing: bool, threads: int, folder: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", "on" if packing else "off", folder,
                           "--threads", str(threads)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the measurement failed:\n{done.stderr[-3000:]}")
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure", nargs=2, metavar=("PACKING", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        with tempfile.TemporaryDirectory(dir=args.measure[1]) as folder:
            print(json.dumps(measure(args.measure[0] == "on", args.threads, Path(folder))))
        return
    from tuneterm.demo import demo_dir

    demo_dir()  # built once, before anything is timed
    ratios: dict[str, list[float]] = {"tokens_per_second": [], "tokens_per_cpu_second": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            off = in_fresh_process(False, args.threads, folder)
            on = in_fresh_process(True, args.threads, folder)
            for name, values in ratios.items():
                values.append(on[name] / off[name])
            print(f"round {round_number + 1}: off {off['tokens_per_second']:,.0f} tokens/s "
                  f"({off['tokens_per_cpu_second']:,.0f} per CPU-s) in {off['steps']} steps (padding "
                  f"{off['padding_share']:.0%}), on {on['tokens_per_second']:,.0f} tokens/s "
                  f"({on['tokens_per_cpu_second']:,.0f} per CPU-s) in {on['steps']} steps (padding "
                  f"{on['padding_share']:.0%}); ratios {ratios['tokens_per_second'][-1]:.2f} and "
                  f"{ratios['tokens_per_cpu_second'][-1]:.2f}; planned steps {off['planned_steps']} and "
                  f"{on['planned_steps']}", flush=True)
    for name, values in ratios.items():
        print(f"packing on / off, real {name.replace('_', ' ')}: median {statistics.median(values):.2f} "
              f"(min {min(values):.2f}, max {max(values):.2f}) over {len(values)} alternating rounds")


if __name__ == "__main__":
    main()
