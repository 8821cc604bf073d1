"""Token ids and labels for rendered conversations, in batches.

A token is trained when its characters overlap a trained span (see chat.py); every other token gets the label
-100, which the loss ignores. Working from the tokenizer's character offsets makes the mask right even where a
token straddles the boundary between template text and content. The same function feeds training and the
preview a person looks at, so what they see is what the model is trained on.

A batch is tokenised by one call of the Rust tokenizer and kept in columns: every token of every conversation one
after the other, each conversation's characters placed after the previous one's (with a gap), so that the spans of
all of them are tested against all tokens at once instead of conversation by conversation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneterm.data.chat import RenderedConversation

IGNORE_INDEX = -100

Spans = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray
    labels: np.ndarray
    """input_ids where the token is trained, IGNORE_INDEX elsewhere (int32 both)."""
    offsets: np.ndarray
    """(tokens, 2) character offsets of each token in the rendered text."""


@dataclass(frozen=True)
class EncodedBatch:
    """Rendered conversations tokenised, in columns."""

    ids: np.ndarray
    """int32: the tokens of every conversation, one conversation after the other."""
    offsets: np.ndarray
    """(tokens, 2) int64: each token's characters in its own conversation's text."""
    bounds: np.ndarray
    """int64: where each conversation's tokens start, and the number of tokens last."""
    trained: np.ndarray
    """bool: the token is trained."""
    base: np.ndarray
    """int64: where each conversation's characters start when all texts are laid one after the other."""

    @property
    def owner(self) -> np.ndarray:
        """The conversation of every token."""
        return np.repeat(np.arange(len(self.bounds) - 1), np.diff(self.bounds))

    def overlapping(self, spans: Sequence[Spans], empty_inside: bool = False) -> np.ndarray:
        """Whether each token overlaps one of its conversation's character spans: shares a character with it, or,
        with `empty_inside`, is an empty token at a position inside it."""
        owner = self.owner
        starts, ends = (self.offsets + self.base[owner][:, None]).T
        return covered(starts, ends, *_laid_out(spans, self.base), empty_inside)

    def encoded(self, index: int) -> Encoded:
        tokens = slice(self.bounds[index], self.bounds[index + 1])
        ids = self.ids[tokens]
        return Encoded(ids, np.where(self.trained[tokens], ids, IGNORE_INDEX).astype(np.int32), self.offsets[tokens])


def tokenize_batch(tokenizer: Any, rendered: Sequence[RenderedConversation]) -> EncodedBatch:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("tuneterm needs a fast (Rust) tokenizer to map characters to tokens; this model's "
                         "tokenizer has no tokenizer.json")
    # The Rust tokenizer directly: the rendered template already holds every special token it needs.
    encodings = backend.encode_batch([r.text for r in rendered], add_special_tokens=False)
    lengths = np.fromiter((len(encoding) for encoding in encodings), np.int64, len(encodings))
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    total = int(bounds[-1])
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32, total)
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings))
    offsets = np.fromiter(flat, np.int64, 2 * total).reshape(-1, 2)
    sizes = np.fromiter((len(r.text) + 1 for r in rendered), np.int64, len(rendered))
    base = np.cumsum(sizes) - sizes
    batch = EncodedBatch(ids, offsets, bounds, np.zeros(total, dtype=bool), base)
    return EncodedBatch(ids, offsets, bounds, batch.overlapping([r.trained for r in rendered], empty_inside=True),
                        base)


def encode_batch(tokenizer: Any, rendered: Sequence[RenderedConversation]) -> list[Encoded]:
    batch = tokenize_batch(tokenizer, rendered)
    return [batch.encoded(index) for index in range(len(rendered))]


def covered(starts: np.ndarray, ends: np.ndarray, span_starts: np.ndarray, span_ends: np.ndarray,
            empty_inside: bool = False) -> np.ndarray:
    """Whether each token [start, end) overlaps a span: start < span end and end > span start; with
    `empty_inside`, an empty token also when span start <= start < span end. The spans are sorted and do not
    overlap (see _laid_out): then a token overlaps a span exactly when it overlaps the first span that ends
    after its start, found by a binary search."""
    if not len(span_starts):
        return np.zeros(len(starts), dtype=bool)
    index = np.searchsorted(span_ends, starts, side="right")
    inside = index < len(span_ends)
    first = span_starts[np.minimum(index, len(span_starts) - 1)]
    hit = inside & (first < ends)
    if empty_inside:
        hit |= inside & (starts == ends) & (first <= starts)
    return hit


def _laid_out(spans: Sequence[Spans], base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every conversation's spans moved to where its text is laid out, sorted, those that overlap or touch joined
    (a token overlaps the joined span exactly when it overlaps one of them)."""
    counts = np.fromiter((len(s) for s in spans), np.int64, len(spans))
    if not counts.sum():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(spans)), np.int64,
                       2 * int(counts.sum())).reshape(-1, 2) + np.repeat(base, counts)[:, None]
    flat = flat[np.argsort(flat[:, 0], kind="stable")]
    starts, ends = flat[:, 0], flat[:, 1]
    reach = np.maximum.accumulate(ends)
    opens = np.ones(len(starts), dtype=bool)
    opens[1:] = starts[1:] > reach[:-1]
    return starts[opens], np.maximum.reduceat(ends, np.flatnonzero(opens))


def trained_segments(tokenizer: Any, encoded: Encoded) -> list[str]:
    """The decoded text of each contiguous run of trained tokens: what the loss teaches the model to write."""
    segments: list[list[int]] = []
    previous_trained = False
    for token, label in zip(encoded.input_ids.tolist(), encoded.labels.tolist()):
        trained = label != IGNORE_INDEX
        if trained and not previous_trained:
            segments.append([])
        if trained:
            segments[-1].append(token)
        previous_trained = trained
    return [tokenizer.decode(segment) for segment in segments]
