"""One family of errors whose problems carry where they are.

Every error tuneterm raises for a person to act on is a TuneTermError: a summary sentence and a list of problems,
each with a Location (a file and its line or row, a config key, a --set argument). The command line prints them,
the app jumps to the field or the line they name, and JSON output keeps them as fields: nothing parses a message
back into a place. The bottom layer: it imports nothing of tuneterm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["info", "warning", "error"]
LEVELS: tuple[Level, ...] = ("info", "warning", "error")
Method = Literal["lora", "qlora", "full"]
METHODS: tuple[Method, ...] = ("lora", "qlora", "full")

SHOWN_PROBLEMS = 20
"""How many problems a message lists before it says how many more there are."""


@dataclass(frozen=True)
class Location:
    """Where a problem is: a file with its line (text formats) or row (Parquet, JSON arrays), a config key, or a
    --set argument. Every part is optional."""

    file: str | None = None
    line: int | None = None
    row: int | None = None
    key: str | None = None
    """Dotted config key, such as "training.learning_rate"."""
    argument: str | None = None
    """The --set argument the value came from, such as "training.learning_rate=1e-4"."""

    def where(self) -> str:
        """The place without the key: "train.jsonl:12", "train.parquet: row 3", "--set lr=1"."""
        if self.argument is not None:
            return f"--set {self.argument}"
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        if self.file and self.row is not None:
            return f"{self.file}: row {self.row}"
        return self.file or ""

    def order(self) -> tuple[str, int]:
        """Sort key: by file, then line or row."""
        return self.file or "", self.line if self.line is not None else (self.row or 0)

    def to_json(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Location:
        """The location in a problem's JSON (which holds other fields too)."""
        return cls(**{name: data[name] for name in ("file", "line", "row", "key", "argument") if name in data})

    def __str__(self) -> str:
        return ": ".join(part for part in (self.where(), self.key) if part)


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing), where it is, and how much it matters."""

    message: str
    location: Location = field(default_factory=Location)
    level: Level = "error"
    details: tuple[Problem, ...] = ()
    """The records behind a problem about many of them ("12 of 900 records are not valid"), each with its own
    location; the first ones when there are many."""
    reason: str = ""
    """A short name that groups problems of the same kind ("malformed JSON", "unknown role"), for counts."""

    def __str__(self) -> str:
        where = str(self.location)
        return f"{where}: {self.message}" if where else self.message

    def to_json(self) -> dict[str, Any]:
        found = {**self.location.to_json(), "message": self.message, "level": self.level}
        if self.reason:
            found["reason"] = self.reason
        if self.details:
            found["details"] = [detail.to_json() for detail in self.details]
        return found


def listed(problems: Sequence[Problem], limit: int = SHOWN_PROBLEMS, indent: str = "  ") -> str:
    """Problems one per line, sorted by place, capped at `limit` with the count of the rest."""
    ordered = sorted(problems, key=lambda p: p.location.order())
    lines = [f"{indent}{p}" for p in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"{indent}... and {len(ordered) - limit} more")
    return "\n".join(lines)


class TuneTermError(Exception):
    """A failure a person can act on: a summary sentence and the problems behind it, each with its location."""

    def __init__(self, summary: str, problems: Sequence[Problem] = ()):
        self.summary = summary
        self.problems = list(problems)
        super().__init__(summary)

    def __str__(self) -> str:
        return self.summary + ("\n" + listed(self.problems) if self.problems else "")


class ConfigError(TuneTermError):
    """A config that cannot be used; each problem names its file and line or --set argument, and its key."""

    def __init__(self, problems: Sequence[Problem], summary: str = "Config problems:"):
        super().__init__(summary, problems)


class DataError(TuneTermError):
    """Data that cannot be used as it is."""


class LoadError(TuneTermError):
    """A model or tokenizer that cannot be loaded; the summary says why and what to do."""


class RunDirError(TuneTermError):
    """A run directory that cannot be created, written or resumed; the summary says what to do."""


class ExportError(TuneTermError):
    """A model that cannot be exported, or whose export did not pass its check; the summary says why."""


class Cancelled(TuneTermError):
    """Work stopped because someone asked it to."""

    def __init__(self, summary: str = "cancelled"):
        super().__init__(summary)


def first_sentence(text: str) -> str:
    """The first paragraph of a library's message, joined into one line and ending where its meaning does.

    Library messages wrap their first sentence over several lines ("Couldn't instantiate the backend tokenizer
    from one of:\\n(1) ..."); taking only the first line cuts them mid-sentence.
    """
    paragraph: list[str] = []
    for line in text.strip().splitlines():
        if not line.strip():
            break
        paragraph.append(line.strip())
    joined = " ".join(paragraph)
    return joined if len(joined) <= 600 else joined[:597].rstrip() + "..."
