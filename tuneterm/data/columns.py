"""A dataset's own column names mapped onto a format's fields, when the names alone do not tell the format.

A CSV of `question,answer` is alpaca data under other names: `data.columns: {instruction: question, output:
answer}` reads it. Here the likely format and mapping are guessed from the names found (the usual names of each
field: question, query, prompt... for an instruction), so that the app can preselect them and every message that
cannot tell the format can give the line that reads the data that way. Each field is described for a person
choosing a column for it. Pure: names in, names out.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from tuneterm.config import yaml_value

FIELD_HELP = {
    "messages": ("the conversation: a list of {role, content} messages", True),
    "conversations": ("the conversation: a list of {from, value} turns", True),
    "instruction": ("the request the model answers", True),
    "input": ("more of the request, added after it", False),
    "output": ("the reply the model learns to write", True),
    "system": ("a system prompt", False),
    "history": ("earlier [request, reply] pairs", False),
    "prompt": ("the text the model is given", True),
    "completion": ("the text the model learns to write after it", True),
    "text": ("plain text, trained on every token", True),
    "tools": ("the function schemas the model may call (a list, or that list as JSON text)", False),
}
"""Each format's field: what it holds, and whether the format needs it."""

USUAL_NAMES = {
    "messages": ("messages", "conversation", "chat", "dialog", "dialogue", "turns"),
    "conversations": ("conversations",),
    "instruction": ("instruction", "question", "query", "prompt", "request", "problem", "task", "user", "human", "q"),
    "input": ("input", "context"),
    "output": ("output", "answer", "response", "completion", "reply", "target", "solution", "assistant", "gpt", "a"),
    "system": ("system", "system_prompt"),
    "history": ("history",),
    "prompt": ("prompt", "question", "query", "input", "instruction", "source"),
    "completion": ("completion", "answer", "response", "output", "target", "reply"),
    "text": ("text", "content", "document", "body", "passage", "article"),
    "tools": ("tools", "functions", "tool_schemas"),
}
"""Column names that usually hold each field, most telling first."""


@dataclass(frozen=True)
class ColumnGuess:
    format: str
    columns: dict[str, str]
    """data.columns: field -> the column holding it (fields under their own name are left out)."""
    complete: bool = True
    """Every field the format needs has a column."""

    def describe(self) -> str:
        """`data.format: alpaca, data.columns: {instruction: question, output: answer}`."""
        mapped = f", data.columns: {yaml_value(self.columns)}" if self.columns else ""
        return f"data.format: {self.format}{mapped}"


def _normal(name: str) -> str:
    """"Question", "question text", "question_str" -> "question"."""
    normal = name.strip().lower().replace(" ", "_").replace("-", "_")
    for suffix in ("_text", "_str", "_string"):
        normal = normal.removesuffix(suffix)
    return normal


def mapping_for(found: Mapping[str, int], fmt: str, fields: tuple[str, ...]) -> ColumnGuess:
    """The mapping of a format's `fields` onto the columns found that usually hold them (one column per field at
    most), and whether every field the format needs is mapped."""
    columns = {_normal(name): name for name in found}
    mapped: dict[str, str] = {}
    for field in fields:
        for usual in USUAL_NAMES.get(field, (field,)):
            column = columns.get(usual)
            if column is not None and column not in mapped.values():
                mapped[field] = column
                break
    complete = all(field in mapped for field in fields if FIELD_HELP.get(field, ("", True))[1])
    return ColumnGuess(fmt, {field: column for field, column in mapped.items() if field != column}, complete)


def guess_columns(found: Mapping[str, int], formats: Mapping[str, tuple[str, ...]]) -> ColumnGuess | None:
    """The first format (in the order of `formats`: format -> its fields) whose required fields the columns found
    all hold under a usual name, with the mapping; None when no format fits."""
    return next((guess for fmt, fields in formats.items() if (guess := mapping_for(found, fmt, fields)).complete),
                None)


def inspect_command(source: str, model: str, fmt: str, columns: Mapping[str, str] | None) -> str:
    """The `tuneterm inspect` line that reads the data with this format and mapping."""
    parts = ["tuneterm inspect", shlex.quote(source), "--model", shlex.quote(model), "--format", fmt]
    if columns:
        parts += ["--columns", shlex.quote(yaml_value(dict(columns)))]
    return " ".join(parts)
