"""The data prepared once and trained as prepared: the store a pass leaves, the run that reuses it, the worker
processes a large file is spread over (in order, cancelled within a second, a dead one said), and the pace the
data step shows."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import ROOT, doubled, doubled_slowly, forever, no_setup
from tests.unit.test_tool_and_reasoning_data import ANSWER, QUESTION, SYSTEM, TOOL_CONVERSATION, TOOLS, tokenizer_for
from tuneterm.data.parallel import WorkerDied, Workers, in_order
from tuneterm.errors import Cancelled
from tuneterm.work import Progress, Work

# --------------------------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize("family", ["qwen3", "llama3.1", "mistral-nemo"])
def test_render_writes_what_apply_chat_template_writes(family: str) -> None:
    from tuneterm.data.template import render

    tokenizer = tokenizer_for(family)
    plain = [SYSTEM, QUESTION, {"role": "assistant", "content": ANSWER}]
    one_call = [*TOOL_CONVERSATION[:2], {**TOOL_CONVERSATION[2], "tool_calls": TOOL_CONVERSATION[2]["tool_calls"][:1]},
                TOOL_CONVERSATION[3], TOOL_CONVERSATION[-1]]  # Llama 3.1 takes one call at a time
    cases: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
        (plain, {}), (plain[:2], {"add_generation_prompt": True}), (one_call, {"tools": TOOLS})]
    if family == "qwen3":
        cases += [(TOOL_CONVERSATION, {"tools": TOOLS, "enable_thinking": False}), (plain, {"enable_thinking": True})]
    for conversation, options in cases:
        expected = tokenizer.apply_chat_template(conversation, tokenize=False, **options)
        assert render(tokenizer, conversation, tools=options.get("tools"), thinking=options.get("enable_thinking"),
                      generation_prompt=options.get("add_generation_prompt", False)) == expected, options


# --------------------------------------------------------------------------------------------------------------
# The prepared data, reused


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Chat template renderings in this process, counted."""
    from tuneterm.data import chat, template

    count = {"n": 0}
    original = template.render

    def counted(*args: Any, **kwargs: Any) -> str:
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(chat, "render", counted)
    return count


class _StopAfterTheData(Exception):
    pass


def test_a_run_trains_the_data_the_wizard_prepared_without_preparing_it_again(
        tiny_model: Path, chat_data: dict[str, Path], tmp_path: Path, renders: dict[str, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneterm.config import config_from_mapping
    from tuneterm.engine.events import PhaseProgressed, PhaseStarted, RunFailed
    from tuneterm.engine.run import runner
    from tuneterm.engine.run.plans import new_run
    from tuneterm.plan import planner

    train = Path(shutil.copy(chat_data["train"], tmp_path / "train.jsonl"))
    config = config_from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(train)}})
    monkeypatch.setattr(planner, "_SUMMARIES", OrderedDict())
    summary = planner.data_summary(config, Work())  # what the wizard's data step runs
    assert renders["n"] >= summary.train.examples > 100

    def load_model(*args: Any, **kwargs: Any) -> None:
        raise _StopAfterTheData  # the run's data is prepared: that is what this test is about

    monkeypatch.setattr(runner, "load_model", load_model)

    def run_counting() -> tuple[int, list[Any]]:
        renders["n"] = 0
        events: list[Any] = []
        result = runner.run(new_run(config, tmp_path / "runs"), events.append)
        assert isinstance(result, RunFailed) and result.error_type == "_StopAfterTheData", result
        assert [e.phase for e in events if isinstance(e, PhaseStarted)][-1] == "loading model"
        return renders["n"], [e for e in events if isinstance(e, PhaseProgressed)]

    rendered, _ = run_counting()  # in the app: the summary the wizard holds
    assert rendered == 0
    planner._SUMMARIES.clear()  # a detached run: another process, with nothing in memory
    rendered, progress = run_counting()
    assert rendered == 0 and progress[-1].phase == "prepared before: train.jsonl"
    with open(train, "a", encoding="utf-8") as handle:  # the data changed since it was prepared
        handle.write(json.dumps({"messages": [{"role": "user", "content": "One more?"},
                                              {"role": "assistant", "content": "One more."}]}) + "\n")
    planner._SUMMARIES.clear()
    rendered, _ = run_counting()
    assert rendered >= summary.train.examples + 1


