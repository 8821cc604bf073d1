"""The one path from a dataset source to token ids and labels, shared by training and inspection.

read -> detect the format -> validate and normalise each record (with its location) -> drop or report
duplicates -> render with the model's chat template -> tokenise in batches -> labels from the trained character
spans -> per-example checks. Everything streams, so `tuneterm inspect` can read a file of any size. Reading,
validating and dropping duplicates happen in order in one process; rendering, tokenising and labelling take the
examples a chunk at a time (ChunkEncoder), in that process or in worker processes (parallel.py), and give back
columns of numbers, which the summary and the prepared-data store (summary.py, store.py) take in order. What a
person sees in a preview is what the model trains on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneterm.data.chat import RenderedConversation, reasoning_of, render_for_training
from tuneterm.data.formats import Chat, Columns, Detection, Invalid, detect_format, to_chat
from tuneterm.data.records import Record, iter_records
from tuneterm.data.template import TemplateError
from tuneterm.data.tokenize import IGNORE_INDEX, Encoded, EncodedBatch, tokenize_batch, trained_segments
from tuneterm.errors import DataError, Location, Problem
from tuneterm.work import Work

DETECTION_SAMPLE = 200
CHUNK = 256
"""Examples rendered and tokenised together: one call of the Rust tokenizer, and what a worker process takes at a
time (bigger chunks spend less on sending; smaller ones keep a cancel quick and the progress smooth)."""
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

    def extend(self, later: ProblemList) -> None:
        """Add the problems found after these (by a chunk of the data that follows)."""
        self.count += later.count
        self.reasons.update(later.reasons)
        self.items += later.items[:KEPT_PROBLEMS - len(self.items)]

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

    def extend(self, later: EncodeReport) -> None:
        """Add what a chunk of the data that follows found."""
        for problems in ("template_failures", "untrained", "prompt_leaks", "dropped"):
            getattr(self, problems).extend(getattr(later, problems))
        for count in ("missing_end_of_turn", "system_folded", "empty_thinking_trained", "reasoning_tokens"):
            setattr(self, count, getattr(self, count) + getattr(later, count))
        self.holding.update(later.holding)
        self.thinking.update(later.thinking)


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


PREVIEWS = 20
"""Examples kept whole (text, trained or not, parts) for a person to look at."""


@dataclass(frozen=True)
class Preview:
    """One example as the model sees it: the rendered text in pieces, each trained or masked."""

    location: Location
    segments: list[tuple[str, bool, str]]
    """The rendered text in order: each piece, whether it is trained, and the part it belongs to ("reasoning",
    "tool call", "tool result", or "" for the rest)."""
    trained_segments: list[str]
    """The decoded text of each run of trained tokens."""
    trained_tokens: int
    total_tokens: int
    token_ends: list[int]
    """Character offset where each token ends, so a screen can show where a max length cuts."""

    def cut_at(self, max_length: int) -> int | None:
        """The character offset max_length cuts the text at, or None when the example fits."""
        return self.token_ends[max_length - 1] if max_length < self.total_tokens else None


@dataclass
class EncodedChunk:
    """A chunk of examples as the model trains on them, in columns (cheap to send from a worker process): the
    tokens of the usable ones and their runs of trained tokens, what training needs of each later, and what was
    found on the way."""

    report: EncodeReport
    ids: np.ndarray
    """int32: the tokens of every usable example, one example after the other."""
    lengths: np.ndarray
    """int32: the tokens of each usable example."""
    run_owner: np.ndarray
    """For every run of trained tokens: its example, counted among the chunk's usable ones."""
    run_start: np.ndarray
    run_end: np.ndarray
    """[start, end) token positions of the run in its example."""
    notes: list[str]
    """Per usable example, JSON: where it is, its last prompt text and whether its reply ends the turn (what the
    chat and the stop check prompt with)."""
    previews: list[Preview]
    """The first of the usable examples whole, as many as asked."""


