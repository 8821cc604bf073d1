"""Which characters of a rendered conversation the model is trained to write.

Training "on responses only" is fragile when it matches delimiter strings: templates differ, add default system
prompts, fold the system prompt into a user turn, rename roles, trim content, write tool calls in their own
syntax. Here the template itself tells us the structure: the conversation is rendered once as it is and once with
every message's content (and every assistant's reasoning) replaced by a unique marker. The marked rendering is the
template's skeleton; walking the real rendering along it gives the exact character span of every piece of text,
whatever the template puts around it.

A trained span is an assistant turn as the model writes it: from the end of the generation prompt the template
writes before it (template.py finds it) to the end-of-turn token that closes it (<|im_end|>, <|eot_id|>,
<end_of_turn>, </s>...), so the model learns its think block, its tool-call syntax, its answer and to stop. System
and user text, tool results and the tools preamble are never trained. Spans are characters, not tokens: the
tokenizer's offsets turn them into labels (see tokenize.py), so BPE merges across the boundary between template
text and content do not matter.

Reasoning (data.reasoning): "keep" renders every reply with its reasoning (the thinking mode of a hybrid
template), "drop" renders without it (the no-think mode: a hybrid template's empty think block is then part of
the prompt, as it is when the model is asked with enable_thinking off), and "auto" renders each conversation in
the mode its data holds. Reasoning written inline as a leading <think> block becomes `reasoning_content` for
templates that read that field, so that they render it as they render their own.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneterm.data.formats import Conversation, Message, Tools
from tuneterm.data.template import (
    TemplateError,
    TemplateKey,
    TemplateTraits,
    render,
    special_after,
    template_traits,
)

REASONING_CHOICES = ("auto", "keep", "drop")

_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000(\\d+)\ue001")
_INLINE_THINK = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.S)
_EMPTY_THINK = re.compile(r"<think>\s*</think>")
_CLOSING_TAG = re.compile(r"\s*</\w+>\s*")


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    trained: list[tuple[int, int]]
    """Character spans the loss is computed on."""
    end_of_turn_trained: bool
    """Every assistant span ends with an end-of-turn token (so the model learns to stop)."""
    prompt: tuple[tuple[int, int], ...] = ()
    """Character spans of the system, user and tool-result contents: text that must never be trained."""
    system_folded: bool = False
    """The template refuses a system role, so the system prompt was put in front of the first user message."""
    parts: tuple[tuple[str, int, int], ...] = ()
    """("reasoning" | "tool call" | "tool result", start, end): where those are, for the preview and the counts."""
    dropped: tuple[str, ...] = ()
    """What the data holds that the template did not write: "tool calls", "tool results", "tools", "reasoning"."""
    empty_thinking_trained: bool = False
    """A trained reply holds an empty think block: the model learns to skip its reasoning."""
    thinking: bool | None = None
    """enable_thinking as rendered (None: the template has no thinking switch)."""


def fold_system(conversation: Conversation) -> Conversation:
    """The system prompt as the start of the first user message, for templates without a system role."""
    system, first_user, *rest = conversation
    return [{**first_user, "content": f"{system['content']}\n\n{first_user['content']}"}, *rest]


def reasoning_of(message: Message) -> str:
    """An assistant message's reasoning: its reasoning_content, or a <think> block that opens its content."""
    if message.get("reasoning_content"):
        return str(message["reasoning_content"])
    inline = _INLINE_THINK.match(message.get("content") or "")
    return inline.group(1).strip() if inline else ""


def prepare_messages(conversation: Conversation, traits: TemplateTraits,
                     reasoning: str) -> tuple[Conversation, bool | None]:
    """The messages as the template is given them under data.reasoning, and the enable_thinking to render with."""
    messages = [_reasoning_for(message, traits, reasoning) if message["role"] == "assistant" else message
                for message in conversation]
    has_reasoning = any(reasoning_of(m) for m in messages if m["role"] == "assistant")
    return messages, traits.thinking_for(reasoning, has_reasoning)