def test_prepared_examples_are_those_of_the_pass_and_a_changed_setting_prepares_anew(
        tmp_path: Path, renders: dict[str, int]) -> None:
    from tuneterm.config import config_from_mapping
    from tuneterm.data.chat import render_for_training
    from tuneterm.data.prepare import prepare
    from tuneterm.data.tokenize import encode_batch

    tokenizer = tokenizer_for("qwen3")
    rows = [{"messages": TOOL_CONVERSATION, "tools": TOOLS}] + [
        {"messages": [QUESTION, {"role": "assistant", "content": f"{ANSWER} ({i})"}]} for i in range(9)]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    def prepared(**data: Any) -> Any:
        renders["n"] = 0
        config = config_from_mapping({"model": {"path": "unused"}, "data": {"train": str(path), "val_size": 2,
                                                                            **data}})
        return prepare(config, tokenizer, 4096), renders["n"]

    first, rendered = prepared()
    assert rendered > 0
    again, rendered = prepared()
    assert rendered == 0, "the same data, tokenizer and settings: prepared once"
    for one, other in zip(first.train.examples + first.eval.examples, again.train.examples + again.eval.examples):
        assert (one.input_ids == other.input_ids).all() and (one.labels == other.labels).all()
    # What is trained is what the conversation rendered and tokenised alone gives.
    [alone] = encode_batch(tokenizer, [render_for_training(tokenizer, TOOL_CONVERSATION, "responses", TOOLS)])
    [stored] = first.summary.train.encoded(np.array([0]))
    assert (stored.input_ids == alone.input_ids).all() and (stored.labels == alone.labels).all()
    assert stored.trained_runs and stored.note is None, "training examples carry no note; eval examples do"
    for example in first.eval.examples:
        assert example.note is not None and example.note.ends_turn
        assert example.note.question == QUESTION["content"]  # the person's last words, not a tool's result
        assert example.note.where.startswith(f"{path}:")
    dropped, rendered = prepared(reasoning="drop")
    assert rendered > 0 and dropped.summary.train.encode.thinking[False] == 10


# --------------------------------------------------------------------------------------------------------------
# Worker processes


def test_a_pass_starts_workers_only_on_cores_that_other_work_leaves_free(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from tuneterm.data import parallel

    monkeypatch.setattr(parallel, "usable_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr("tuneterm.hardware.usable_cores", lambda: [0, 1, 2, 3])
    load = {"percent": [5.0, 3.0, 0.0, 1.0]}
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: load["percent"])
    assert parallel.worker_count() == 3, "a worker on each other core"
    load["percent"] = [5.0, 97.0, 88.0, 1.0]  # two cores busy with other work
    assert parallel.worker_count() == 1
    load["percent"] = [100.0, 97.0, 88.0, 60.0]
    assert parallel.worker_count() == 0, "this process alone: nothing is free"
    assert parallel.worker_count(cores=4) == 3, "the cores given are used whatever their load"


def test_results_come_in_order_from_the_workers_and_this_process() -> None:
    results = list(in_order(range(400), doubled_slowly, Workers(2, no_setup, (), doubled), Work()))
    assert [value for value, _ in results] == [2 * i for i in range(400)]
    assert len({pid for _, pid in results} - {os.getpid()}) >= 1, "the workers took some of the items"
    assert not multiprocessing.active_children()


class _Endless:
    """Items without end, taken by `in_order` in this process (cancellable) or sent to workers that never return
    them; `sent` is how many went to the workers."""

    def __init__(self, work: Work, workers: int):
        self.work, self.taken, self.here = work, 0, 0
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self.consume, args=(Workers(workers, no_setup, (), forever),))
        self.thread.start()

    def items(self) -> Any:
        while True:
            self.taken += 1
            yield self.taken

    def run_here(self, item: int) -> tuple[int, int]:
        self.work.check()
        self.here += 1
        return doubled_slowly(item)

    def consume(self, workers: Workers[Any, Any]) -> None:
        try:
            for _ in in_order(self.items(), self.run_here, workers, self.work):
                pass
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.outcome["error"], self.outcome["at"] = exc, time.monotonic()

    def workers_busy(self, count: int) -> list[multiprocessing.process.BaseProcess]:
        """The worker processes, once they hold `count` items."""
        deadline = time.monotonic() + 60
        while self.taken - self.here < count:
            assert time.monotonic() < deadline, "the workers never took an item"
            time.sleep(0.05)
        return multiprocessing.active_children()