class ChunkEncoder:
    """Renders, tokenises and labels chunks of examples: here, and the same in each worker process.

    `check` is called before each example (Work.check: a cancel stops the chunk half-way in this process; workers
    are terminated instead)."""

    def __init__(self, tokenizer: Any, train_on: str, reasoning: str, check: Callable[[], None] | None = None):
        self.tokenizer, self.train_on, self.reasoning, self.check = tokenizer, train_on, reasoning, check

    def __call__(self, chunk: tuple[list[Example], int]) -> EncodedChunk:
        """(examples, how many previews) -> the chunk encoded."""
        examples, previews = chunk
        report = EncodeReport()
        kept: list[tuple[Example, RenderedConversation]] = []
        for example in examples:
            if self.check is not None:
                self.check()
            try:
                rendered = render_for_training(self.tokenizer, example.chat.messages, self.train_on,
                                               example.chat.tools, self.reasoning)
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
            kept.append((example, rendered))
        return self._labelled(kept, report, previews)

    def _labelled(self, kept: list[tuple[Example, RenderedConversation]], report: EncodeReport,
                  previews: int) -> EncodedChunk:
        """Tokenise the rendered examples at once, then keep those with trained tokens that cover no prompt text."""
        if not kept:
            nothing = np.zeros(0, dtype=np.int32)
            return EncodedChunk(report, nothing, nothing, nothing, nothing, nothing, [], [])
        rendered = [r for _, r in kept]
        batch = tokenize_batch(self.tokenizer, rendered)
        owner, trained = batch.owner, batch.trained
        trained_per_example = np.bincount(owner[trained], minlength=len(kept))
        leaking = np.bincount(owner[trained & batch.overlapping([r.prompt for r in rendered])], minlength=len(kept))
        reasoning = np.bincount(owner[trained & batch.overlapping([[(s, e) for part, s, e in r.parts
                                                                    if part == "reasoning"] for r in rendered])],
                                minlength=len(kept))
        usable = []
        for index, (example, conversation) in enumerate(kept):
            if not trained_per_example[index]:
                report.untrained.add(Problem("no token is trained: the assistant reply is empty after the chat "
                                             "template", example.location))
                continue
            leak = _prompt_leak(conversation, batch.encoded(index)) if leaking[index] else None
            if leak:
                report.prompt_leaks.add(Problem(f"trained tokens cover prompt text {leak!r}", example.location))
                continue
            report.reasoning_tokens += int(reasoning[index])
            usable.append(index)
        return self._columns(batch, kept, usable, report, previews)

    def _columns(self, batch: EncodedBatch, kept: list[tuple[Example, RenderedConversation]], usable: list[int],
                 report: EncodeReport, previews: int) -> EncodedChunk:
        renumbered = np.full(len(kept), -1, dtype=np.int64)  # example in the batch -> among the usable ones
        renumbered[usable] = np.arange(len(usable))
        owner, start, end = _runs(batch.trained, batch.bounds)
        keep_runs = renumbered[owner] >= 0
        start, end, owner = start[keep_runs], end[keep_runs], owner[keep_runs]
        notes: list[str] = []
        shown: list[Preview] = []
        for index in usable:
            example, rendered = kept[index]
            results = {(low, high) for part, low, high in rendered.parts if part == "tool result"}
            asked = [span for span in rendered.prompt if span not in results]  # the person's words, not a tool's
            question = rendered.text[slice(*asked[-1])] if asked else ""
            notes.append(json.dumps({"where": example.location.where(), "question": question,
                                     "ends_turn": rendered.end_of_turn_trained}, ensure_ascii=False))
            if len(shown) < previews:
                shown.append(preview_of(self.tokenizer, example.location, rendered, batch.encoded(index)))
        first = batch.bounds[owner]
        return EncodedChunk(report, batch.ids[renumbered[batch.owner] >= 0],
                            np.diff(batch.bounds)[usable].astype(np.int32), renumbered[owner].astype(np.int32),
                            (start - first).astype(np.int32), (end - first).astype(np.int32), notes, shown)


def start_encoder(tokenizer: Any, train_on: str, reasoning: str) -> ChunkEncoder:
    """In a worker process: one thread for the Rust tokenizer (the other cores have workers of their own)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return ChunkEncoder(tokenizer, train_on, reasoning)


def encode_in_worker(encoder: ChunkEncoder, chunk: tuple[list[Example], int]) -> EncodedChunk:
    return encoder(chunk)


def _runs(trained: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example, start, end) of every run of trained tokens, start and end counted over the whole batch; a run
    never crosses from one example into the next."""
    before = np.zeros(len(trained), dtype=bool)
    before[1:] = trained[:-1]
    after = np.zeros(len(trained), dtype=bool)
    after[:-1] = trained[1:]
    firsts, lasts = bounds[:-1][np.diff(bounds) > 0], bounds[1:][np.diff(bounds) > 0] - 1
    before[firsts] = False
    after[lasts] = False
    start = np.flatnonzero(trained & ~before)
    end = np.flatnonzero(trained & ~after) + 1
    owner = np.searchsorted(bounds, start, side="right") - 1
    return owner, start, end


def _prompt_leak(rendered: RenderedConversation, encoded: Encoded) -> str | None:
    """Text of a system or user message inside a trained token (beyond the whitespace a merge may take)."""
    trained = encoded.offsets[encoded.labels != IGNORE_INDEX]
    for start, end in rendered.prompt:
        overlap = trained[(trained[:, 0] < end) & (trained[:, 1] > start)]
        for token_start, token_end in overlap:
            text = rendered.text[max(start, token_start):min(end, token_end)]
            if text.strip():
                return text
    return None


def preview_of(tokenizer: Any, location: Location, rendered: RenderedConversation, encoded: Encoded) -> Preview:
    text, parts = rendered.text, rendered.parts
    segments: list[tuple[str, bool, str]] = []

    def add(piece: str, is_trained: bool, part: str) -> None:
        if segments and segments[-1][1:] == (is_trained, part):
            segments[-1] = (segments[-1][0] + piece, is_trained, part)
        else:
            segments.append((piece, is_trained, part))

    position = 0
    for (start, end), label in zip(encoded.offsets.tolist(), encoded.labels.tolist()):
        start = max(start, position)
        if start > position:  # characters no token covers (rare) count as masked
            add(text[position:start], False, "")
        if end > start:
            part = next((kind for kind, low, high in parts if low < end and start < high), "")
            add(text[start:end], bool(label != IGNORE_INDEX), part)
        position = max(position, end)
    if position < len(text):
        add(text[position:], False, "")
    trained = int((encoded.labels != IGNORE_INDEX).sum())
    return Preview(location, segments, trained_segments(tokenizer, encoded), trained, len(encoded.input_ids),
                   [int(end) for _, end in encoded.offsets.tolist()])
