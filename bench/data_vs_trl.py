"""tuneterm's data preparation against TRL's own, on the same file with the same tokenizer and chat template.

Three sides, each preparing the whole file:
- TRL: SFTTrainer's own `_prepare_dataset` (TRL's function, called on a trainer holding only what it reads), on the
  file loaded with `datasets` as a person loads it: `tokenize_fn` (trl.data_utils._tokenize, which is
  `tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)`) mapped over every record, then
  `build_labels`, truncation to SFTConfig's default max_length and the filter of fully masked examples. On 2 cores
  it is given dataset_num_proc=2, its own way to use them.
- TRL's inner loop: the file read line by line and only `_tokenize` and `build_labels`' expression per record, in
  this process, without the datasets map around them: the least TRL can do per record (a stricter yardstick than
  TRL itself).
- tuneterm: the data pass the wizard runs and training reuses (read, validate, drop duplicates, render, tokenise,
  mask all but the replies, per-example arrays, the prepared tokens written to the store), with a fresh cache so
  nothing is reused; with worker processes on the cores other work leaves free, as the app prepares.
- tuneterm every core: the same with a worker on each other core it is given, busy or not.

Each round runs in a fresh process pinned to 1 core, then one with 2 cores (os.sched_setaffinity, before anything
is imported); inside it the three first prepare the file's first 100 records untimed (imports, template
compilation), then each prepares the whole file, in an order rotated every round. Printed: records per second of
each, tuneterm's ratio to each (median and spread over the rounds), the CPU time each spends per record (all its
processes; on a machine shared with other work, wall time swings with the load, CPU time much less), and
tuneterm's speed-up from 1 to 2 cores. Beside it, the machine's own: what two processes of plain Python arithmetic
get done together against one alone, measured in each 2-core round. No program gains more from a second core than
that; on a machine whose cores other work shares, it is well below 2.

    python bench/data_vs_trl.py [--examples 30000] [--rounds 3] [--kind short|long]

The default file (about 9 MB) is over the size from which tuneterm spreads a pass over worker processes
(summary.PARALLEL_BYTES); a file under it is prepared in one process on any number of cores.

`short`: conversations like the demo's (its questions, one to three turns, a third with a system prompt) with the
demo's tokenizer. `long`: bench/data_throughput.py's longer conversations (sentences of 5 to 120 words).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIDES = ("trl", "trl inner loop", "tuneterm", "tuneterm every core")
SPIN = 10_000_000


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


def trl_preparation(path: Path, tokenizer: Any, cores: int) -> int:
    """SFTTrainer._prepare_dataset on the file as datasets loads it, with TRL's defaults (dataset_num_proc is None:
    one process) but on several cores, where it is given one process per core."""
    from datasets import Dataset, disable_progress_bars
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    folder = tempfile.mkdtemp(prefix="trl-bench-")
    trainer: Any = SFTTrainer.__new__(SFTTrainer)  # what _prepare_dataset reads of the trainer, without a model
    trainer._tokenizer, trainer.chat_template, trainer.completion_only_loss = tokenizer, None, None
    args = SFTConfig(output_dir=folder, report_to=[], use_cpu=True, bf16=False,
                     dataset_num_proc=cores if cores > 1 else None)
    dataset = Dataset.from_json(str(path), cache_dir=folder)
    prepared = SFTTrainer._prepare_dataset(trainer, dataset, tokenizer, args, False, None, "train")
    return len(dataset) if len(prepared) else 0


def trl_inner_loop(path: Path, tokenizer: Any, cores: int) -> int:
    """What SFTTrainer's tokenize_fn and build_labels do to each record of a conversational dataset, alone."""
    from trl.data_utils import _tokenize

    records = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            example = json.loads(line)
            output = _tokenize(tokenizer, example["messages"], return_assistant_tokens_mask=False,
                               chat_template=None, tools=example.get("tools"))
            masks: list[list[int]] = []  # build_labels' mask columns: none without {% generation %}
            labels = [token_id if all(bits) else -100
                      for token_id, *bits in zip(output["input_ids"], *masks, strict=False)]
            records += bool(labels)
    return records


def tuneterm_preparation(path: Path, tokenizer: Any, cores: int) -> int:
    """As the app prepares: workers on the cores that other work leaves free."""
    from tuneterm.data.summary import summarise_source

    os.environ["TUNETERM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tuneterm-bench-cache-")
    summary = summarise_source(str(path), tokenizer)
    return summary.read.records


