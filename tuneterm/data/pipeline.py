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

from tuneterm.data.chat import RenderedConversation, reasoning_of, render_for_training
from tuneterm.data.formats import Chat, Columns, Detection, Invalid, detect_format, to_chat
from tuneterm.data.records import Record, iter_records
from tuneterm.data.template import TemplateError
from tuneterm.data.tokenize import IGNORE_INDEX, encode_batch
from tuneterm.errors import DataError, Location, Problem
from tuneterm.work import Work

DETECTION_SAMPLE = 200
BATCH = 1000
UNTRAINABLE_WITHOUT = {"tool calls", "tool results", "tools"}
"""What an example cannot be trained without: a reply whose tool call is not written, or written without the
results or schemas it depends on, teaches something else than the data holds."""
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
    chat: Chat
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
            chat = to_chat(item.fields, fmt, columns)
        except Invalid as exc:
            report.invalid.add(Problem(str(exc), item.location, reason=exc.reason))
            continue
        if not keep_duplicates:
            key = hashlib.blake2b(json.dumps([chat.messages, chat.tools], sort_keys=True).encode(),
                                  digest_size=12).digest()
            first = seen.setdefault(key, item.location)
            if first != item.location:
                report.duplicates.add(Problem(f"duplicate of {first.where()}", item.location, "warning"))
                continue
        yield Example(chat, item.location)


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
    reasoning_tokens: int = 0
    """Trained tokens that are reasoning."""

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
                              self.prompt_leak, self.reasoning_tokens)


@dataclass
class EncodeReport:
    template_failures: ProblemList = field(default_factory=ProblemList)
    untrained: ProblemList = field(default_factory=ProblemList)
    prompt_leaks: ProblemList = field(default_factory=ProblemList)
    dropped: ProblemList = field(default_factory=ProblemList)
    """Examples the template rendered without something they hold; the reason says what ("tool calls"...)."""
    missing_end_of_turn: int = 0
    system_folded: int = 0
    holding: Counter[str] = field(default_factory=Counter)
    """Examples holding "tool calls", "tool results", "tools", "reasoning"."""
    empty_thinking_trained: int = 0
    """Examples whose trained reply holds an empty think block."""
    thinking: Counter[bool | None] = field(default_factory=Counter)
    """Examples rendered in each thinking mode (None: the template has no switch)."""
    reasoning_tokens: int = 0


def holds(chat: Chat) -> set[str]:
    """Which of tool calls, tool results, tools and reasoning a conversation holds."""
    found = {"tools"} if chat.tools else set()
    for message in chat.messages:
        if message.get("tool_calls"):
            found.add("tool calls")
        if message["role"] == "tool":
            found.add("tool results")
        if message["role"] == "assistant" and reasoning_of(message):
            found.add("reasoning")
    return found


def encode_examples(tokenizer: Any, examples: Iterable[Example], train_on: str, report: EncodeReport,
                    reasoning: str = "auto") -> Iterator[EncodedExample]:
    """Render and tokenise in batches; examples that fail a check are reported, not yielded."""
    batch: list[tuple[Example, RenderedConversation]] = []
    for example in examples:
        try:
            rendered = render_for_training(tokenizer, example.chat.messages, train_on, example.chat.tools, reasoning)
        except TemplateError as exc:
            report.template_failures.add(Problem(str(exc), example.location))
            continue
        report.holding.update(holds(example.chat))
        for what in rendered.dropped:
            report.dropped.add(Problem(f"the chat template does not write its {what}", example.location,
                                       "warning", reason=what))
        if set(rendered.dropped) & UNTRAINABLE_WITHOUT:
            continue
        report.missing_end_of_turn += not rendered.end_of_turn_trained
        report.system_folded += rendered.system_folded
        report.empty_thinking_trained += rendered.empty_thinking_trained
        report.thinking[rendered.thinking] += 1
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
        reasoning = _trained_in(rendered, "reasoning", encoded.offsets, labels)
        report.reasoning_tokens += reasoning
        yield EncodedExample(encoded.input_ids, labels, example.location, rendered, runs, None, reasoning)


def _trained_in(rendered: RenderedConversation, kind: str, offsets: np.ndarray, labels: np.ndarray) -> int:
    """Trained tokens that overlap the parts of one kind ("reasoning"...)."""
    trained = offsets[labels != IGNORE_INDEX]
    inside = np.zeros(len(trained), dtype=bool)
    for part, start, end in rendered.parts:
        if part == kind:
            inside |= (trained[:, 0] < end) & (trained[:, 1] > start)
    return int(inside.sum())


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
