"""What a dataset is to a model, from one streaming pass: the numbers shown while a person picks settings, and
the tokens training trains on.

Reading, validating, rendering and tokenising a dataset is the slow part of planning. It happens once per data
settings and tokenizer: the pass writes every usable example's tokens to the prepared-data store (store.py) as it
goes, and training takes them from there (prepare.py), so the numbers shown are the numbers trained and a run does
not prepare its data again. What a later change of max length, held-out share, seed or sample cap does to the
numbers is derived from small per-example arrays (token length, trained tokens, the runs of trained tokens) in
milliseconds, without reading the file again. The pass streams: memory grows by a few integers per example, never
by the text. It works through the data in chunks, for a file large enough to gain on every core that other work
leaves free (parallel.py).
"""

from __future__ import annotations

import array
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuneterm.data import store
from tuneterm.data.formats import Detection
from tuneterm.data.parallel import Workers, in_order, worker_count
from tuneterm.data.pipeline import (
    CHUNK,
    PREVIEWS,
    UNTRAINABLE_WITHOUT,
    ChunkEncoder,
    EncodedChunk,
    EncodeReport,
    Example,
    Preview,
    ProblemList,
    ReadReport,
    encode_in_worker,
    read_examples,
    start_encoder,
)
from tuneterm.data.stats import Truncation, histogram, percentiles, suggest_max_length
from tuneterm.data.store import EncodedExample, stored_examples
from tuneterm.errors import Level, Location, Problem
from tuneterm.work import Work

FULLY_TRUNCATED_LIMIT = 0.10
"""Share of examples that may lose their whole response to max_length before the run is blocked."""
LENIENT_INVALID_LIMIT = 0.5
"""Share of invalid records above which even `data.strict: false` stops: such a file is the wrong file or the
wrong format, and training on what is left would quietly train on a sliver of the data."""
PARALLEL_BYTES = 4_000_000
"""Sources smaller than this are prepared in this process alone: starting a worker (it imports the tokenizer's
libraries) costs about what a few seconds of preparing saves."""


