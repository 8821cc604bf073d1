"""Recognising a dataset's format and turning every record into one conversation form.

Whatever the file looks like, the rest of tuneterm sees a conversation: a list of {"role", "content"} messages
with roles system, user and assistant, the shape `tokenizer.apply_chat_template` takes. Detection reports the
evidence it used, so a person can see why a file was read the way it was, and override it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from tuneterm.data.records import DataError, Problem, Record

Conversation = list[dict[str, str]]

ROLES = ("system", "user", "assistant")

# What each format needs, in the words shown to a person whose file matches none.
EXPECTED_FIELDS = {
    "messages": "a 'messages' list of {role, content} objects",
    "alpaca": "'instruction' and 'output' strings (optional 'input', 'system', 'history')",
}
FORMATS = tuple(EXPECTED_FIELDS)


@dataclass(frozen=True)
class Detection:
    format: str
    evidence: str


def detect_format(records: list[Record]) -> Detection:
    """Decide from the fields of the first records; the evidence says which fields decided it."""
    sample = records[:200]
    columns = Counter(key for record in sample for key in record.fields)
    if columns["messages"] == len(sample):
        return Detection("messages", f"all {len(sample)} records sampled have a 'messages' field")
    if columns["instruction"] == len(sample) and columns["output"] == len(sample):
        return Detection("alpaca", f"all {len(sample)} records sampled have 'instruction' and 'output' fields")
    found = ", ".join(f"{name} ({count}/{len(sample)})" for name, count in columns.most_common(12))
    expected = "; ".join(f"{name}: {fields}" for name, fields in EXPECTED_FIELDS.items())
    raise DataError(f"{records[0].where.rsplit(':', 1)[0]}: cannot tell the data format. Columns found: {found}. "
                    f"Expected one of: {expected}. Set data.format to choose one.")


def to_conversations(records: Iterable[Record], fmt: str) -> tuple[list[Conversation], list[str], list[Problem]]:
    """Normalise records; returns the conversations, the location of each, and the records that failed."""
    convert = _CONVERTERS[fmt]
    conversations: list[Conversation] = []
    wheres: list[str] = []
    problems: list[Problem] = []
    for record in records:
        try:
            conversation = convert(record.fields)
            _check_conversation(conversation)
        except _Invalid as exc:
            problems.append(Problem(record.where, str(exc)))
            continue
        conversations.append(conversation)
        wheres.append(record.where)
    return conversations, wheres, problems


class _Invalid(ValueError):
    pass


def _text(value: Any, name: str, *, required: bool = True) -> str:
    if value is None or value == "":
        if required:
            raise _Invalid(f"'{name}' is missing or empty")
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"'{name}' must be text, got {type(value).__name__} {str(value)[:40]!r}")
    if required and not value.strip():
        raise _Invalid(f"'{name}' is only whitespace")
    return value


def _from_messages(fields: dict[str, Any]) -> Conversation:
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("'messages' must be a non-empty list of {role, content} objects")
    conversation: Conversation = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Invalid(f"messages[{index}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise _Invalid(f"messages[{index}]: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        conversation.append({"role": role, "content": _text(message.get("content"), f"messages[{index}].content")})
    return conversation


def _from_alpaca(fields: dict[str, Any]) -> Conversation:
    instruction = _text(fields.get("instruction"), "instruction")
    extra = _text(fields.get("input"), "input", required=False)
    output = _text(fields.get("output"), "output")
    conversation: Conversation = []
    system = _text(fields.get("system"), "system", required=False)
    if system:
        conversation.append({"role": "system", "content": system})
    history = fields.get("history") or []
    if not isinstance(history, list):
        raise _Invalid("'history' must be a list of [instruction, response] pairs")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise _Invalid(f"history[{index}] must be an [instruction, response] pair")
        conversation.append({"role": "user", "content": _text(pair[0], f"history[{index}][0]")})
        conversation.append({"role": "assistant", "content": _text(pair[1], f"history[{index}][1]")})
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    conversation.append({"role": "user", "content": prompt})
    conversation.append({"role": "assistant", "content": output})
    return conversation


_CONVERTERS = {"messages": _from_messages, "alpaca": _from_alpaca}


def _check_conversation(conversation: Conversation) -> None:
    """A system message may open; then user and assistant alternate, and the last turn is the assistant's."""
    turns = conversation[1:] if conversation[0]["role"] == "system" else conversation
    if not turns:
        raise _Invalid("has only a system message; add user and assistant turns")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = index + len(conversation) - len(turns)
            raise _Invalid(f"messages[{position}] is {message['role']!r} where {expected!r} was expected: "
                           "after an optional system message, user and assistant turns must alternate")
    if turns[-1]["role"] != "assistant":
        raise _Invalid("the conversation ends with a user turn; the last turn must be the assistant's reply to "
                       "train on")
