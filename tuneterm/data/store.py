"""The prepared data on disk: what a data pass made of a source, so that training uses it instead of making it again.

The data pass (summary.py) writes the token ids of every usable example here as it goes, so that its memory stays
flat in the file's size, with a note per example (where it is, its last prompt, whether its reply ends the turn:
what the chat and the stop check prompt with), and at its end the summary itself. It is published whole, under a
key of everything it depends on: the source's path, size, modification time and inode (of every file of a
directory), the data settings, the tokenizer with its chat template, and the code and library versions that read,
render and tokenise. The wizard's pass, `tuneterm inspect` and a run's own pass all look here first, so a run
started from the wizard, in the app or detached, trains on what the wizard prepared; a changed file, setting,
template or version is another key, prepared anew. A source without such an identity (a hub dataset) is written
under a name no later pass looks for. The most recently used are kept (cache_root()/prepared), the rest removed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from tuneterm.cache import cache_root
from tuneterm.data.pipeline import EncodedChunk
from tuneterm.data.template import template_key
from tuneterm.data.tokenize import IGNORE_INDEX
from tuneterm.errors import DataError

STORES = "prepared"
KEPT = 6
"""Prepared sources kept: the training and eval data of a few datasets or settings."""
ABANDONED_SECONDS = 86_400
"""A store still being written after a day was left by a process that died."""
IDS, NOTES, SUMMARY = "ids.bin", "notes.jsonl", "summary.pkl"
_LIBRARIES = ("transformers", "tokenizers", "jinja2")


@dataclass(frozen=True)
class Note:
    """What training needs of an eval example beyond its tokens."""

    where: str
    question: str
    """The text of its last prompt message ("" for plain text)."""
    ends_turn: bool
    """Its trained reply ends with the end-of-turn token."""


@dataclass
class EncodedExample:
    """One example as it is trained: its tokens and which of them the loss is computed on."""

    input_ids: np.ndarray
    trained_runs: list[tuple[int, int]]
    """[start, end) token positions of each contiguous run of trained tokens."""
    note: Note | None = None

    @property
    def labels(self) -> np.ndarray:
        """input_ids where the token is trained, IGNORE_INDEX elsewhere."""
        labels = np.full(len(self.input_ids), IGNORE_INDEX, dtype=np.int32)
        for start, end in self.trained_runs:
            labels[start:end] = self.input_ids[start:end]
        return labels

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
        return EncodedExample(self.input_ids[:max_length],
                              [(s, min(e, max_length)) for s, e in self.trained_runs if s < max_length], self.note)


def identity(source: str, tokenizer: Any, settings: dict[str, Any]) -> str | None:
    """The key of what a pass over `source` makes with this tokenizer and these settings; None when the source is
    not files on this machine."""
    state = _source_state(Path(source))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if state is None or backend is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for part in (json.dumps([str(Path(source).resolve()), state, settings], sort_keys=True, default=str),
                 type(tokenizer).__name__, repr(template_key(tokenizer)), backend.to_str(), _code_version()):
        digest.update(part.encode("utf-8"))
    return digest.hexdigest()


def _source_state(path: Path) -> list[tuple[str, int, int, int]] | None:
    """Name, size, modification time and inode of the source's file, or of every file of its directory."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    states = [(p, p.stat()) for p in files]
    return [(str(p.relative_to(path)) if p != path else p.name, s.st_size, s.st_mtime_ns, s.st_ino)
            for p, s in states]


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """The data code and the libraries that render and tokenise: a change in any may change what is prepared."""
    digest = hashlib.blake2b(digest_size=16)
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.read_bytes())
    for library in _LIBRARIES:
        digest.update(f"{library} {metadata.version(library)}".encode())
    return digest.hexdigest()