@dataclass
class SourceSummary:
    """One source (training or eval data) as the model sees it."""

    source: str
    key: str
    """"data.train" or "data.eval"."""
    detection: Detection
    read: ReadReport
    encode: EncodeReport
    lengths: np.ndarray
    """Untruncated token length of every usable example, in file order (int32)."""
    trained: np.ndarray
    """Trained tokens of every usable example (int32)."""
    run_owner: np.ndarray
    """For every run of trained tokens: the index of its example."""
    run_start: np.ndarray
    run_end: np.ndarray
    previews: list[Preview]
    store: Path | None = None
    """Where the examples' tokens are (store.py)."""

    @property
    def examples(self) -> int:
        return len(self.lengths)

    @property
    def stored(self) -> bool:
        """The examples' tokens are still on disk (the store may have been removed since, to make room)."""
        return self.store is not None and (self.store / store.SUMMARY).is_file()

    def encoded(self, indices: np.ndarray, notes: bool = False) -> list[EncodedExample]:
        """The examples at `indices` (file order) as training takes them, with their notes when asked."""
        assert self.store is not None
        return stored_examples(self.store, self.lengths, self.run_owner, self.run_start, self.run_end, indices, notes)

    @property
    def invalid(self) -> ProblemList:
        return self.read.invalid

    @property
    def duplicates(self) -> ProblemList:
        return self.read.duplicates

    def lost_at(self, max_length: int) -> np.ndarray:
        """Trained tokens each example loses when cut at max_length."""
        lost = np.clip(self.run_end - np.maximum(self.run_start, max_length), 0, None)
        return np.bincount(self.run_owner, weights=lost, minlength=self.examples).astype(np.int64)

    def truncation(self, max_length: int, indices: np.ndarray | None = None) -> Truncation:
        lengths, trained, lost = self.lengths, self.trained, self.lost_at(max_length)
        if indices is not None:
            lengths, trained, lost = lengths[indices], trained[indices], lost[indices]
        return Truncation(max_length, int((lengths > max_length).sum()), int(lost.sum()),
                          int(((trained > 0) & (lost == trained)).sum()))

    def findings(self, strict: bool) -> list[Problem]:
        """What the records and the chat template do to a run, before any length is chosen: errors stop it,
        warnings are said."""
        found: list[Problem] = []
        read, encode = self.read, self.encode
        if read.invalid:
            message = (f"{read.invalid.count} of {read.records} records are not valid {self.detection.format} data "
                       f"({read.invalid.breakdown()}; the format was detected because {self.detection.evidence})")
            details = tuple(sorted(read.invalid.items, key=lambda p: p.location.order()))
            if strict:
                found.append(self._finding("error", f"{message}; fix them, or set data.strict: false to leave them out",
                                     details))
            elif read.invalid.count > LENIENT_INVALID_LIMIT * read.records:
                found.append(self._finding("error", f"{message}: more than {LENIENT_INVALID_LIMIT:.0%}, so even with "
                                     "data.strict: false this is not the data to train on; check the file and "
                                     "data.format / data.columns", details))
            else:
                found.append(self._finding("warning", f"{message}; they are left out (data.strict: false)", details))
        if read.duplicates:
            found.append(self._finding("warning", f"{read.duplicates.count} exact duplicates are left out",
                                 tuple(read.duplicates.items)))
        if encode.prompt_leaks:
            found.append(self._finding("error", f"masking failed on {encode.prompt_leaks.count} examples: trained "
                                 "tokens include prompt text. The chat template does something tuneterm cannot "
                                 "follow; set model.chat_template to a simpler template",
                                 tuple(encode.prompt_leaks.items)))
        unusable = [*encode.template_failures.items, *encode.untrained.items]
        unusable_count = encode.template_failures.count + encode.untrained.count
        if unusable_count:
            message = (f"{unusable_count} examples cannot be trained on (the chat template fails or leaves "
                       "no trained token)")
            level: Level = "error" if strict else "warning"
            remedy = "; fix them, or set data.strict: false to leave them out" if strict else "; they are left out"
            found.append(self._finding(level, message + remedy, tuple(unusable)))
        found += self._template_findings(strict)
        if encode.missing_end_of_turn:
            found.append(self._finding("warning", f"in {encode.missing_end_of_turn} examples the chat template "
                                 "writes no end-of-turn token after the assistant reply, so the model does not learn "
                                 "to stop; use a template that ends each reply with the EOS token"))
        if encode.system_folded:
            found.append(self._finding("warning", "the chat template refuses the system role: in "
                                 f"{encode.system_folded} examples the system prompt was put at the start of the "
                                 "first user message"))
        if not self.examples:
            found.append(self._finding("error", "no example can be trained on"))
        return found

    def _template_findings(self, strict: bool) -> list[Problem]:
        """What the chat template leaves out of the tool calls and reasoning the data holds, and the empty think
        blocks it would train."""
        encode, found = self.encode, []
        dropped = encode.dropped.reasons
        for what in sorted(UNTRAINABLE_WITHOUT & set(dropped)):
            details = tuple(p for p in encode.dropped.items if p.reason == what)
            message = (f"the chat template does not write {what}: {dropped[what]} of the {encode.holding[what]} "
                       f"examples holding {what} would train a different conversation than the data holds. Use a "
                       f"model whose chat template renders {what}, or set model.chat_template to one that does, or "
                       f"remove the {what} from the data")
            found.append(self._finding("error" if strict else "warning",
                                       message + ("" if strict else "; they are left out (data.strict: false)"),
                                       details))
        if dropped["reasoning"]:
            details = tuple(p for p in encode.dropped.items if p.reason == "reasoning")
            found.append(self._finding("warning", f"the chat template leaves out the reasoning of assistant turns in "
                                       f"{dropped['reasoning']} of the {encode.holding['reasoning']} examples holding "
                                       "reasoning (templates such as Qwen3's keep only the reasoning after the last "
                                       "user message): those replies are trained without it. To train every turn "
                                       "with its reasoning, split multi-turn conversations so that each ends at the "
                                       "turn to train, or use a template that renders reasoning "
                                       "(model.chat_template); data.reasoning: drop trains without reasoning "
                                       "everywhere", details))
        if encode.empty_thinking_trained:
            found.append(self._finding("warning", f"{encode.empty_thinking_trained} examples train an empty think "
                                       "block (<think></think>) into the reply: the model learns to skip its "
                                       "reasoning and to write empty think blocks (the cause of models that emit "
                                       "<think> after fine-tuning). Set data.reasoning: auto (or drop), which renders "
                                       "conversations without reasoning the no-think way, with the empty block in "
                                       "the prompt"))
        return found

    def _finding(self, level: Level, message: str, details: tuple[Problem, ...] = ()) -> Problem:
        return Problem(message, Location(key=self.key), level, details)


