"""tuneterm's data preparation against TRL's own, on the same file with the same tokenizer and chat template.

TRL's SFTTrainer prepares a conversational dataset record by record: `tokenize_fn` calls trl.data_utils._tokenize,
which is `tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)`, then `build_labels` copies
the ids into labels (no mask without {% generation %} in the template). The TRL side here reads the JSONL file
line by line and runs exactly those two steps per record (its own `_tokenize`; the datasets map around them, its
Arrow writes and cache files are left out, which only flatters TRL). The tuneterm side is the data pass the wizard
runs and training reuses (read, validate, drop duplicates, render, tokenise, mask the prompt, per-example arrays,
the prepared store written to disk), with a fresh cache each round so nothing is reused.

Each round runs in a fresh process pinned to 1 core, then one with 2 cores (os.sched_setaffinity, before anything
is imported); inside it TRL and tuneterm alternate, the first of the two swapped every round. Printed: records per
second of each, the ratio tuneterm / TRL per core count (median and spread over the rounds), and tuneterm's
speed-up from 1 to 2 cores.

    python bench/data_vs_trl.py [--examples 10000] [--rounds 3] [--kind short|long]

`short`: conversations like the demo's (its questions, one to three turns, a third with a system prompt) with the
demo's tokenizer. `long`: bench/data_throughput.py's longer conversations (sentences of 5 to 120 words).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def short_conversations(path: Path, count: int, rng: random.Random) -> None:
    """`count` distinct conversations of the demo's questions: one to three turns, a third with a system prompt."""
    from tuneterm.demo import SYSTEM_PROMPTS, demo_questions

    questions = demo_questions()
    rows: dict[str, list[dict[str, str]]] = {}
    while len(rows) < count:
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.33 else []
        for question, answer in rng.sample(questions, k=rng.randint(1, 3)):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.setdefault(json.dumps(messages), messages)
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows.values()), encoding="utf-8")


def demo_tokenizer(directory: Path) -> None:
    """The demo's tokenizer (the corpus and settings `tuneterm demo` trains it with), saved to `directory`."""
    from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer, conversations

    train, evaluation = conversations(random.Random(3407))
    build_tokenizer([m["content"] for c in train + evaluation for m in c], CHAT_TEMPLATE).save_pretrained(directory)


def trl_preparation(path: Path, tokenizer: object) -> int:
    """What SFTTrainer's tokenize_fn and build_labels do to each record of a conversational dataset."""
    from trl.data_utils import _tokenize

    records = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            example = json.loads(line)
            output = _tokenize(tokenizer, example["messages"], return_assistant_tokens_mask=False,  # type: ignore[arg-type]
                               chat_template=None, tools=example.get("tools"))
            masks: list[list[int]] = []  # build_labels' mask columns: none without {% generation %}
            labels = [token_id if all(bits) else -100
                      for token_id, *bits in zip(output["input_ids"], *masks, strict=False)]
            records += bool(labels)
    return records


def tuneterm_preparation(path: Path, tokenizer: object) -> int:
    from tuneterm.data.summary import summarise_source

    os.environ["TUNETERM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tuneterm-bench-cache-")
    summary = summarise_source(str(path), tokenizer)
    return summary.read.records


def one_round(args: argparse.Namespace) -> None:
    """In a process of its own, pinned to `args.cores` cores: TRL and tuneterm once each, in the order given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    sides = {"trl": trl_preparation, "tuneterm": tuneterm_preparation}
    rates = {}
    for side in args.order.split(","):
        started = time.perf_counter()
        records = sides[side](Path(args.data), tokenizer)
        rates[side] = records / (time.perf_counter() - started)
    print(json.dumps(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kind", choices=("short", "long"), default="short")
    parser.add_argument("--cores", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--order", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
        one_round(args)
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("this bench compares 1 and 2 cores: it needs at least 2")
    with tempfile.TemporaryDirectory() as folder:
        data, tokenizer = Path(folder) / "chat.jsonl", Path(folder) / "tokenizer"
        rng = random.Random(0)
        if args.kind == "short":
            short_conversations(data, args.examples, rng)
        else:
            from bench.data_throughput import write_dataset

            write_dataset(data, args.examples, rng)
        demo_tokenizer(tokenizer)
        results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for index in range(args.rounds):
            order = "trl,tuneterm" if index % 2 == 0 else "tuneterm,trl"
            for cores in (1, 2):
                output = subprocess.run([sys.executable, __file__, "--cores", str(cores), "--order", order,
                                         "--data", str(data), "--tokenizer", str(tokenizer)],
                                        check=True, capture_output=True, text=True).stdout
                results[cores].append(json.loads(output.strip().splitlines()[-1]))
                rates = results[cores][-1]
                print(f"round {index + 1}, {cores} core{'s' * (cores > 1)}: TRL {rates['trl']:,.0f}/s, tuneterm "
                      f"{rates['tuneterm']:,.0f}/s, ratio {rates['tuneterm'] / rates['trl']:.2f}", flush=True)
        print(f"\n{args.examples:,} {args.kind} conversations, {args.rounds} rounds (median [min-max]):")
        for cores, rounds in results.items():
            ratios = [r["tuneterm"] / r["trl"] for r in rounds]
            print(f"  {cores} core{'s' * (cores > 1)}: TRL {spread([r['trl'] for r in rounds])} records/s, tuneterm "
                  f"{spread([r['tuneterm'] for r in rounds])} records/s; tuneterm / TRL {spread(ratios, '.2f')}")
        speedups = [two["tuneterm"] / one["tuneterm"] for one, two in zip(results[1], results[2])]
        print(f"  tuneterm's speed-up from 1 to 2 cores: {spread(speedups, '.2f')}")


def spread(values: list[float], form: str = ",.0f") -> str:
    return f"{statistics.median(values):{form}} [{min(values):{form}}-{max(values):{form}}]"


if __name__ == "__main__":
    main()
