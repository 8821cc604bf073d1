"""Reading dataset files into records that remember where they came from, one record at a time.

Every record keeps its location (file and line for JSONL and CSV, file and row for the others), so that a
problem found later, in format detection, validation or tokenisation, can name the exact place a person has to
fix. Records are streamed: a JSONL file of any size is read line by line and never held whole, and Parquet is
read in batches. Nothing here writes to the user's files.

Sources: .jsonl, .json (an array of records, or an object holding one), .csv, .parquet, a directory saved with
`datasets.save_to_disk`, a directory of such files, and a Hugging Face hub dataset id (`org/name`, optionally
`org/name:split`) where the network allows. Anything else on disk (a named pipe, a device such as /dev/zero, a
socket) is refused by what it is: a dataset is read more than once (summarised, then tokenised) and its size
gives the progress, which only a regular file allows; a pipe would be read once and a device forever.
"""

from __future__ import annotations

import csv
import io
import json
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneterm.errors import DataError, Location, Problem, first_sentence
from tuneterm.hub import ask_hub, explain, looks_like_hub_id
from tuneterm.work import Work


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    location: Location
    """File and line for JSONL and CSV, file and row for the others."""


FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_BOM = b"\xef\xbb\xbf"


def iter_records(source: str | Path, work: Work | None = None, key: str = "data.train") -> Iterator[Record | Problem]:
    """Every record of a file, directory or hub dataset, in order, with a Problem for each unreadable one.

    `work` is told about every record (it may cancel the reading) and shows how far the reading got; `key` is the
    config key that named the source, for messages.
    """
    work = work or Work()
    path = Path(source)
    if path.is_dir():
        yield from _iter_directory(path, work)
    elif path.is_file():
        yield from _iter_file(path, work)
    elif path.exists():
        raise DataError(f"{key}: {path}: {_kind_of(path)}, not a regular file: the data must be a "
                        f"{', '.join(FILE_SUFFIXES)} file or a directory of them; save it to a file and use that")
    elif looks_like_hub_id(str(source)):
        yield from _iter_hub(str(source), work, key)
    else:
        raise DataError(f"{key}: {source}: no such file or directory")


def _kind_of(path: Path) -> str:
    """What a path that is neither a regular file nor a directory is (symbolic links followed)."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _iter_file(path: Path, work: Work) -> Iterator[Record | Problem]:
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; use one of "
                        f"{', '.join(FILE_SUFFIXES)}, a directory of them, or one saved with datasets.save_to_disk")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it holds no records")
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[path.suffix]
    yield from reader(path, work)


def _iter_directory(path: Path, work: Work) -> Iterator[Record | Problem]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        yield from _read_saved_dataset(path, work)
        return
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: the directory holds no {', '.join(FILE_SUFFIXES)} files and was not saved with "
                        "datasets.save_to_disk")
    for file in files:
        yield from _iter_file(file, work)


def _read_jsonl(path: Path, work: Work) -> Iterator[Record | Problem]:
    size, consumed, stage = path.stat().st_size, 0, f"reading {path.name}"
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            consumed += len(raw)
            work.step(stage, number, fraction=consumed / size)
            where = Location(str(path), number)
            if number == 1 and raw.startswith(_BOM):  # Windows tools start UTF-8 files with a byte-order mark
                raw = raw[len(_BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem(f"not UTF-8 text (byte {exc.start + 1} of the line); re-save the file as UTF-8", where,
                              reason="not UTF-8")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield Problem(_malformed(exc, "line"), where, reason="malformed JSON")
                continue
            if not isinstance(value, dict):
                yield Problem(f"expected a JSON object, got {type(value).__name__}", where, reason="not an object")
                continue
            yield Record(value, where)


def _malformed(exc: json.JSONDecodeError, unit: str) -> str:
    """Where the JSON breaks, and how: at a column (Python's message without the position it ends on, "Invalid
    control character at", since the column says it), or, when the `unit` (line, file) ends before the JSON is
    complete, the column where it ends, or where the string it cuts began."""
    what = exc.msg.removesuffix(" at")
    if what == "Unterminated string starting":
        return f"malformed JSON: the string that starts at column {exc.colno} is not closed before the {unit} ends; " \
               f"was the {unit} cut short?"
    if exc.pos < len(exc.doc.rstrip()):
        return f"malformed JSON at column {exc.colno}: {what}"
    end = len(exc.doc.rstrip().rsplit("\n", 1)[-1]) + 1
    return f"malformed JSON: the {unit} ends at column {end} before the JSON is complete ({what}); was it cut short?"


def _read_json(path: Path, work: Work) -> Iterator[Record | Problem]:
    """A .json file is one document: it is parsed whole (use JSONL for files too large for that)."""
    work.step(f"parsing {path.name}", 0, force=True)
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig").rstrip())
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: {_malformed(exc, 'file')}") from None
    rows = _json_rows(value, path)
    stage = f"reading {path.name}"
    for index, row in enumerate(rows):
        work.step(stage, index + 1, len(rows))
        where = Location(str(path), row=index)
        if isinstance(row, dict):
            yield Record(row, where)
        else:
            yield Problem(f"expected a JSON object, got {type(row).__name__}", where, reason="not an object")


def _json_rows(value: Any, path: Path) -> list[Any]:
    """A .json file holds an array of records, or an object whose one list-valued key holds them."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise DataError(f"{path}: expected a JSON array of records (or an object holding one array of records)")


def _read_csv(path: Path, work: Work) -> Iterator[Record | Problem]:
    csv.field_size_limit(sys.maxsize)
    size, stage = path.stat().st_size, f"reading {path.name}"
    consumed = 0

    def counted(handle: io.TextIOBase) -> Iterator[str]:
        nonlocal consumed
        for text in handle:
            consumed += len(text)
            yield text

    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(counted(handle))
            if not reader.fieldnames:
                raise DataError(f"{path}: no header row")
            line = reader.line_num
            for count, row in enumerate(reader, start=1):
                work.step(stage, count, fraction=min(1.0, consumed / size))
                where = Location(str(path), line + 1)  # the line the record starts on
                line = reader.line_num
                if None in row:
                    yield Problem(f"{len(row[None])} more values than the {len(reader.fieldnames)} columns", where,
                                  reason="too many values")
                    continue
                yield Record({k: ("" if v is None else v) for k, v in row.items()}, where)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8") from None


def _read_parquet(path: Path, work: Work) -> Iterator[Record | Problem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    total, stage, index = parquet.metadata.num_rows, f"reading {path.name}", 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            work.step(stage, index + 1, total)
            yield Record(row, Location(str(path), row=index))
            index += 1


def _read_saved_dataset(path: Path, work: Work) -> Iterator[Record | Problem]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        dataset = dataset[split]
    stage = f"reading {path.name}"
    for index, row in enumerate(dataset):
        work.step(stage, index + 1, len(dataset))
        yield Record(dict(row), Location(str(path), row=index))


def _iter_hub(source: str, work: Work, key: str) -> Iterator[Record | Problem]:
    name, _, split = source.partition(":")
    answer = ask_hub(name, "dataset")
    if answer.state != "reachable":
        raise DataError(explain(answer, key, name, "dataset"))
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split or "train", streaming=True)
    except Exception as exc:  # noqa: BLE001 - hub and builder errors come in many types
        raise DataError(f"{source}: cannot load it from the Hugging Face hub: {first_sentence(str(exc))}") from None
    stage = f"streaming {source}"
    for index, row in enumerate(dataset):
        work.step(stage, index + 1)
        yield Record(dict(row), Location(source, row=index))