class _Builder:
    """Collects the per-example arrays and the previews from the chunks of a pass."""

    def __init__(self, previews: int):
        self.wanted = previews
        self.lengths, self.trained = array.array("i"), array.array("i")
        self.run_owner, self.run_start, self.run_end = array.array("i"), array.array("i"), array.array("i")
        self.previews: list[Preview] = []

    def add(self, chunk: EncodedChunk) -> None:
        first = len(self.lengths)
        self.lengths.frombytes(chunk.lengths.tobytes())
        self.trained.frombytes(np.bincount(chunk.run_owner, weights=chunk.run_end - chunk.run_start,
                                           minlength=len(chunk.lengths)).astype(np.int32).tobytes())
        self.run_owner.frombytes((chunk.run_owner + first).astype(np.int32).tobytes())
        self.run_start.frombytes(chunk.run_start.tobytes())
        self.run_end.frombytes(chunk.run_end.tobytes())
        self.previews += chunk.previews[:self.wanted - len(self.previews)]

    def chunks(self, examples: Iterable[Example]) -> Iterator[tuple[list[Example], int]]:
        """The examples in chunks, each with the previews still wanted when it is taken (the chunks before it may
        not have returned yet: a chunk makes at most that many, the builder keeps the first that arrive in order)."""
        stream = iter(examples)
        while chunk := list(itertools.islice(stream, CHUNK)):
            yield chunk, self.wanted - len(self.previews)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(np.frombuffer(a, dtype=np.int32) if len(a) else np.zeros(0, dtype=np.int32)
                     for a in (self.lengths, self.trained, self.run_owner, self.run_start, self.run_end))


def summarise_source(source: str, tokenizer: Any, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                     train_on: str = "responses", reasoning: str = "auto", key: str = "data.train",
                     work: Work | None = None, previews: int = PREVIEWS) -> SourceSummary:
    """Read, validate, render and tokenise one source in a single pass, its tokens written to the store; or the
    summary of an earlier pass with the same source, tokenizer and settings. Raises DataError, or Cancelled when
    `work` is cancelled."""
    work = work or Work()
    wanted = max(previews, PREVIEWS)
    identity = store.identity(source, tokenizer, {"format": fmt, "columns": columns, "train_on": train_on,
                                                  "reasoning": reasoning, "key": key, "previews": wanted})
    summary = store.load(identity)
    if summary is not None:
        work.step(f"prepared before: {Path(source).name}", summary.read.records, fraction=1.0, force=True)
    else:
        summary = _pass(source, tokenizer, fmt, columns, train_on, reasoning, key, work, wanted, identity)
    return replace(summary, previews=summary.previews[:previews])