def test_workers_start_where_stderr_has_no_file_descriptor() -> None:
    """As in the app: Textual captures sys.stderr, and its fileno() is -1."""
    script = ("import sys\n"
              "class Captured:\n"
              "    def write(self, text): pass\n"
              "    def flush(self): pass\n"
              "    def fileno(self): return -1\n"
              "if __name__ == '__main__':\n"
              "    sys.stderr = Captured()\n"
              "    from tests.helpers import doubled, doubled_slowly, no_setup\n"
              "    from tuneterm.data.parallel import Workers, in_order\n"
              "    from tuneterm.work import Work\n"
              "    results = list(in_order(range(300), doubled_slowly, Workers(1, no_setup, (), doubled), Work()))\n"
              "    print(len({pid for _, pid in results}), [v for v, _ in results] == list(range(0, 600, 2)))\n")
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert output.stdout.split() == ["2", "True"], output.stderr


def test_a_cancel_ends_every_worker_within_a_second() -> None:
    work = Work()
    endless = _Endless(work, workers=2)
    workers = endless.workers_busy(4)  # each has taken one, and two more wait for them
    assert len(workers) == 2
    cancelled = time.monotonic()
    work.cancel()
    endless.thread.join(5)
    assert isinstance(endless.outcome.get("error"), Cancelled) and endless.outcome["at"] - cancelled < 1.0
    assert all(worker.exitcode is not None for worker in workers), "every worker has ended"
    assert not multiprocessing.active_children()


def test_a_cancelled_pass_ends_its_workers_within_a_second_and_keeps_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real data pass spread over a worker, cancelled while the worker holds chunks."""
    import random

    from tuneterm.data import parallel
    from tuneterm.data import summary as summaries
    from tuneterm.data.summary import summarise_source
    from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer, conversations

    train, _ = conversations(random.Random(5))
    tokenizer = build_tokenizer([m["content"] for c in train for m in c], CHAT_TEMPLATE, vocab_size=300)
    path = tmp_path / "chat.jsonl"
    with open(path, "w", encoding="utf-8") as handle:  # minutes of work on two cores
        for index in range(100_000):
            messages = train[index % len(train)]
            handle.write(json.dumps({"messages": [{**messages[0], "content": f"{messages[0]['content']} ({index})"},
                                                  *messages[1:]]}) + "\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNETERM_CACHE_DIR", str(cache))
    monkeypatch.setattr(summaries, "PARALLEL_BYTES", 0)
    teams: list[Any] = []
    busy = threading.Event()

    class Watched(parallel._Team):
        """The pass's team of workers, said to be busy once a worker holds a chunk."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            teams.append(self)

        def collect(self, block: bool) -> None:
            super().collect(block)
            if self.ready and self.sent:
                busy.set()

    monkeypatch.setattr(parallel, "_Team", Watched)
    work = Work(cores=2)
    outcome: dict[str, Any] = {}

    def summarise() -> None:
        try:
            summarise_source(str(path), tokenizer, work=work)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"], outcome["at"] = exc, time.monotonic()

    thread = threading.Thread(target=summarise)
    thread.start()
    assert busy.wait(60), "the worker never took a chunk"
    [team] = teams
    workers = list(team.processes)
    assert len(workers) == 1 and workers[0].is_alive()
    cancelled = time.monotonic()
    work.cancel()
    thread.join(10)
    assert isinstance(outcome.get("error"), Cancelled), outcome
    assert outcome["at"] - cancelled < 1.0
    assert all(worker.exitcode is not None for worker in workers), "every worker has ended"
    assert not multiprocessing.active_children()
    assert not any((cache / "prepared").iterdir()), "nothing half-prepared is kept"


def test_a_worker_that_dies_stops_the_work_and_says_so() -> None:
    endless = _Endless(Work(), workers=1)
    [worker] = endless.workers_busy(1)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)  # what the kernel does to a process when memory runs out
    endless.thread.join(5)
    outcome = endless.outcome
    assert isinstance(outcome.get("error"), WorkerDied)
    assert str(outcome["error"]).startswith("a worker process preparing the data was killed by signal 9 (out of "
                                            "memory?)")