def tuneterm_on_every_core(path: Path, tokenizer: Any, cores: int) -> int:
    """A worker on each other core, busy or not."""
    from tuneterm.data.summary import summarise_source
    from tuneterm.work import Work

    os.environ["TUNETERM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tuneterm-bench-cache-")
    summary = summarise_source(str(path), tokenizer, work=Work(cores=cores))
    return summary.read.records


PREPARATIONS: dict[str, Callable[[Path, Any, int], int]] = {
    "trl": trl_preparation, "trl inner loop": trl_inner_loop, "tuneterm": tuneterm_preparation,
    "tuneterm every core": tuneterm_on_every_core}


def cpu_seconds() -> float:
    """CPU time of this process and of its worker processes that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def spin(count: int = SPIN) -> float:
    """Seconds of plain Python arithmetic."""
    started, total = time.perf_counter(), 0
    for value in range(count):
        total += value
    return time.perf_counter() - started


def machine_speedup(cores: int) -> float:
    """What `cores` processes spinning at once get done against one alone (workers started and warm first)."""
    import multiprocessing

    alone = spin()
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(spin, [1] * cores)
        together = max(pool.map(spin, [SPIN] * cores, chunksize=1))
    return cores * alone / together


def one_round(args: argparse.Namespace) -> None:
    """In a process of its own, pinned to `args.cores` cores: each side once, in the order given; records per
    second and CPU microseconds per record of each."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory() as folder:  # the libraries' first calls import and compile: not timed
        head = Path(folder) / "head.jsonl"
        with open(args.data, encoding="utf-8") as source:
            head.write_text("".join(line for _, line in zip(range(100), source)), encoding="utf-8")
        for prepare in PREPARATIONS.values():
            prepare(head, tokenizer, args.cores)
    measured = {"machine": machine_speedup(args.cores)} if args.cores > 1 else {}
    for side in args.order.split(","):
        started, cpu = time.perf_counter(), cpu_seconds()
        records = PREPARATIONS[side](Path(args.data), tokenizer, args.cores)
        measured[side] = records / (time.perf_counter() - started)
        measured[f"{side} cpu"] = (cpu_seconds() - cpu) / records * 1e6
    print(json.dumps(measured))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=30_000)
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
            order = ",".join(SIDES[(index + k) % len(SIDES)] for k in range(len(SIDES)))
            for cores in (1, 2):
                output = subprocess.run([sys.executable, __file__, "--cores", str(cores), "--order", order,
                                         "--data", str(data), "--tokenizer", str(tokenizer)],
                                        check=True, capture_output=True, text=True).stdout
                got = json.loads(output.strip().splitlines()[-1])
                results[cores].append(got)
                print(f"round {index + 1}, {cores} core{'s' * (cores > 1)}: " + ", ".join(
                    f"{side} {got[side]:,.0f}/s ({got[f'{side} cpu']:,.0f} us CPU each)" for side in SIDES)
                    + (f"; the machine's own speed-up {got['machine']:.2f}" if "machine" in got else ""), flush=True)
        print(f"\n{args.examples:,} {args.kind} conversations ({data.stat().st_size / 1e6:.0f} MB), {args.rounds} "
              "rounds, median [min-max]:")
        for cores, rounds in results.items():
            print(f"  {cores} core{'s' * (cores > 1)}: " + ", ".join(
                f"{side} {spread([r[side] for r in rounds])}/s" for side in SIDES))
            for mine in SIDES[2:] if cores > 1 else SIDES[2:3]:
                for other in SIDES[:2]:
                    print(f"    {mine} / {other}: {spread([r[mine] / r[other] for r in rounds], '.2f')} (records per "
                          f"second), {spread([r[f'{other} cpu'] / r[f'{mine} cpu'] for r in rounds], '.2f')} (CPU "
                          "per record)")
        for side in SIDES[2:]:
            speedups = [two[side] / one[side] for one, two in zip(results[1], results[2])]
            print(f"  {side}: speed-up from 1 to 2 cores {spread(speedups, '.2f')}")
        print(f"  the machine's own speed-up (two processes of plain Python against one): "
              f"{spread([r['machine'] for r in results[2]], '.2f')}")


def spread(values: list[float], form: str = ",.0f") -> str:
    return f"{statistics.median(values):{form}} [{min(values):{form}}-{max(values):{form}}]"


if __name__ == "__main__":
    main()
