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
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from tuneterm.data.chat import RenderedConversation, TemplateError, render_for_training
from tuneterm.data.formats import Columns, Conversation, Detection, Invalid, detect_format, to_conversation
from tuneterm.data.records import DataError, Problem, Record, iter_records
from tuneterm.data.tokenize import IGNORE_INDEX, encode_batch

DETECTION_SAMPLE = 200
BATCH = 1000


@dataclass
class ReadReport:
    """What reading found, filled in as the stream is consumed."""

    detection: Detection
    records: int = 0
    invalid: list[Problem] = field(default_factory=list)
    duplicates: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Example:
    conversation: Conversation
    where: str


def read_examples(source: str, fmt: str = "auto", columns: dict[str, str] | None = None,
                  keep_duplicates: bool = False) -> tuple[ReadReport, Iterator[Example]]:
    """The format (detected from the first records) and a stream of valid, normalised examples.

    Invalid records and duplicates are not yielded; they are listed in the report as the stream goes.
    """
    names = Columns(columns)
    stream = iter_records(source)
    head = list(itertools.islice(stream, DETECTION_SAMPLE))
    records = [item for item in head if isinstance(item, Record)]
    if not records:
        problems = [item for item in head if isinstance(item, Problem)]
        raise DataError(f"{source}: holds no readable records", problems)
    detection = detect_format(records, names) if fmt == "auto" else Detection(fmt, "set by data.format")
    report = ReadReport(detection)
    return report, _examples(itertools.chain(head, stream), detection.format, names, report, keep_duplicates)


def _examples(items: Iterable[Record | Problem], fmt: str, columns: Columns, report: ReadReport,
              keep_duplicates: bool) -> Iterator[Example]:
    seen: dict[bytes, str] = {}
    for item in items:
        report.records += 1
        if isinstance(item, Problem):
            report.invalid.append(item)
            continue
        try:
            conversation = to_conversation(item.fields, fmt, columns)
        except Invalid as exc:
            report.invalid.append(Problem(item.where, str(exc)))
            continue
        if not keep_duplicates:
            key = hashlib.blake2b(json.dumps(conversation, sort_keys=True).encode(), digest_size=12).digest()
            first = seen.setdefault(key, item.where)
            if first != item.where:
                report.duplicates.append(Problem(item.where, f"duplicate of {first}"))
                continue
        yield Example(conversation, item.where)


@dataclass
class EncodedExample:
    input_ids: np.ndarray
    labels: np.ndarray
    where: str
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

    def truncated(self, max_length: int) -> "EncodedExample":
        if self.length <= max_length:
            return self
        return EncodedExample(self.input_ids[:max_length], self.labels[:max_length], self.where, self.rendered,
                              [(s, min(e, max_length)) for s, e in self.trained_runs if s < max_length],
                              self.prompt_leak)


@dataclass
class EncodeReport:
    template_failures: list[Problem] = field(default_factory=list)
    untrained: list[Problem] = field(default_factory=list)
    prompt_leaks: list[Problem] = field(default_factory=list)
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
            report.template_failures.append(Problem(example.where, str(exc)))
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
            report.untrained.append(Problem(example.where, "no token is trained: the assistant reply is empty "
                                                           "after the chat template"))
            continue
        leak = _prompt_leak(rendered, encoded.offsets, labels)
        if leak:
            report.prompt_leaks.append(Problem(example.where, f"trained tokens cover prompt text {leak!r}"))
            continue
        yield EncodedExample(encoded.input_ids, labels, example.where, rendered, runs)


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
