"""Records per second through the data pass (read, validate, render the chat template, tokenise, label, write the
prepared tokens), and its memory at two file sizes: the pass streams, so memory does not grow with the file.

Writes a 200,000-conversation chat JSONL (one to three turns, a third with a system prompt), trains a byte-level
BPE tokenizer with a ChatML template on part of it, then runs the data summary (the pass the wizard runs in a
worker, and the one training reuses) over the first tenth of the file and over the whole of it, each in a fresh
process with an empty cache, on every core it may use. Printed for each: records and tokens per second, the peak
resident memory of the process and of its largest worker process, and the size of the prepared tokens on disk.

    python bench/data_throughput.py [--examples 200000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def measure(data: Path, tokenizer_dir: Path) -> None:
    """In a fresh process: one data pass, and what it took."""
    import os

    from transformers import AutoTokenizer

    from tuneterm.data.summary import summarise_source

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cache = Path(tempfile.mkdtemp(prefix="tuneterm-bench-cache-"))
    os.environ["TUNETERM_CACHE_DIR"] = str(cache)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    summary = summarise_source(str(data), tokenizer, previews=0)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "records": summary.read.records, "tokens": int(summary.lengths.sum()), "seconds": seconds,
        "before_mb": before_mb, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "store_mb": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), Path(args.measure[1]))
        return
    from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        whole, tenth, tokenizer_dir = Path(folder) / "chat.jsonl", Path(folder) / "tenth.jsonl", Path(folder) / "tok"
        write_dataset(whole, args.examples, rng)
        with open(whole, encoding="utf-8") as source, open(tenth, "w", encoding="utf-8") as head:
            head.writelines(line for _, line in zip(range(args.examples // 10), source))
        build_tokenizer([sentence(rng, 5, 40) for _ in range(20_000)], CHAT_TEMPLATE,
                        vocab_size=8000).save_pretrained(tokenizer_dir)
        for path in (tenth, whole):
            output = subprocess.run([sys.executable, __file__, "--measure", str(path), str(tokenizer_dir)],
                                    check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            records, tokens, seconds = result["records"], result["tokens"], result["seconds"]
            print(f"{records:,} records ({path.stat().st_size / 1e6:.0f} MB, {tokens / 1e6:.1f}M tokens) in "
                  f"{seconds:.1f} s: {records / seconds:,.0f} records/s, {tokens / seconds / 1e6:.2f}M tokens/s; "
                  f"peak RSS {result['peak_mb']:,.0f} MB ({result['peak_mb'] - result['before_mb']:+,.0f} MB during "
                  f"the pass), largest worker {result['worker_peak_mb']:,.0f} MB; prepared tokens on disk "
                  f"{result['store_mb']:,.0f} MB", flush=True)


if __name__ == "__main__":
    main()