def load(key: str | None) -> Any | None:
    """The summary published under `key`, its store touched as just used; None when there is none."""
    if key is None:
        return None
    directory = cache_root() / STORES / key
    try:
        with open(directory / SUMMARY, "rb") as handle:
            summary = pickle.load(handle)
        os.utime(directory)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):  # none, or left half-removed
        return None
    summary.store = directory
    return summary


class Writer:
    """A store being written by one pass: published whole at the end, removed if the pass does not end."""

    def __init__(self, key: str | None):
        self.root = cache_root() / STORES
        self.name = key or f"unnamed-{uuid.uuid4().hex}"
        self.directory = self.root / self.name
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=self.root))
            self.ids = open(self.staging / IDS, "wb")  # noqa: SIM115 - closed by publish or discard
            self.notes = open(self.staging / NOTES, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise self.failure(exc) from None

    def failure(self, exc: OSError) -> DataError:
        return DataError(f"cannot write the prepared data to {self.root}: {exc.strerror or exc}; free space there, or "
                         "set TUNETERM_CACHE_DIR to a directory with room")

    def add(self, chunk: EncodedChunk) -> None:
        try:
            self.ids.write(chunk.ids.tobytes())
            self.notes.writelines(note + "\n" for note in chunk.notes)
        except OSError as exc:
            raise self.failure(exc) from None

    def publish(self, summary: Any) -> None:
        """Write the summary and make the store visible at once (another process that published the same key
        first wins: what it wrote is the same)."""
        summary.store = self.directory
        try:
            self.ids.close()
            self.notes.close()
            with open(self.staging / SUMMARY, "wb") as handle:
                pickle.dump(summary, handle, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self.staging.rename(self.directory)
            except OSError:
                if not (self.directory / SUMMARY).is_file():
                    raise
                shutil.rmtree(self.staging, ignore_errors=True)
        except OSError as exc:
            self.discard()
            raise self.failure(exc) from None
        _evict(self.root, self.directory)

    def discard(self) -> None:
        self.ids.close()
        self.notes.close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            self.discard()


def _evict(root: Path, keep: Path) -> None:
    """All but the KEPT most recently used stores, and stores abandoned half-written."""
    stores, now = [], time.time()
    for entry in root.iterdir():
        try:
            used = entry.stat().st_mtime
        except OSError:
            continue
        if entry.name.startswith("."):
            if now - used > ABANDONED_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry != keep:
            stores.append((used, entry))
    for _, entry in sorted(stores, reverse=True)[KEPT - 1:]:
        shutil.rmtree(entry, ignore_errors=True)


def stored_examples(directory: Path, lengths: np.ndarray, run_owner: np.ndarray, run_start: np.ndarray,
                    run_end: np.ndarray, indices: np.ndarray, notes: bool) -> list[EncodedExample]:
    """The examples at `indices` (in file order) from a store, with their notes when asked."""
    if not len(indices):
        return []
    ends = np.cumsum(lengths, dtype=np.int64)
    ids = np.memmap(directory / IDS, dtype=np.int32, mode="r", shape=(int(ends[-1]),))
    first_run = np.searchsorted(run_owner, indices, side="left")
    last_run = np.searchsorted(run_owner, indices, side="right")
    found = [_note(line) for line in _lines(directory / NOTES, indices)] if notes else [None] * len(indices)
    examples = []
    for index, low, high, note in zip(indices.tolist(), first_run.tolist(), last_run.tolist(), found):
        end = int(ends[index])
        runs = list(zip(run_start[low:high].tolist(), run_end[low:high].tolist()))
        examples.append(EncodedExample(np.array(ids[end - int(lengths[index]):end]), runs, note))
    return examples


def _lines(path: Path, indices: np.ndarray) -> list[str]:
    """The lines at `indices` (sorted) of a text file, read up to the last one needed."""
    wanted, found = indices.tolist(), list[str]()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            while len(found) < len(wanted) and wanted[len(found)] == number:
                found.append(line)
            if len(found) == len(wanted):
                break
    return found


def _note(line: str) -> Note:
    return Note(**json.loads(line))