def _pass(source: str, tokenizer: Any, fmt: str, columns: dict[str, str] | None, train_on: str, reasoning: str,
          key: str, work: Work, previews: int, identity: str | None) -> SourceSummary:
    read, stream = read_examples(source, fmt, columns, work=work, key=key)
    if read.detection.format == "text":
        train_on = "all"
    encode = EncodeReport()
    builder = _Builder(previews)
    here = ChunkEncoder(tokenizer, train_on, reasoning, check=work.check)
    count = worker_count(work.cores) if _size(source) >= PARALLEL_BYTES else 0
    workers = Workers(count, start_encoder, (tokenizer, train_on, reasoning), encode_in_worker)
    with store.Writer(identity) as writer:
        for chunk in in_order(builder.chunks(stream), here, workers, work):
            encode.extend(chunk.report)
            builder.add(chunk)
            writer.add(chunk)
        lengths, trained, owner, start, end = builder.arrays()
        summary = SourceSummary(source, key, read.detection, read, encode, lengths, trained, owner, start, end,
                                builder.previews)
        writer.publish(summary)
    return summary


def _size(source: str) -> int:
    """Bytes of the source's files (0 for a hub dataset)."""
    path = Path(source)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


# --------------------------------------------------------------------------------------------------------------
# The training data under given settings


def eval_split_size(examples: int, val_size: float | int) -> int:
    """Held-out examples for a val_size (fraction or count); a fraction rounds up, like datasets' split."""
    if isinstance(val_size, float):
        return math.ceil(val_size * examples) if val_size > 0 else 0
    return int(val_size)


def split_indices(examples: int, val_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) example indices, each in file order: the held-out examples are drawn with the run's seed."""
    held_out = eval_split_size(examples, val_size)
    order = np.random.default_rng(seed).permutation(examples)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


@dataclass(frozen=True)
class DataView:
    """What the data means for one set of settings: split sizes, the max length, what it cuts."""

    train_indices: np.ndarray
    eval_indices: np.ndarray | None
    """Held-out examples of the training source; None when a separate eval source is used."""
    train_examples: int
    """Training examples after the split and after leaving out those that lose their whole response."""
    eval_examples: int
    lengths: dict[str, int]
    """p50, p90, p95, p99 and max token length of the training examples (before truncation)."""
    histogram: list[dict[str, int]]
    trained_tokens: dict[str, int]
    max_length: int
    max_length_why: str
    suggested_max_length: int
    suggestion_why: str
    truncation: Truncation
    eval_truncation: Truncation | None
    findings: list[Problem] = field(default_factory=list)
    train_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    """Token length of every training example as it is trained (cut to max_length; those that lose their whole
    response left out), in file order: what packing and the padding a batch carries follow from."""


@dataclass
class DataSummary:
    """Training and (when given) eval data, read once; `view` gives the numbers for any settings."""

    train: SourceSummary
    eval: SourceSummary | None
    template_warnings: list[str] = field(default_factory=list)
    _views: dict[tuple[Any, ...], DataView] = field(default_factory=dict, repr=False)
    _splits: dict[tuple[Any, ...], _Split] = field(default_factory=dict, repr=False)

    def findings(self, strict: bool) -> list[Problem]:
        found = [Problem(w, Location(key="model.chat_template"), "warning") for w in self.template_warnings]
        for source in (self.train, self.eval):
            if source is not None:
                found += source.findings(strict)
        return found

    def view(self, *, val_size: float | int, seed: int, max_samples: int | None, max_length: int | str,
             context_length: int | None, strict: bool, memory_limited: bool = False) -> DataView:
        """Computed once per combination (a screen asks again on every keystroke)."""
        args = (val_size if self.eval is None else 0, seed, max_samples, max_length, context_length, strict,
                memory_limited)
        if args not in self._views:
            if len(self._views) > 64:
                self._views.clear()
            self._views[args] = _view(self, *args)
        return self._views[args]


@dataclass(frozen=True)
class _Split:
    """The split and what depends on it alone (cached per held-out share, seed and sample cap)."""

    usable: int
    train_indices: np.ndarray
    held_indices: np.ndarray | None
    lengths: np.ndarray
    length_stats: dict[str, int]
    histogram: list[dict[str, int]]
    trained_stats: dict[str, int]


