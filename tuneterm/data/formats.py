"""Recognising a dataset's format and turning every record into one conversation form.

Whatever the file looks like, the rest of tuneterm sees a conversation: a list of {"role", "content"} messages.
Chat formats (OpenAI-style messages, ShareGPT, alpaca, prompt/completion as message lists) become roles system,
user and assistant, the shape `tokenizer.apply_chat_template` takes. Two raw-text formats keep their own roles and
are rendered without a chat template: plain text (one "text" message, trained on every token) and TRL's
prompt/completion as strings ("prompt" then "completion", the completion trained).

Detection reports the evidence it used, so a person can see why a file was read the way it was; data.format and
data.columns override it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuneterm.data.columns import guess_columns, inspect_command
from tuneterm.data.records import Record
from tuneterm.errors import DataError

Conversation = list[dict[str, str]]

CHAT_ROLES = ("system", "user", "assistant")
RAW_ROLES = ("text", "prompt", "completion")

# Each format's fields (by their default names) and what a person is told the format expects.
FIELDS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
EXPECTED = {
    "messages": "a 'messages' list of {role, content} objects",
    "sharegpt": "a 'conversations' list of {from, value} objects (human / gpt / system)",
    "alpaca": "'instruction' and 'output' strings (optional 'input', 'system', 'history')",
    "prompt_completion": "'prompt' and 'completion' (strings, or lists of {role, content} messages)",
    "text": "a 'text' string (plain text, trained on every token)",
}
FORMATS = tuple(FIELDS)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system"}
MESSAGE_ROLE_ALIASES = {"model": "assistant", "developer": "system", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Detection:
    format: str
    evidence: str


class FormatUnknown(DataError):
    """No format's fields are in most records; `columns` are the fields found (name -> records of the sample
    having it), for a person to map with data.columns."""

    def __init__(self, summary: str, columns: dict[str, int], sampled: int):
        super().__init__(summary)
        self.columns = columns
        self.sampled = sampled


class Columns:
    """Field names, as the format calls them by default, or as data.columns renames them."""

    def __init__(self, renames: Mapping[str, str] | None = None):
        self.renames = dict(renames or {})

    def __getitem__(self, name: str) -> str:
        return self.renames.get(name, name)


def detect_format(records: list[Record], columns: Columns | None = None) -> Detection:
    """Decide from the fields of the first records; the evidence says which fields decided it.

    A format wins when most sampled records (80%) carry its fields, so that a few broken records are reported by
    validation, with their lines, instead of hiding the format.
    """
    columns = columns or Columns()
    sample = records[:200]
    counts = Counter(key for record in sample for key in record.fields)
    for fmt, required in (("messages", ("messages",)), ("sharegpt", ("conversations",)),
                          ("alpaca", ("instruction", "output")), ("prompt_completion", ("prompt", "completion")),
                          ("text", ("text",))):
        having = min(counts[columns[name]] for name in required)
        if having >= 0.8 * len(sample):
            named = " and ".join(f"'{columns[n]}'" for n in required)
            share = "all" if having == len(sample) else f"{having} of the"
            return Detection(fmt, f"{share} {len(sample)} records sampled have {named}")
    found = ", ".join(f"{name} ({count}/{len(sample)})" for name, count in counts.most_common(12))
    expected = "; ".join(f"{name}: {fields}" for name, fields in EXPECTED.items())
    source = records[0].location.file if records else "the data"
    guess = guess_columns(counts, FIELDS)
    likely = (f" These columns look like {guess.format} data: {guess.describe()}; check it with: "
              f"{inspect_command(source or 'DATA', 'MODEL', guess.format, guess.columns)}" if guess else "")
    raise FormatUnknown(f"{source}: cannot tell the data format. Columns found: {found or 'none'}. Expected one of: "
                        f"{expected}. Set data.format, and data.columns to map your column names.{likely}",
                        dict(counts.most_common()), len(sample))


class Invalid(ValueError):
    """A record that cannot be used; the message says what is wrong with it, the reason groups it with others."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def to_conversation(fields: dict[str, Any], fmt: str, columns: Columns) -> Conversation:
    conversation = _CONVERTERS[fmt](fields, columns)
    if conversation and conversation[0]["role"] not in RAW_ROLES:
        check_turns(conversation)
    return conversation


def _text(value: Any, name: str, *, required: bool = True) -> str:
    if value is None or value == "":
        if required:
            raise Invalid(f"'{name}' is missing or empty", "missing field")
        return ""
    if not isinstance(value, str):
        raise Invalid(f"'{name}' must be text, got {type(value).__name__} {str(value)[:40]!r}", "not text")
    if required and not value.strip():
        raise Invalid(f"'{name}' is only whitespace", "empty text")
    return value


