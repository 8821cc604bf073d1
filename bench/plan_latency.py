"""Latency of the per-keystroke planning stage, which the settings screen runs on every change.

Stages 1 and 2 (model facts, the data summary) are computed once, as the app computes them in workers. Then
2,000 "keystrokes" change one setting at a time (micro-batch, accumulation, max length, rank, alpha, learning
rate, epochs, held-out share) and each runs what the screen runs: validate the draft config, then plan_run
(resolve, schedule, memory estimate with the largest micro-batch that fits, advice). Prints the median and the
99th percentile, per model, and the one-time cost of the first two stages.

    python bench/plan_latency.py [--examples 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.data_throughput import write_dataset  # noqa: E402
from tuneterm.config import config_from_mapping  # noqa: E402
from tuneterm.data.prepare import summarise  # noqa: E402
from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer  # noqa: E402
from tuneterm.hardware import hypothetical_gpu  # noqa: E402
from tuneterm.plan.planner import model_facts, plan_run  # noqa: E402

CONFIGS = ROOT / "tests" / "data" / "model_configs"
EDITS: list[tuple[str, str, list[Any]]] = [
    ("training", "per_device_train_batch_size", [1, 2, 4, 8]),
    ("training", "gradient_accumulation_steps", [1, 4, 8, 16]),
    ("training", "max_length", [512, 1024, 2048, "auto"]), ("lora", "r", [8, 16, 32, 64]),
    ("lora", "lora_alpha", [8, 16, 32, 128]), ("training", "learning_rate", [1e-4, 2e-4, 5e-4, 1e-3]),
    ("training", "num_train_epochs", [1, 2, 3, 5]), ("data", "val_size", [0.05, 0.1, 0.2, 0.1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--keystrokes", type=int, default=2_000)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "chat.jsonl"
        write_dataset(data, args.examples, rng)
        tokenizer = build_tokenizer([json.loads(line)["messages"][-1]["content"]
                                     for line in data.read_text().splitlines()[:5000]], CHAT_TEMPLATE, 8000)
        gpus = hypothetical_gpu(24)
        for name in ("qwen3-0.6b", "llama-3.2-3b", "llama-2-13b"):
            draft: dict[str, Any] = {"method": "qlora", "model": {"path": str(CONFIGS / f"{name}.json")},
                                     "data": {"train": str(data)}, "lora": {}, "training": {}}
            started = time.perf_counter()
            facts = model_facts(config_from_mapping(draft))
            facts_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            summary = summarise(config_from_mapping(draft), tokenizer)
            summary_s = time.perf_counter() - started
            timings = []
            for keystroke in range(args.keystrokes):
                section, key, values = EDITS[keystroke % len(EDITS)]
                draft[section][key] = values[(keystroke // len(EDITS)) % len(values)]
                started = time.perf_counter()
                plan_run(config_from_mapping(draft), facts, summary, gpus)
                timings.append((time.perf_counter() - started) * 1000)
            timings.sort()
            print(f"{name:13s} per keystroke (validate + plan_run): median {statistics.median(timings):.2f} ms, "
                  f"p99 {timings[int(0.99 * len(timings))]:.2f} ms, max {timings[-1]:.1f} ms over {len(timings)}; "
                  f"once: model facts {facts_ms:.0f} ms, data summary of {args.examples:,} examples {summary_s:.1f} s")


if __name__ == "__main__":
    main()
