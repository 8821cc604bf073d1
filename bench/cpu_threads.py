"""Training speed on a CPU shared with another busy process: PyTorch's default thread count against tuneterm's.

PyTorch starts one thread per core, and its threads wait for each other inside every operation: when another
process keeps a core busy, each step waits for the thread that shares that core. tuneterm chooses the thread
count when a run starts (hardware.choose_cpu_threads: one per core that is not busy). This bench starts a busy
process (a Python loop spinning on one core), then alternates timed rounds of forward + backward + AdamW steps of
the demo model with the default thread count and with tuneterm's choice, and prints the tokens per second of
each (median and spread over the rounds) and their ratio. Without --busy it measures an idle machine, where the
two choices are the same.

    python bench/cpu_threads.py [--rounds 5] [--steps 20] [--no-busy]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spin(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


def tokens_per_second(model: object, batch: object, steps: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss  # type: ignore[operator]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch.numel() / (time.perf_counter() - started)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-busy", dest="busy", action="store_false")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from tuneterm.demo import demo_dir
    from tuneterm.hardware import choose_cpu_threads

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(demo_dir() / "model"))
    batch = torch.randint(10, 500, (8, 64))
    default_threads = torch.get_num_threads()
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=spin, args=(stop,)) if args.busy else None
    if busy:
        busy.start()
        time.sleep(1.0)
    chosen, why = choose_cpu_threads("auto")
    results: dict[str, list[float]] = {"default": [], "tuneterm": []}
    try:
        for _ in range(args.rounds):
            results["default"].append(tokens_per_second(model, batch, args.steps, default_threads))
            results["tuneterm"].append(tokens_per_second(model, batch, args.steps, chosen))
    finally:
        stop.set()
        if busy:
            busy.join()
    print(f"{'one core busy with another process' if args.busy else 'idle machine'}; "
          f"default {default_threads} threads, tuneterm {chosen} ({why})")
    for name, values in results.items():
        print(f"  {name:9s} median {statistics.median(values):8,.0f} tokens/s  (min {min(values):,.0f}, "
              f"max {max(values):,.0f}, {len(values)} rounds)")
    ratio = statistics.median(results["tuneterm"]) / statistics.median(results["default"])
    print(f"  tuneterm / default: {ratio:.1f}x")


if __name__ == "__main__":
    main()