def _messages(value: Any, name: str, role_key: str, content_key: str, roles: Mapping[str, str]) -> Conversation:
    if not isinstance(value, list) or not value:
        raise Invalid(f"'{name}' must be a non-empty list of {{{role_key}, {content_key}}} objects",
                      "missing field")
    conversation: Conversation = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise Invalid(f"{name}[{index}] must be an object with '{role_key}' and '{content_key}'",
                          "malformed message")
        raw_role = message.get(role_key)
        role = raw_role if raw_role in CHAT_ROLES else roles.get(str(raw_role).lower() if raw_role else "")
        if role is None:
            raise Invalid(f"{name}[{index}]: unknown role {raw_role!r}; expected one of "
                          f"{', '.join(sorted(set(CHAT_ROLES) | set(roles)))}", "unknown role")
        content = _text(message.get(content_key), f"{name}[{index}].{content_key}")
        conversation.append({"role": role, "content": content})
    return conversation


def _from_messages(fields: dict[str, Any], columns: Columns) -> Conversation:
    return _messages(fields.get(columns["messages"]), columns["messages"], "role", "content", MESSAGE_ROLE_ALIASES)


def _from_sharegpt(fields: dict[str, Any], columns: Columns) -> Conversation:
    name = columns["conversations"]
    turns = fields.get(name)
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "role" in turns[0]:
        return _messages(turns, name, "role", "content", MESSAGE_ROLE_ALIASES)
    conversation = _messages(turns, name, "from", "value", SHAREGPT_ROLES)
    system = fields.get("system")
    if isinstance(system, str) and system.strip() and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": system})
    return conversation


def _from_alpaca(fields: dict[str, Any], columns: Columns) -> Conversation:
    instruction = _text(fields.get(columns["instruction"]), columns["instruction"])
    extra = _text(fields.get(columns["input"]), columns["input"], required=False)
    output = _text(fields.get(columns["output"]), columns["output"])
    conversation: Conversation = []
    system = _text(fields.get(columns["system"]), columns["system"], required=False)
    if system:
        conversation.append({"role": "system", "content": system})
    history = fields.get(columns["history"]) or []
    if not isinstance(history, list):
        raise Invalid(f"'{columns['history']}' must be a list of [instruction, response] pairs", "malformed history")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise Invalid(f"{columns['history']}[{index}] must be an [instruction, response] pair",
                          "malformed history")
        conversation.append({"role": "user", "content": _text(pair[0], f"history[{index}][0]")})
        conversation.append({"role": "assistant", "content": _text(pair[1], f"history[{index}][1]")})
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    conversation.append({"role": "user", "content": prompt})
    conversation.append({"role": "assistant", "content": output})
    return conversation


def _from_prompt_completion(fields: dict[str, Any], columns: Columns) -> Conversation:
    prompt, completion = fields.get(columns["prompt"]), fields.get(columns["completion"])
    if isinstance(prompt, list) or isinstance(completion, list):
        head = _messages(prompt, columns["prompt"], "role", "content", MESSAGE_ROLE_ALIASES)
        tail = _messages(completion, columns["completion"], "role", "content", MESSAGE_ROLE_ALIASES)
        if any(m["role"] != "assistant" for m in tail):
            raise Invalid(f"'{columns['completion']}' messages must all be the assistant's", "turn order")
        return head + tail
    return [{"role": "prompt", "content": _text(prompt, columns["prompt"])},
            {"role": "completion", "content": _text(completion, columns["completion"])}]


def _from_text(fields: dict[str, Any], columns: Columns) -> Conversation:
    return [{"role": "text", "content": _text(fields.get(columns["text"]), columns["text"])}]


_CONVERTERS: dict[str, Callable[[dict[str, Any], Columns], Conversation]] = {
    "messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion, "text": _from_text,
}


def check_turns(conversation: Conversation) -> None:
    """A system message may open; then user and assistant alternate, and the last turn is the assistant's."""
    turns = conversation[1:] if conversation[0]["role"] == "system" else conversation
    if not turns:
        raise Invalid("has only a system message; add user and assistant turns", "no turns")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = index + len(conversation) - len(turns)
            raise Invalid(f"messages[{position}] is {message['role']!r} where {expected!r} was expected: "
                          "after an optional system message, user and assistant turns must alternate", "turn order")
    if turns[-1]["role"] != "assistant":
        raise Invalid("the conversation ends with a user turn; the last turn must be the assistant's reply to "
                      "train on", "ends with a user turn")