def _reasoning_for(message: Message, traits: TemplateTraits, reasoning: str) -> Message:
    inline = _INLINE_THINK.match(message.get("content") or "")
    if reasoning == "drop":
        without = {key: value for key, value in message.items() if key != "reasoning_content"}
        return {**without, "content": message["content"][inline.end():]} if inline else without
    if inline and traits.renders_reasoning and "reasoning_content" not in message:
        return {**message, "reasoning_content": inline.group(1).strip("\n"),
                "content": message["content"][inline.end():]}
    return message


def render_for_training(tokenizer: Any, conversation: Conversation, train_on: str, tools: Tools | None = None,
                        reasoning: str = "auto") -> RenderedConversation:
    if conversation[0]["role"] in ("text", "prompt"):
        return _render_raw(tokenizer, conversation)
    traits = template_traits(tokenizer)
    messages, thinking = prepare_messages(conversation, traits, reasoning)
    folded = False
    try:
        text = render(tokenizer, messages, tools=tools, thinking=thinking)
    except TemplateError:
        if messages[0]["role"] != "system":
            raise
        messages, folded = fold_system(messages), True
        text = render(tokenizer, messages, tools=tools, thinking=thinking)
    if train_on == "all":
        return RenderedConversation(text, [(0, len(text))], True, (), folded, thinking=thinking)
    pieces = _piece_spans(tokenizer, traits.key, messages, tools, thinking, text)
    special = traits.special
    regions: dict[int, tuple[int, int]] = {}
    parts: list[tuple[str, int, int]] = []
    all_ended = True
    cursor = 0
    for index, message in enumerate(messages):
        own = [pieces[key] for key in (2 * index, 2 * index + 1) if key in pieces]
        if message["role"] == "tool" and 2 * index in pieces:
            parts.append(("tool result", *pieces[2 * index]))
        if message["role"] != "assistant":
            cursor = max([cursor, *(end for _, end in own)])
            continue
        limit = min((start for key, (start, _) in pieces.items() if key >= 2 * index + 2), default=len(text))
        start = _body_start(text, cursor, min((s for s, _ in own), default=None), traits, thinking, limit, special)
        if start is None:
            raise TemplateError(f"cannot find where the assistant's messages[{index}] starts in the rendered chat "
                                "template; set model.chat_template to a template that writes a generation prompt")
        if 2 * index + 1 in pieces:
            parts.append(("reasoning", *pieces[2 * index + 1]))
        if message.get("tool_calls"):
            tail = max([start, *(end for _, end in own)])
            if own and tail == own[-1][1] and 2 * index + 1 in pieces and 2 * index not in pieces:
                tail = _after_closing_tag(text, tail)  # the calls start after the reasoning's </think>
            closed = _closing(text, tail, limit, traits.closing)
            if closed is None:
                raise TemplateError(f"no end-of-turn token closes the tool call of messages[{index}] in the "
                                    "rendered chat template")
            parts.append(("tool call", tail, closed[0]))
            regions[index] = (start, closed[1])
        else:
            content_end = pieces[2 * index][1] if 2 * index in pieces else max([start, *(end for _, end in own)])
            ended = content_end if _ends_with_special(text, content_end, special) else special_after(
                text, content_end, special)
            all_ended &= ended is not None
            regions[index] = (start, ended if ended is not None else content_end)
        cursor = regions[index][1]
    generation = _generation_spans(tokenizer, messages, tools, thinking, text)
    trained = generation or list(regions.values())
    if not trained:
        raise TemplateError("the chat template does not render any assistant message of this conversation")
    prompt = tuple(pieces[2 * i] for i, m in enumerate(messages) if m["role"] != "assistant" and 2 * i in pieces)
    return RenderedConversation(
        text, trained, all_ended, prompt, folded, tuple(parts),
        _dropped(messages, tools, text, pieces, regions),
        any(_EMPTY_THINK.search(text, start, end) for start, end in trained), thinking)


