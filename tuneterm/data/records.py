"""Reading dataset files into records that remember where they came from.

Every record keeps its location (file and line for JSONL, file and row for other files), so that any problem
found later, in format detection, validation or tokenisation, can name the exact place a person has to fix.
Nothing here writes to the user's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    where: str
    """"train.jsonl:12" (file and line) or "train.json: row 3"."""


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class DataError(ValueError):
    """Data that cannot be used as it is; `problems` lists each with its location."""

    def __init__(self, summary: str, problems: list[Problem] = ()):
        self.summary = summary
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(summary + ("\n" + shown + more if shown else ""))


SUPPORTED_SUFFIXES = (".jsonl", ".json")


def read_records(path: str | Path) -> tuple[list[Record], list[Problem]]:
    """All records of a .jsonl or .json file, and a problem for each line or row that is not a record."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a .jsonl or .json file")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; "
                        f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    reader = _read_jsonl if path.suffix == ".jsonl" else _read_json
    records: list[Record] = []
    problems: list[Problem] = []
    for item in reader(path):
        (records if isinstance(item, Record) else problems).append(item)
    if not records and not problems:
        raise DataError(f"{path}: holds no records")
    return records, problems


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
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON at column {exc.colno}: {exc.msg}") from None
    rows = _json_rows(value, path)
    for index, row in enumerate(rows):
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
