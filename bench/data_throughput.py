"""Records per second through the data summary (read, validate, render the chat template, tokenise, label).

Writes a 200,000-conversation chat JSONL (one to three turns, a third with a system prompt), trains a byte-level
BPE tokenizer with a ChatML template on part of it, then times the data summary over the whole file (the pass
the plan screen runs in a worker, and the one training runs), and reports the peak resident memory: the summary
streams, so memory grows with a few integers per example, not with the file.

    python bench/data_throughput.py [--examples 200000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuneterm.data.summary import summarise_source  # noqa: E402
from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer  # noqa: E402

WORDS = ("model data token train loss adapter rank alpha batch epoch gradient memory learning rate schedule "
         "warmup eval checkpoint prompt response template the a of to and is in for with on").split()


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def write_dataset(path: Path, count: int, rng: random.Random) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            messages = [{"role": "system", "content": "You are a helpful assistant."}] if index % 3 == 0 else []
            for _ in range(rng.randint(1, 3)):
                messages += [{"role": "user", "content": f"{sentence(rng, 5, 40)} ({index})"},
                             {"role": "assistant", "content": sentence(rng, 10, 120)}]
            handle.write(json.dumps({"messages": messages}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chat.jsonl"
        write_dataset(path, args.examples, rng)
        corpus = [sentence(rng, 5, 40) for _ in range(20_000)]
        tokenizer = build_tokenizer(corpus, CHAT_TEMPLATE, vocab_size=8000)
        before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        summary = summarise_source(str(path), tokenizer, previews=0)
        seconds = time.perf_counter() - started
        size_mb = path.stat().st_size / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    records, tokens = summary.read.records, int(summary.lengths.sum())
    print(f"{records:,} records ({size_mb:.0f} MB, {tokens / 1e6:.1f}M tokens) in {seconds:.1f} s: "
          f"{records / seconds:,.0f} records/s, {tokens / seconds / 1e6:.2f}M tokens/s; peak RSS {peak_mb:,.0f} MB "
          f"({peak_mb - before_mb:+,.0f} MB during the summary)")


if __name__ == "__main__":
    main()