def test_the_workers_end_when_the_process_that_started_them_is_killed() -> None:
    """kill -9 of the app (or of a run) leaves nothing to terminate the workers: they see it and end."""
    import psutil

    script = ("import multiprocessing, time\n"
              "from tests.helpers import doubled, doubled_slowly, no_setup\n"
              "from tuneterm.data.parallel import Workers, in_order\n"
              "from tuneterm.work import Work\n"
              "def items():\n"
              "    yield from range(300)\n"
              "    print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
              "    time.sleep(600)\n"
              "if __name__ == '__main__':\n"
              "    for _ in in_order(items(), doubled_slowly, Workers(2, no_setup, (), doubled), Work()):\n"
              "        pass\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2
        workers = [psutil.Process(pid) for pid in pids]
        assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    try:
        while any(_alive(worker) for worker in workers):
            assert time.monotonic() < deadline, "a worker outlived the process that started it"
            time.sleep(0.1)
    finally:
        for worker in workers:
            if _alive(worker):
                worker.kill()


def _alive(process: Any) -> bool:
    import psutil

    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_a_pass_spread_over_a_worker_prepares_what_one_process_prepares(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from tuneterm.data import summary as summaries
    from tuneterm.data.pipeline import ChunkEncoder
    from tuneterm.data.summary import summarise_source
    from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer, conversations

    train, _ = conversations(random.Random(5))
    tokenizer = build_tokenizer([m["content"] for c in train for m in c], CHAT_TEMPLATE, vocab_size=300)
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in train[:320]), encoding="utf-8")
    alone = summarise_source(str(path), tokenizer, work=Work(cores=1))
    copy = shutil.copy(path, tmp_path / "same.jsonl")  # another file: prepared anew, not taken from the store
    inline = {"chunks": 0}

    class SlowHere(ChunkEncoder):
        """This process's share, slowed so that the worker (up after its imports) takes some."""

        def __call__(self, chunk: Any) -> Any:
            inline["chunks"] += 1
            time.sleep(0.15)
            return super().__call__(chunk)

    monkeypatch.setattr(summaries, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(summaries, "CHUNK", 8)
    monkeypatch.setattr(summaries, "ChunkEncoder", SlowHere)
    spread = summarise_source(str(copy), tokenizer, work=Work(cores=2))
    assert 0 < inline["chunks"] < 40, "the worker prepared some of the 40 chunks"
    for name in ("lengths", "trained", "run_owner", "run_start", "run_end"):
        assert np.array_equal(getattr(alone, name), getattr(spread, name)), name
    assert [p.segments for p in alone.previews] == [p.segments for p in spread.previews]
    ids = [e.input_ids for e in alone.encoded(np.arange(alone.examples))]
    assert all((a == b).all() for a, b in zip(ids, (e.input_ids for e in spread.encoded(np.arange(spread.examples)))))


# --------------------------------------------------------------------------------------------------------------
# The pace shown


def test_the_data_step_shows_records_per_second_and_time_left() -> None:
    from tuneterm.ui.widgets.data_step import progress_text

    assert progress_text(Progress("reading train.jsonl", 40, fraction=0.001, seconds=0.2)) == \
        "reading train.jsonl: 40 records"
    assert progress_text(Progress("reading train.jsonl", 12_000, fraction=0.25, seconds=6.0)) == \
        "reading train.jsonl: 12,000 records, 2,000/s, 0:00:18 left"
    assert progress_text(Progress("streaming org/data", 5_000, seconds=10.0)) == \
        "streaming org/data: 5,000 records, 500/s"


def test_the_pace_starts_again_with_each_file() -> None:
    seen: list[Progress] = []
    work = Work(on_progress=seen.append, interval=0)
    work.step("reading train.jsonl", 1000, fraction=0.5)
    time.sleep(0.6)
    work.step("reading train.jsonl", 2000, fraction=1.0)
    work.step("reading eval.jsonl", 10, fraction=0.1)
    assert seen[1].rate is not None and seen[1].rate > 1000
    assert seen[2].seconds < 0.1 and seen[2].rate is None