def _split(summary: DataSummary, val_size: float | int, seed: int, max_samples: int | None) -> _Split:
    train = summary.train
    usable = min(train.examples, max_samples) if max_samples else train.examples
    train_idx, held_idx = split_indices(usable, val_size, seed)
    lengths = train.lengths[train_idx] if len(train_idx) else np.zeros(1, dtype=np.int32)
    trained = train.trained[train_idx] if len(train_idx) else np.zeros(1, dtype=np.int32)
    return _Split(usable, train_idx, None if summary.eval is not None else held_idx, lengths, percentiles(lengths),
                  histogram(lengths), {**percentiles(trained), "total": int(trained.sum())})


def _view(summary: DataSummary, val_size: float | int, seed: int, max_samples: int | None, max_length: int | str,
          context_length: int | None, strict: bool, memory_limited: bool) -> DataView:
    split_key = (val_size, seed, max_samples)
    if split_key not in summary._splits:
        summary._splits[split_key] = _split(summary, val_size, seed, max_samples)
    split = summary._splits[split_key]
    train, held_idx = summary.train, split.held_indices
    suggested, suggestion_why = suggest_max_length(split.lengths, context_length, memory_limited)
    chosen, chosen_why = ((suggested, suggestion_why) if max_length == "auto"
                          else (int(max_length), "set in the config"))
    cut = train.truncation(chosen, split.train_indices)
    kept = split.train_indices[train.lost_at(chosen)[split.train_indices] < train.trained[split.train_indices]]
    eval_cut = (summary.eval.truncation(chosen) if summary.eval is not None
                else train.truncation(chosen, held_idx) if held_idx is not None and len(held_idx) else None)
    eval_total = summary.eval.examples if summary.eval is not None else len(held_idx) if held_idx is not None else 0
    findings = summary.findings(strict)
    if held_idx is not None and split.usable and len(held_idx) >= split.usable:
        findings.append(Problem(f"{val_size} holds out {len(held_idx)} of {split.usable} examples, leaving none to "
                                "train on; lower it", Location(key="data.val_size")))
    findings += _length_findings("training", cut, len(split.train_indices), split.lengths)
    if eval_cut is not None:
        findings += _length_findings("eval", eval_cut, eval_total, split.lengths)
    return DataView(
        train_indices=split.train_indices, eval_indices=held_idx,
        train_examples=len(split.train_indices) - cut.fully_truncated,
        eval_examples=eval_total - (eval_cut.fully_truncated if eval_cut else 0),
        lengths=split.length_stats, histogram=split.histogram, trained_tokens=split.trained_stats,
        max_length=chosen, max_length_why=chosen_why, suggested_max_length=suggested,
        suggestion_why=suggestion_why, truncation=cut, eval_truncation=eval_cut, findings=findings,
        train_lengths=np.minimum(train.lengths[kept], chosen))


def _length_findings(name: str, cut: Truncation, examples: int, lengths: np.ndarray) -> list[Problem]:
    if not cut.truncated_examples:
        return []
    if cut.fully_truncated > FULLY_TRUNCATED_LIMIT * examples:
        suggested, _ = suggest_max_length(lengths)
        return [Problem(f"{cut.fully_truncated} of {examples} {name} examples lose their whole response at max_length "
                        f"{cut.max_length}: raise it (the data's 99th percentile suggests {suggested})",
                        Location(key="training.max_length"))]
    dropped = (f", and {cut.fully_truncated} examples lose their whole response and are left out"
               if cut.fully_truncated else "")
    return [Problem(f"{cut.truncated_examples} of {examples} {name} examples are longer than max_length "
                    f"{cut.max_length} and are cut; {cut.response_tokens_lost} response tokens are lost{dropped}",
                    Location(key="training.max_length"), "warning")]


def first_error(findings: Iterable[Problem]) -> Problem | None:
    return next((f for f in findings if f.level == "error"), None)
