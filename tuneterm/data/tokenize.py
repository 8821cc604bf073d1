"""Token ids and labels for rendered conversations, in batches.

A token is trained when its characters overlap a trained span (see chat.py); every other token gets the label
-100, which the loss ignores. Working from the tokenizer's character offsets makes the mask right even where a
token straddles the boundary between template text and content. The same function feeds training and the
preview a person looks at, so what they see is what the model is trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneterm.data.chat import RenderedConversation

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray
    labels: np.ndarray
    """input_ids where the token is trained, IGNORE_INDEX elsewhere (int32 both)."""
    offsets: np.ndarray
    """(tokens, 2) character offsets of each token in the rendered text."""


def encode_batch(tokenizer: Any, rendered: Sequence[RenderedConversation]) -> list[Encoded]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("tuneterm needs a fast (Rust) tokenizer to map characters to tokens; this model's "
                         "tokenizer has no tokenizer.json")
    # The Rust tokenizer directly: the rendered template already holds every special token it needs.
    encoded = []
    for item, encoding in zip(rendered, backend.encode_batch([r.text for r in rendered], add_special_tokens=False)):
        ids = np.array(encoding.ids, dtype=np.int32)
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        labels = np.where(_trained_mask(offsets, item.trained), ids, IGNORE_INDEX).astype(np.int32)
        encoded.append(Encoded(ids, labels, offsets))
    return encoded


def _trained_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(offsets), dtype=bool)
    for span_start, span_end in spans:
        overlaps = (starts < span_end) & (ends > span_start)
        empty_inside = (starts == ends) & (starts >= span_start) & (starts < span_end)
        mask |= overlaps | empty_inside
    return mask


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