def _body_start(text: str, cursor: int, first: int | None, traits: TemplateTraits, thinking: bool | None,
                limit: int, special: Sequence[str]) -> int | None:
    """Where an assistant turn's own text starts, after the end of the message before it (`cursor`): after the
    generation prompt the template writes for it (the one for this conversation's thinking mode first); else at
    its first piece of text; else, for a turn with no text of its own (a tool call) in a template that writes no
    generation prompt (Mistral's), after the special token that closes the turn before."""
    window = text[cursor:first if first is not None else limit]
    mode = traits.generation_prompts.get(thinking, "")
    others = sorted((p for p in traits.generation_prompts.values() if p != mode), key=len, reverse=True)
    for prompt in (mode, *others):
        found = window.find(prompt) if prompt else -1
        if found >= 0:
            return cursor + found + len(prompt)
    if first is not None:
        return first
    if any(traits.generation_prompts.values()):
        return None
    specials = [(window.find(token), token) for token in special if token in window]
    position, token = min(specials) if specials else (-1, "")
    return cursor + position + len(token) if specials else None


def _after_closing_tag(text: str, position: int) -> int:
    """Past the closing tag (</think>...) and whitespace that follow `position`, if they do."""
    tag = _CLOSING_TAG.match(text, position)
    return tag.end() if tag else position


def _closing(text: str, start: int, limit: int, closing: tuple[str, ...]) -> tuple[int, int] | None:
    """(start, end) of the first token in `closing` between start and limit."""
    found = [(position, position + len(token)) for token in closing
             if 0 <= (position := text.find(token, start, limit))]
    return min(found) if found else None


def _dropped(messages: Conversation, tools: Tools | None, text: str, pieces: dict[int, tuple[int, int]],
             regions: dict[int, tuple[int, int]]) -> tuple[str, ...]:
    """What the conversation holds that the rendered text lacks (a template that never writes it)."""
    dropped = []
    calls = [(index, call["function"]["name"]) for index, m in enumerate(messages) for call in m.get("tool_calls", [])]
    if any(index not in regions or name not in text[slice(*regions[index])] for index, name in calls):
        dropped.append("tool calls")
    if any(m["role"] == "tool" and 2 * i not in pieces for i, m in enumerate(messages)):
        dropped.append("tool results")
    if tools and any(tool["function"]["name"] not in text for tool in tools if "function" in tool):
        dropped.append("tools")
    thoughts = [(i, reasoning_of(m)) for i, m in enumerate(messages) if m["role"] == "assistant"]
    if any(thought and (i not in regions or thought.strip() not in text[slice(*regions[i])])
           for i, thought in thoughts):
        dropped.append("reasoning")
    return tuple(dropped)


def _render_raw(tokenizer: Any, conversation: Conversation) -> RenderedConversation:
    """Plain text is trained whole; a string prompt/completion pair trains the completion. Both end in EOS."""
    eos = tokenizer.eos_token or ""
    if conversation[0]["role"] == "text":
        text = conversation[0]["content"] + eos
        return RenderedConversation(text, [(0, len(text))], bool(eos))
    prompt, completion = conversation[0]["content"], conversation[1]["content"]
    text = prompt + completion + eos
    return RenderedConversation(text, [(len(prompt), len(text))], bool(eos), ((0, len(prompt)),))


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@functools.lru_cache(maxsize=16)
def _marks_generation(template: str) -> bool:
    return bool(_GENERATION_TAG.search(template))


def _generation_spans(tokenizer: Any, messages: Conversation, tools: Tools | None, thinking: bool | None,
                      text: str) -> list[tuple[int, int]]:
    """The template's own {% generation %} blocks, where it marks them (most templates do not)."""
    template = tokenizer.chat_template or ""
    if not isinstance(template, str) or not _marks_generation(template):
        return []
    from transformers.utils.chat_template_utils import render_jinja_template

    extra: dict[str, Any] = {**tokenizer.special_tokens_map}
    if thinking is not None:
        extra["enable_thinking"] = thinking
    result: Any = render_jinja_template(conversations=[messages], tools=list(tools or []) or None,
                                        chat_template=template, return_assistant_tokens_mask=True, **extra)
    rendered, masks = result
    return [(int(start), int(end)) for start, end in masks[0]] if rendered[0] == text else []


