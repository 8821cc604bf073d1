"""Recognising a dataset's format and turning every record into one conversation form.

Whatever the file looks like, the rest of tuneterm sees a conversation: a list of messages in the shape
`tokenizer.apply_chat_template` takes, and the record's tool schemas (its `tools=`). Chat formats (OpenAI-style
messages, ShareGPT, alpaca, prompt/completion as message lists) become roles system, user, assistant and tool.
A message keeps every key it has (a chat template may read any of them): an assistant message may carry
`tool_calls` (arguments always an object) and `reasoning_content`; a tool message its `name` and `tool_call_id`.
Two raw-text formats keep their own roles and are rendered without a chat template: plain text (one "text"
message, trained on every token) and TRL's prompt/completion as strings ("prompt" then "completion", the
completion trained).

Detection reports the evidence it used, so a person can see why a file was read the way it was; data.format and
data.columns override it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuneterm.data.columns import guess_columns, inspect_command
from tuneterm.data.records import Record
from tuneterm.errors import DataError

Message = dict[str, Any]
Conversation = list[Message]
Tools = list[dict[str, Any]]


@dataclass(frozen=True)
class Chat:
    """One record as a conversation, with the tool schemas its chat template is given (None: no tools)."""

    messages: Conversation
    tools: Tools | None = None


CHAT_ROLES = ("system", "user", "assistant", "tool")
RAW_ROLES = ("text", "prompt", "completion")

# Each format's fields (by their default names) and what a person is told the format expects.
FIELDS = {
    "messages": ("messages", "tools"),
    "sharegpt": ("conversations", "tools"),
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
EXPECTED = {
    "messages": "a 'messages' list of {role, content} objects (optional 'tools')",
    "sharegpt": "a 'conversations' list of {from, value} objects (human / gpt / system / function_call / "
                "observation; optional 'tools')",
    "alpaca": "'instruction' and 'output' strings (optional 'input', 'system', 'history')",
    "prompt_completion": "'prompt' and 'completion' (strings, or lists of {role, content} messages)",
    "text": "a 'text' string (plain text, trained on every token)",
}
FORMATS = tuple(FIELDS)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system", "observation": "tool",
                  "tool": "tool", "function_call": "assistant"}
MESSAGE_ROLE_ALIASES = {"model": "assistant", "developer": "system", "human": "user", "gpt": "assistant",
                        "function": "tool", "ipython": "tool"}
REASONING_KEYS = ("reasoning_content", "reasoning")
"""Where an assistant message holds its reasoning; it becomes `reasoning_content`, the key templates read."""


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


def to_chat(fields: dict[str, Any], fmt: str, columns: Columns) -> Chat:
    chat = _CONVERTERS[fmt](fields, columns)
    if chat.messages and chat.messages[0]["role"] not in RAW_ROLES:
        check_turns(chat.messages)
    return chat


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
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise Invalid(f"{where} must be an object with '{role_key}' and '{content_key}'", "malformed message")
        raw_role = message.get(role_key)
        role = raw_role if raw_role in CHAT_ROLES else roles.get(str(raw_role).lower() if raw_role else "")
        if role is None:
            raise Invalid(f"{where}: unknown role {raw_role!r}; expected one of "
                          f"{', '.join(sorted(set(CHAT_ROLES) | set(roles)))}", "unknown role")
        if raw_role == "function_call":  # ShareGPT: the call itself, as JSON text, in the value
            calls = _json_value(message.get(content_key), f"{where}.{content_key}", "a function call")
            conversation.append({"role": "assistant", "content": "",
                                 "tool_calls": _tool_calls(calls if isinstance(calls, list) else [calls], where)})
            continue
        rest = {key: value for key, value in message.items()
                if key not in (role_key, content_key) and value is not None}
        conversation.append(_message(role, message.get(content_key), rest, where, content_key))
    return conversation


def _message(role: str, content: Any, rest: dict[str, Any], where: str, content_key: str) -> Message:
    """One message with every key it had; tool calls, reasoning and tool results in the shape templates read."""
    if role == "tool":
        if isinstance(content, (dict, list)):  # a structured tool result: templates print text
            content = json.dumps(content, ensure_ascii=False)
        return {"role": role, "content": _text(content, f"{where}.{content_key}"), **rest}
    if role != "assistant":
        return {"role": role, "content": _text(content, f"{where}.{content_key}"), **rest}
    calls = rest.pop("tool_calls", None)
    reasonings = [rest.pop(key) for key in REASONING_KEYS if key in rest]
    message: Message = {"role": role}
    if calls:  # a reply that only calls tools has no text of its own
        message["content"] = _text(content, f"{where}.{content_key}", required=False)
        message["tool_calls"] = _tool_calls(calls, where)
    else:
        message["content"] = _text(content, f"{where}.{content_key}")
    if reasonings and reasonings[0] != "":
        message["reasoning_content"] = _text(reasonings[0], f"{where}.reasoning_content")
    return {**message, **rest}


def _json_value(value: Any, where: str, what: str) -> Any:
    """`value` itself, or parsed when it is JSON text; Invalid (with the parser's position) when it is not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise Invalid(f"{where} must be {what} as JSON: {exc.msg} at character {exc.pos} of {value[:60]!r}",
                      "not JSON") from None


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI-style calls ({type, function: {name, arguments}, id}); a flat {name, arguments} is accepted, and
    arguments given as JSON text become the object templates expect."""
    if not isinstance(value, list):
        raise Invalid(f"{where}.tool_calls must be a list of calls, got {type(value).__name__}", "malformed tool call")
    calls = []
    for index, call in enumerate(value):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise Invalid(f"{at} must be an object with a 'function': {{name, arguments}}", "malformed tool call")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise Invalid(f"{at} has no function name: add 'name' to its 'function'", "tool call without a name")
        arguments = _json_value(function.get("arguments", {}), f"{at}.function.arguments", "an object")
        if not isinstance(arguments, dict):
            raise Invalid(f"{at}.function.arguments must be a JSON object, got {type(arguments).__name__}",
                          "not JSON")
        normal: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if isinstance(call, dict) and call.get("id") is not None:
            normal["id"] = str(call["id"])
        calls.append(normal)
    return calls


def _tools(value: Any, name: str) -> Tools | None:
    """A record's tool schemas: a list (or that list as JSON text) of {type: function, function: {...}} or of bare
    function schemas."""
    if value is None or value == "" or value == []:
        return None
    tools = _json_value(value, f"'{name}'", "a list of function schemas")
    if not isinstance(tools, list):
        raise Invalid(f"'{name}' must be a list of function schemas, got {type(tools).__name__}", "malformed tools")
    schemas = []
    for index, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Invalid(f"{name}[{index}] must be a function schema with a 'name'", "malformed tools")
        schemas.append(tool if "function" in tool else {"type": "function", "function": function})
    return schemas


def _from_messages(fields: dict[str, Any], columns: Columns) -> Chat:
    return Chat(_messages(fields.get(columns["messages"]), columns["messages"], "role", "content",
                          MESSAGE_ROLE_ALIASES), _tools(fields.get(columns["tools"]), columns["tools"]))


def _from_sharegpt(fields: dict[str, Any], columns: Columns) -> Chat:
    name = columns["conversations"]
    turns = fields.get(name)
    tools = _tools(fields.get(columns["tools"]), columns["tools"])
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "role" in turns[0]:
        return Chat(_messages(turns, name, "role", "content", MESSAGE_ROLE_ALIASES), tools)
    conversation = _messages(turns, name, "from", "value", SHAREGPT_ROLES)
    system = fields.get("system")
    if isinstance(system, str) and system.strip() and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": system})
    return Chat(conversation, tools)


def _from_alpaca(fields: dict[str, Any], columns: Columns) -> Chat:
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
    return Chat(conversation)


def _from_prompt_completion(fields: dict[str, Any], columns: Columns) -> Chat:
    prompt, completion = fields.get(columns["prompt"]), fields.get(columns["completion"])
    if isinstance(prompt, list) or isinstance(completion, list):
        head = _messages(prompt, columns["prompt"], "role", "content", MESSAGE_ROLE_ALIASES)
        tail = _messages(completion, columns["completion"], "role", "content", MESSAGE_ROLE_ALIASES)
        if any(m["role"] not in ("assistant", "tool") for m in tail):
            raise Invalid(f"'{columns['completion']}' messages must all be the assistant's (and tool results)",
                          "turn order")
        return Chat(head + tail)
    return Chat([{"role": "prompt", "content": _text(prompt, columns["prompt"])},
                 {"role": "completion", "content": _text(completion, columns["completion"])}])


def _from_text(fields: dict[str, Any], columns: Columns) -> Chat:
    return Chat([{"role": "text", "content": _text(fields.get(columns["text"]), columns["text"])}])


_CONVERTERS: dict[str, Callable[[dict[str, Any], Columns], Chat]] = {
    "messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion, "text": _from_text,
}


def check_turns(conversation: Conversation) -> None:
    """A system message may open; then the user speaks, and the assistant answers. An assistant message that calls
    tools is followed by their results (tool messages, at most one per call, matching a call's id when both have
    one), then the assistant again. The last turn is the assistant's."""
    turns = conversation[1:] if conversation[0]["role"] == "system" else conversation
    offset = len(conversation) - len(turns)
    if not turns:
        raise Invalid("has only a system message; add user and assistant turns", "no turns")
    previous: Message | None = None
    open_calls: list[dict[str, Any]] = []
    for index, message in enumerate(turns, start=offset):
        role = message["role"]
        if previous is not None and previous.get("tool_calls") and role != "tool":
            raise Invalid(f"messages[{index}] follows a tool call without its result: put the tool message(s) "
                          "after the assistant message that calls the tools", "tool call without a result")
        if role == "tool":
            if not open_calls:
                raise Invalid(f"messages[{index}] is a tool result with no tool call before it: a tool message "
                              "follows an assistant message with 'tool_calls'", "tool result without a call")
            _answer_call(open_calls, message, index)
        else:
            expected = "user" if previous is None or previous["role"] == "assistant" else "assistant"
            if role != expected:
                raise Invalid(f"messages[{index}] is {role!r} where {expected!r} was expected: after an optional "
                              "system message, user and assistant turns must alternate (tool results follow the "
                              "assistant's tool calls)", "turn order")
            open_calls = list(message.get("tool_calls") or []) if role == "assistant" else []
        previous = message
    if turns[-1]["role"] != "assistant":
        ending = "a tool result" if turns[-1]["role"] == "tool" else "a user turn"
        raise Invalid(f"the conversation ends with {ending}; the last turn must be the assistant's reply to train on",
                      f"ends with {ending}")


def _answer_call(open_calls: list[dict[str, Any]], result: Message, index: int) -> None:
    """Match a tool result with a call still waiting for one (by id when both have one), or refuse it."""
    call_id = result.get("tool_call_id")
    matching = [call for call in open_calls if call_id is None or "id" not in call or call["id"] == call_id]
    if not matching:
        ids = ", ".join(repr(call.get("id")) for call in open_calls) or "none left"
        raise Invalid(f"messages[{index}]: tool_call_id {call_id!r} answers none of the calls waiting for a result "
                      f"({ids})", "tool result without a call")
    open_calls.remove(matching[0])
