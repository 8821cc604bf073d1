"""Latency of the VRAM estimate, which the plan screen recomputes on every keystroke.

Model facts are read once per model (config.json on the meta device); after that each estimate is arithmetic.
Prints the median and the 99th percentile over many estimates with varied settings, and the one-time cost of
reading the facts.

    python bench/plan_latency.py
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuneterm.plan.memory import MemorySetup, estimate_memory, largest_micro_batch  # noqa: E402
from tuneterm.plan.model import LoraShape, load_model_facts  # noqa: E402

CONFIGS = ROOT / "tests" / "data" / "model_configs"


def main() -> None:
    for name in ("qwen3-0.6b", "llama-3.2-3b", "llama-2-13b"):
        started = time.perf_counter()
        facts = load_model_facts(str(CONFIGS / f"{name}.json"))
        facts_ms = (time.perf_counter() - started) * 1000
        base = MemorySetup(method="qlora", micro_batch=2, seq_len=2048, optim="paged_adamw_8bit")
        timings = []
        for i in range(2000):
            setup = replace(base, micro_batch=1 + i % 8, seq_len=512 * (1 + i % 8), lora=LoraShape(r=8 << (i % 4)),
                            gradient_checkpointing=bool(i % 2))
            started = time.perf_counter()
            estimate_memory(facts, setup)
            timings.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        largest_micro_batch(facts, base, 24e9, effective_batch=64)
        search_ms = (time.perf_counter() - started) * 1000
        timings.sort()
        print(f"{name:14s} estimate median {statistics.median(timings):.3f} ms, p99 {timings[int(0.99 * len(timings))]:.3f} "
              f"ms; largest micro-batch search {search_ms:.2f} ms; reading the facts once {facts_ms:.0f} ms")


if __name__ == "__main__":
    main()