def _piece_spans(tokenizer: Any, template: TemplateKey, messages: Conversation, tools: Tools | None,
                 thinking: bool | None, text: str) -> dict[int, tuple[int, int]]:
    """Piece -> (start, end) in `text`: piece 2i is message i's content, 2i + 1 its reasoning."""
    marked: Conversation = []
    originals: dict[int, str] = {}
    for index, message in enumerate(messages):
        copy = dict(message)
        for key, piece in (("content", 2 * index), ("reasoning_content", 2 * index + 1)):
            if isinstance(message.get(key), str) and message[key]:
                originals[piece], copy[key] = message[key], _MARK.format(piece)
        marked.append(copy)
    spans = _align(_skeleton(tokenizer, template, marked, tools, thinking), text, originals)
    plain = not any(m.get("tool_calls") or m.get("reasoning_content") for m in messages)
    if spans is None and plain:
        spans = _search(text, messages)
    if spans is None:
        raise TemplateError("cannot find the messages in the rendered chat template: the template changes its "
                            "text depending on the content; set model.chat_template to a simpler template")
    return spans


Skeleton = tuple[list[str], list[int]]
"""A marked rendering split at its markers: the literal texts, and the piece between each two of them."""
SKELETONS_KEPT = 4096
_SKELETONS: dict[tuple[Any, ...], Skeleton] = {}


def _skeleton(tokenizer: Any, template: TemplateKey, marked: Conversation, tools: Tools | None,
              thinking: bool | None) -> Skeleton:
    """The marked rendering. A template given the same input writes the same text, and the marked conversations of
    a dataset come in few shapes (roles, which pieces hold text, thinking mode; tool calls and tools as they are),
    so each shape is rendered once. A template that writes the time of day (strftime_now) is rendered each time."""
    if "strftime_now" in template[0]:
        return _split(render(tokenizer, marked, tools=tools, thinking=thinking))
    try:
        key = (template, json.dumps(marked, ensure_ascii=False), json.dumps(tools, ensure_ascii=False), thinking)
    except (TypeError, ValueError):  # values JSON cannot write (a date from Parquet): rendered as they are
        return _split(render(tokenizer, marked, tools=tools, thinking=thinking))
    skeleton = _SKELETONS.get(key)
    if skeleton is None:
        skeleton = _split(render(tokenizer, marked, tools=tools, thinking=thinking))
        if len(_SKELETONS) >= SKELETONS_KEPT:
            _SKELETONS.clear()
        _SKELETONS[key] = skeleton
    return skeleton


def _split(skeleton: str) -> Skeleton:
    pieces = _MARK_RE.split(skeleton)  # literal, piece, literal, piece, ..., literal
    return pieces[0::2], [int(i) for i in pieces[1::2]]


def _align(skeleton: Skeleton, text: str, originals: dict[int, str]) -> dict[int, tuple[int, int]] | None:
    """Walk `text` along the skeleton: literal pieces must match exactly, markers take the text between."""
    literals, keys = skeleton
    if not text.startswith(literals[0]):
        return None
    position = len(literals[0])
    spans: dict[int, tuple[int, int]] = {}
    for key, following in zip(keys, literals[1:]):
        length = _rendered_length(text, position, originals[key], following)
        if length is None:
            return None
        spans.setdefault(key, (position, position + length))
        position += length + len(following)
    return spans if position == len(text) else None


def _rendered_length(text: str, position: int, content: str, following: str) -> int | None:
    """How many characters of `text` at `position` the template made out of `content` (as is, or trimmed)."""
    if text.startswith(content, position) and text.startswith(following, position + len(content)):
        return len(content)  # as is: most templates write the content unchanged
    for candidate in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip(), content.strip("\n"))):
        if text.startswith(candidate + following, position):
            return len(candidate)
    if following:
        found = text.find(following, position)
        return found - position if found >= 0 else None
    return None


def _search(text: str, messages: Conversation) -> dict[int, tuple[int, int]] | None:
    """Fallback for plain conversations: find each message's (stripped) content in order."""
    spans: dict[int, tuple[int, int]] = {}
    position = 0
    for index, message in enumerate(messages):
        content = message["content"].strip()
        found = text.find(content, position)
        if found < 0:
            if message["role"] == "assistant":
                return None
            continue  # a system prompt the template dropped or moved
        spans[2 * index] = (found, found + len(content))
        position = found + len(content)
    return spans


def _ends_with_special(text: str, end: int, special: tuple[str, ...]) -> bool:
    return text.endswith(special, 0, end)
