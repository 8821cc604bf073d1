"""Reading dataset files into records that remember where they came from, one record at a time.

Every record keeps its location (file and line for JSONL and CSV, file and row for the others), so that a
problem found later, in format detection, validation or tokenisation, can name the exact place a person has to
fix. Records are streamed: a JSONL file of any size is read line by line and never held whole, and Parquet is
read in batches. Nothing here writes to the user's files.

Sources: .jsonl, .json (an array of records, or an object holding one), .csv, .parquet, a directory saved with
`datasets.save_to_disk`, a directory of such files, and a Hugging Face hub dataset id (`org/name`, optionally
`org/name:split`) where the network allows.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    where: str
    """"train.jsonl:12" (file and line) or "train.parquet: row 3"."""


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    @property
    def location(self) -> dict[str, Any]:
        """{"file", "line"} or {"file", "row"}, for JSON reports."""
        head, _, tail = self.where.rpartition(":")
        tail = tail.strip()
        if tail.isdigit():
            return {"file": head, "line": int(tail)}
        if tail.startswith("row ") and tail[4:].isdigit():
            return {"file": head, "row": int(tail[4:])}
        return {"file": self.where}


class DataError(ValueError):
    """Data that cannot be used as it is; `problems` lists each with its location."""

    def __init__(self, summary: str, problems: list[Problem] = ()):
        self.summary = summary
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(summary + ("\n" + shown + more if shown else ""))


FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def iter_records(source: str | Path) -> Iterator[Record | Problem]:
    """Every record of a file, directory or hub dataset, in order, with a Problem for each unreadable one."""
    path = Path(source)
    if path.is_dir():
        yield from _iter_directory(path)
    elif path.exists():
        yield from _iter_file(path)
    elif looks_like_hub_id(str(source)):
        yield from _iter_hub(str(source))
    else:
        raise DataError(f"{source}: no such file or directory")


def _iter_file(path: Path) -> Iterator[Record | Problem]:
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; use one of "
                        f"{', '.join(FILE_SUFFIXES)}, a directory of them, or one saved with datasets.save_to_disk")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[path.suffix]
    yield from reader(path)


def _iter_directory(path: Path) -> Iterator[Record | Problem]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        yield from _read_saved_dataset(path)
        return
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: the directory holds no {', '.join(FILE_SUFFIXES)} files and was not saved with "
                        "datasets.save_to_disk")
    for file in files:
        yield from _iter_file(file)


def _read_jsonl(path: Path) -> Iterator[Record | Problem]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem(where, f"not UTF-8 text (byte {exc.start + 1} of the line); re-save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Problem(where, f"malformed JSON at column {exc.colno}: {exc.msg}")
                continue
            if not isinstance(value, dict):
                yield Problem(where, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield Record(value, where)


def _read_json(path: Path) -> Iterator[Record | Problem]:
    """A .json file is one document: it is parsed whole (use JSONL for files too large for that)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON at column {exc.colno}: {exc.msg}") from None
    for index, row in enumerate(_json_rows(value, path)):
        where = f"{path}: row {index}"
        if isinstance(row, dict):
            yield Record(row, where)
        else:
            yield Problem(where, f"expected a JSON object, got {type(row).__name__}")


def _json_rows(value: Any, path: Path) -> list[Any]:
    """A .json file holds an array of records, or an object whose one list-valued key holds them."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise DataError(f"{path}: expected a JSON array of records (or an object holding one array of records)")


def _read_csv(path: Path) -> Iterator[Record | Problem]:
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise DataError(f"{path}: no header row")
            line = reader.line_num
            for row in reader:
                where = f"{path}:{line + 1}"  # the line the record starts on
                line = reader.line_num
                if None in row:
                    yield Problem(where, f"{len(row[None])} more values than the {len(reader.fieldnames)} columns")
                    continue
                yield Record({k: ("" if v is None else v) for k, v in row.items()}, where)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8") from None


def _read_parquet(path: Path) -> Iterator[Record | Problem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield Record(row, f"{path}: row {index}")
            index += 1


def _read_saved_dataset(path: Path) -> Iterator[Record | Problem]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        dataset = dataset[split]
    for index, row in enumerate(dataset):
        yield Record(dict(row), f"{path}: row {index}")


def looks_like_hub_id(text: str) -> bool:
    name = text.split(":", 1)[0]
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).suffix


def _iter_hub(source: str) -> Iterator[Record | Problem]:
    from tuneterm.engine.loading import hub_reachable

    name, _, split = source.partition(":")
    if not hub_reachable():
        raise DataError(f"{source}: not a local file, and the Hugging Face hub cannot be reached from this machine. "
                        f"Download it on a connected machine (hf download {name} --repo-type dataset --local-dir DIR) "
                        "and point data.train at that directory")
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split or "train", streaming=True)
    except Exception as exc:  # hub and builder errors come in many types
        raise DataError(f"{source}: cannot load it from the Hugging Face hub: {str(exc).splitlines()[0]}") from None
    for index, row in enumerate(dataset):
        yield Record(dict(row), f"{source}: row {index}")
