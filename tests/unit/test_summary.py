"""The data summary: one streaming pass whose numbers equal what training uses, derived cheaply for any settings,
cancellable at once, with progress; files that start with a byte-order mark."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_jsonl
from tuneterm.config import RunConfig, config_from_mapping
from tuneterm.data.pipeline import read_examples
from tuneterm.data.prepare import prepare, summarise, view_of
from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer, conversations
from tuneterm.errors import Cancelled, DataError
from tuneterm.work import Progress, Work


@pytest.fixture(scope="module")
def tokenizer():
    import random

    train, _ = conversations(random.Random(1))
    return build_tokenizer([m["content"] for c in train for m in c], CHAT_TEMPLATE, vocab_size=400)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import random

    train, _ = conversations(random.Random(2))
    return write_jsonl(tmp_path_factory.mktemp("summary") / "chat.jsonl", [{"messages": m} for m in train])


def config_for(train: Path, **settings: object) -> RunConfig:
    data: dict[str, object] = {"train": str(train)}
    training: dict[str, object] = {}
    for key, value in settings.items():
        (training if key in ("max_length", "seed") else data)[key] = value
    return config_from_mapping({"model": {"path": "unused"}, "data": data, "training": training})


def test_bom_files_read_as_the_text_they_are(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + (json.dumps(row) + "\r\n").encode() * 2)
    (tmp_path / "b.json").write_bytes(bom + json.dumps([row]).encode())
    (tmp_path / "c.csv").write_bytes(bom + b"instruction,output\r\nhi,hello\r\n")
    for name, fmt in (("a.jsonl", "messages"), ("b.json", "messages"), ("c.csv", "alpaca")):
        report, stream = read_examples(str(tmp_path / name))
        examples = list(stream)
        assert not report.invalid, [str(p) for p in report.invalid.items]
        assert report.detection.format == fmt and examples[0].chat.messages[-1]["content"] == "hello", name


def test_the_summary_gives_the_numbers_training_uses(tokenizer, chat_file: Path) -> None:
    for settings in ({}, {"val_size": 0.25, "seed": 5}, {"max_length": 40}, {"max_samples": 300, "val_size": 30}):
        config = config_for(chat_file, **settings)
        view = view_of(summarise(config, tokenizer), config, None)
        prepared = prepare(config, tokenizer, None)
        assert view.train_examples == len(prepared.train.examples), settings
        assert prepared.eval is not None
        assert view.eval_examples == len(prepared.eval.examples), settings
        assert view.max_length == prepared.max_length
        kept = np.array([e.length for e in prepared.train.examples])
        assert kept.max() <= view.max_length


def test_changing_settings_reuses_the_pass(tokenizer, chat_file: Path) -> None:
    summary = summarise(config_for(chat_file), tokenizer)
    views = {}
    for max_length in (24, 32, 48, "auto"):
        views[max_length] = summary.view(val_size=0.1, seed=3407, max_samples=None, max_length=max_length,
                                         context_length=None, strict=True)
    assert views[24].truncation.truncated_examples > views[48].truncation.truncated_examples
    assert views["auto"].max_length % 64 == 0 and views["auto"].truncation.truncated_examples == 0
    # Truncation derived from the arrays equals cutting the real token sequences.
    prepared_lengths = [e.length for e in prepare(config_for(chat_file, val_size=0.0), tokenizer, None).train.examples]
    whole = summary.view(val_size=0.0, seed=1, max_samples=None, max_length=32, context_length=None, strict=True)
    assert whole.truncation.truncated_examples == sum(length > 32 for length in prepared_lengths)


def test_an_eval_split_that_leaves_nothing_to_train_on_is_an_error(tokenizer, chat_file: Path) -> None:
    summary = summarise(config_for(chat_file, max_samples=10), tokenizer)
    view = summary.view(val_size=10, seed=1, max_samples=10, max_length="auto", context_length=None, strict=True)
    assert any(f.level == "error" and f.location.key == "data.val_size" for f in view.findings)


def test_lenient_mode_refuses_a_file_that_is_mostly_invalid(tokenizer, tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [good] * 1 + [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(9)]
    path = write_jsonl(tmp_path / "mostly-bad.jsonl", rows)
    with pytest.raises(DataError, match="9 of 10 records are not valid.*more than 50%.*not the data to train on"):
        prepare(config_for(path, strict=False), tokenizer, None)


def test_progress_reports_records_and_share_of_the_file(tokenizer, chat_file: Path) -> None:
    seen: list[Progress] = []
    summarise(config_for(chat_file), tokenizer, Work(on_progress=seen.append, interval=0))
    assert seen and seen[-1].done == 700 and seen[-1].total is None
    assert seen[-1].share == pytest.approx(1.0) and all(p.share is not None and 0 < p.share <= 1 for p in seen)
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def _large_chat_file(path: Path, examples: int) -> Path:
    words = "model data token train loss adapter rank alpha batch epoch gradient memory".split()
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(examples):
            reply = " ".join(words[(index + k) % len(words)] for k in range(60))
            handle.write(json.dumps({"messages": [{"role": "user", "content": f"Question {index}?"},
                                                  {"role": "assistant", "content": reply}]}) + "\n")
    return path


def test_a_summary_of_a_large_file_stops_within_a_second_of_the_cancel(tokenizer, tmp_path: Path) -> None:
    path = _large_chat_file(tmp_path / "large.jsonl", 60_000)  # about a minute of work on a 2-core machine
    started = threading.Event()
    work = Work(on_progress=lambda p: started.set() if p.done > 1000 else None, interval=0)
    outcome: dict[str, float] = {}

    def summarise_in_a_thread() -> None:
        try:
            summarise(config_for(path), tokenizer, work)
        except Cancelled:
            outcome["stopped"] = time.monotonic()

    thread = threading.Thread(target=summarise_in_a_thread)
    thread.start()
    assert started.wait(60), "the summary never got going"
    cancelled_at = time.monotonic()
    work.cancel()
    thread.join(10)
    assert "stopped" in outcome, "the summary did not stop with Cancelled"
    assert outcome["stopped"] - cancelled_at < 1.0
