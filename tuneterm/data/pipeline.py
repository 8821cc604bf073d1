"""The one path from a dataset source to token ids and labels, shared by training and inspection.

read -> detect the format -> validate and normalise each record (with its location) -> drop or report
duplicates -> render with the model's chat template -> tokenise in batches -> labels from the trained character
spans -> per-example checks. Everything streams, so `tuneterm inspect` can read a file of any size; training
collects what it needs on top of the same stream. What a person sees in a preview is what the model trains on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneterm.data.chat import RenderedConversation, TemplateError, render_for_training
from tuneterm.data.formats import Columns, Conversation, Detection, Invalid, detect_format, to_conversation
from tuneterm.data.records import Record, iter_records
from tuneterm.data.tokenize import IGNORE_INDEX, encode_batch
from tuneterm.errors import DataError, Location, Problem
from tuneterm.work import Work

DETECTION_SAMPLE = 200
BATCH = 1000
KEPT_PROBLEMS = 1000
"""Problems of one kind kept with their locations; the rest are counted (a broken 1 GB file stays small)."""


class ProblemList:
    """Problems of one kind: the first KEPT_PROBLEMS with their locations, all of them counted by reason."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.count = 0
        self.reasons: Counter[str] = Counter()

    def add(self, problem: Problem) -> None:
        self.count += 1
        self.reasons[problem.reason or "other"] += 1
        if len(self.items) < KEPT_PROBLEMS:
            self.items.append(problem)

    def breakdown(self) -> str:
        """"8 malformed JSON, 4 unknown role"."""
        return ", ".join(f"{count:,} {reason}" for reason, count in self.reasons.most_common())

    def __bool__(self) -> bool:
        return self.count > 0

    def __len__(self) -> int:
        return self.count


@dataclass
class ReadReport:
    """What reading found, filled in as the stream is consumed."""

    detection: Detection
    records: int = 0
    invalid: ProblemList = field(default_factory=ProblemList)
    duplicates: ProblemList = field(default_factory=ProblemList)


@dataclass(frozen=True)
class Example:
    conversation: Conversation
    location: Location


def read_examples(source: str, fmt: str = "auto", columns: dict[str, str] | None = None,
                  keep_duplicates: bool = False, work: Work | None = None,
                  key: str = "data.train") -> tuple[ReadReport, Iterator[Example]]:
    """The format (detected from the first records) and a stream of valid, normalised examples.

    Invalid records and duplicates are not yielded; they are listed in the report as the stream goes. `work`
    sees every record and may cancel the stream.
    """
    names = Columns(columns)
    stream = iter_records(source, work, key)
    head = list(itertools.islice(stream, DETECTION_SAMPLE))
    records = [item for item in head if isinstance(item, Record)]
    if not records:
        problems = [item for item in head if isinstance(item, Problem)]
        raise DataError(f"{key}: {source}: holds no readable records", problems)
    detection = detect_format(records, names) if fmt == "auto" else Detection(fmt, "set by data.format")
    report = ReadReport(detection)
    return report, _examples(itertools.chain(head, stream), detection.format, names, report, keep_duplicates)


def _examples(items: Iterable[Record | Problem], fmt: str, columns: Columns, report: ReadReport,
              keep_duplicates: bool) -> Iterator[Example]:
    seen: dict[bytes, Location] = {}
    for item in items:
        report.records += 1
        if isinstance(item, Problem):
            report.invalid.add(item)
            continue
        try:
            conversation = to_conversation(item.fields, fmt, columns)
        except Invalid as exc:
            report.invalid.add(Problem(str(exc), item.location, reason=exc.reason))
            continue
        if not keep_duplicates:
            key = hashlib.blake2b(json.dumps(conversation, sort_keys=True).encode(), digest_size=12).digest()
            first = seen.setdefault(key, item.location)
            if first != item.location:
                report.duplicates.add(Problem(f"duplicate of {first.where()}", item.location, "warning"))
                continue
        yield Example(conversation, item.location)


@dataclass
class EncodedExample:
    input_ids: np.ndarray
    labels: np.ndarray
    location: Location
    rendered: RenderedConversation
    trained_runs: list[tuple[int, int]]
    """[start, end) token positions of each contiguous run of trained tokens."""
    prompt_leak: str | None = None
    """Prompt text that trained tokens cover, if any (a masking failure)."""

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(end - start for start, end in self.trained_runs)

    def trained_lost_at(self, max_length: int) -> int:
        return sum(max(0, end - max(start, max_length)) for start, end in self.trained_runs)

    def truncated(self, max_length: int) -> EncodedExample:
        if self.length <= max_length:
            return self
        return EncodedExample(self.input_ids[:max_length], self.labels[:max_length], self.location, self.rendered,
                              [(s, min(e, max_length)) for s, e in self.trained_runs if s < max_length],
                              self.prompt_leak)


@dataclass
class EncodeReport:
    template_failures: ProblemList = field(default_factory=ProblemList)
    untrained: ProblemList = field(default_factory=ProblemList)
    prompt_leaks: ProblemList = field(default_factory=ProblemList)
    missing_end_of_turn: int = 0
    system_folded: int = 0


def encode_examples(tokenizer: Any, examples: Iterable[Example], train_on: str,
                    report: EncodeReport) -> Iterator[EncodedExample]:
    """Render and tokenise in batches; examples that fail a check are reported, not yielded."""
    batch: list[tuple[Example, RenderedConversation]] = []
    for example in examples:
        try:
            rendered = render_for_training(tokenizer, example.conversation, train_on)
        except TemplateError as exc:
            report.template_failures.add(Problem(str(exc), example.location))
            continue
        report.missing_end_of_turn += not rendered.end_of_turn_trained
        report.system_folded += rendered.system_folded
        batch.append((example, rendered))
        if len(batch) == BATCH:
            yield from _encode(tokenizer, batch, report)
            batch = []
    if batch:
        yield from _encode(tokenizer, batch, report)


def _encode(tokenizer: Any, batch: list[tuple[Example, RenderedConversation]],
            report: EncodeReport) -> Iterator[EncodedExample]:
    for (example, rendered), encoded in zip(batch, encode_batch(tokenizer, [r for _, r in batch])):
        labels = encoded.labels
        runs = _runs(labels != IGNORE_INDEX)
        if not runs:
            report.untrained.add(Problem("no token is trained: the assistant reply is empty after the chat template",
                                         example.location))
            continue
        leak = _prompt_leak(rendered, encoded.offsets, labels)
        if leak:
            report.prompt_leaks.add(Problem(f"trained tokens cover prompt text {leak!r}", example.location))
            continue
        yield EncodedExample(encoded.input_ids, labels, example.location, rendered, runs)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2])]


def _prompt_leak(rendered: RenderedConversation, offsets: np.ndarray, labels: np.ndarray) -> str | None:
    """Text of a system or user message inside a trained token (beyond the whitespace a merge may take)."""
    trained = offsets[labels != IGNORE_INDEX]
    for start, end in rendered.prompt:
        overlap = trained[(trained[:, 0] < end) & (trained[:, 1] > start)]
        for token_start, token_end in overlap:
            text = rendered.text[max(start, token_start):min(end, token_end)]
            if text.strip():
                return text
    return None
