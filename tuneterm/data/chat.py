"""Which characters of a rendered conversation the model is trained to write.

Training "on responses only" is fragile when it matches delimiter strings: templates differ, add default system
prompts, fold the system prompt into a user turn, rename roles, trim content. Here the template itself tells us
the structure: the conversation is rendered once as it is and once with every message's content replaced by a
unique marker. The marked rendering is the template's skeleton; walking the real rendering along it gives the
exact character span of every message's content, whatever text the template puts around it.

A trained span is an assistant message's content plus the end-of-turn token the template writes right after it
(<|im_end|>, <|eot_id|>, <end_of_turn>, </s>...), so the model learns to stop. Spans are characters, not
tokens: the tokenizer's offsets turn them into labels (see tokenize.py), so BPE merges across the boundary
between template text and content do not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tuneterm.data.formats import Conversation

# For base models that ship without a chat template: the Alpaca layout, each reply closed by the EOS token so
# that the model learns to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)

_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


class TemplateError(ValueError):
    """The chat template cannot render this conversation, or its output cannot be aligned with the messages."""


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    trained: list[tuple[int, int]]
    """Character spans the loss is computed on."""
    end_of_turn_trained: bool
    """Every assistant span ends with an end-of-turn token (so the model learns to stop)."""
    prompt: tuple[tuple[int, int], ...] = ()
    """Character spans of the system and user contents: text that must never be trained."""
    system_folded: bool = False
    """The template refuses a system role, so the system prompt was put in front of the first user message."""


def render(tokenizer: Any, conversation: Conversation) -> str:
    try:
        text: str = tokenizer.apply_chat_template(conversation, tokenize=False)
        return text
    except Exception as exc:  # jinja raises its own errors, and templates call raise_exception()
        raise TemplateError(f"the chat template cannot render this conversation: {exc}") from None


def fold_system(conversation: Conversation) -> Conversation:
    """The system prompt as the start of the first user message, for templates without a system role."""
    system, first_user, *rest = conversation
    return [{"role": "user", "content": f"{system['content']}\n\n{first_user['content']}"}, *rest]


def render_for_training(tokenizer: Any, conversation: Conversation, train_on: str) -> RenderedConversation:
    if conversation[0]["role"] in ("text", "prompt"):
        return _render_raw(tokenizer, conversation)
    folded = False
    try:
        text = render(tokenizer, conversation)
    except TemplateError:
        if conversation[0]["role"] != "system":
            raise
        conversation, folded = fold_system(conversation), True
        text = render(tokenizer, conversation)
    if train_on == "all":
        return RenderedConversation(text, [(0, len(text))], True, (), folded)
    spans = _content_spans(tokenizer, conversation, text)
    special = _special_tokens(tokenizer)
    generation = _generation_spans(tokenizer, conversation, text)
    assistant = [spans[i] for i, m in enumerate(conversation) if m["role"] == "assistant" and i in spans]
    trained = []
    all_ended = True
    for start, end in generation or assistant:
        eot_end = end if _ends_with_special(text, end, special) else _end_of_turn(text, end, special)
        all_ended &= eot_end is not None
        trained.append((start, eot_end if eot_end is not None else end))
    if not trained:
        raise TemplateError("the chat template does not render any assistant message of this conversation")
    prompt = tuple(spans[i] for i, m in enumerate(conversation) if m["role"] != "assistant" and i in spans)
    return RenderedConversation(text, trained, all_ended, prompt, folded)


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


def _generation_spans(tokenizer: Any, conversation: Conversation, text: str) -> list[tuple[int, int]]:
    """The template's own {% generation %} blocks, where it marks them (most templates do not)."""
    template = tokenizer.chat_template or ""
    if not isinstance(template, str) or not _GENERATION_TAG.search(template):
        return []
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(conversations=[conversation], chat_template=template,
                                        return_assistant_tokens_mask=True, **tokenizer.special_tokens_map)
    rendered, masks = result
    return [(int(start), int(end)) for start, end in masks[0]] if rendered[0] == text else []


def _content_spans(tokenizer: Any, conversation: Conversation, text: str) -> dict[int, tuple[int, int]]:
    """Message index -> (start, end) of its content in `text`."""
    marked = [{**message, "content": _MARK.format(i)} for i, message in enumerate(conversation)]
    skeleton = render(tokenizer, marked)
    spans = _align(skeleton, text, conversation)
    if spans is None:
        spans = _search(text, conversation)
    if spans is None:
        raise TemplateError("cannot find the messages in the rendered chat template: the template changes its "
                            "text depending on the content; set model.chat_template to a simpler template")
    return spans


def _align(skeleton: str, text: str, conversation: Conversation) -> dict[int, tuple[int, int]] | None:
    """Walk `text` along the skeleton: literal pieces must match exactly, markers take the content between."""
    pieces = _MARK_RE.split(skeleton)  # literal, index, literal, index, ..., literal
    literals, indices = pieces[0::2], [int(i) for i in pieces[1::2]]
    if not text.startswith(literals[0]):
        return None
    position = len(literals[0])
    spans: dict[int, tuple[int, int]] = {}
    for index, following in zip(indices, literals[1:]):
        content = conversation[index]["content"]
        length = _rendered_length(text, position, content, following)
        if length is None:
            return None
        spans.setdefault(index, (position, position + length))
        position += length + len(following)
    return spans if position == len(text) else None


def _rendered_length(text: str, position: int, content: str, following: str) -> int | None:
    """How many characters of `text` at `position` the template made out of `content` (as is, or trimmed)."""
    for candidate in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
        if text.startswith(candidate + following, position):
            return len(candidate)
    if following:
        found = text.find(following, position)
        return found - position if found >= 0 else None
    return None


def _search(text: str, conversation: Conversation) -> dict[int, tuple[int, int]] | None:
    """Fallback: find each message's (stripped) content in order."""
    spans: dict[int, tuple[int, int]] = {}
    position = 0
    for index, message in enumerate(conversation):
        content = message["content"].strip()
        found = text.find(content, position)
        if found < 0:
            if message["role"] == "assistant":
                return None
            continue  # a system prompt the template dropped or moved
        spans[index] = (found, found + len(content))
        position = found + len(content)
    return spans


def _special_tokens(tokenizer: Any) -> list[str]:
    """Special token strings, longest first, so that "<|im_end|>" wins over "<"."""
    tokens = set(tokenizer.all_special_tokens)
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    tokens.update(str(t) for t in added if getattr(t, "special", False))
    return sorted((t for t in tokens if t), key=len, reverse=True)


def _ends_with_special(text: str, end: int, special: list[str]) -> bool:
    return any(text.startswith(token, end - len(token)) for token in special if end >= len(token))


def _end_of_turn(text: str, content_end: int, special: list[str]) -> int | None:
    """End of the special token that closes the turn right after the content (after optional whitespace)."""
    start = content_end
    while start < len(text) and text[start].isspace():
        start += 1
    for token in special:
        if text.startswith(token, start):
            return start + len(token)
    return None


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the chat template closes an assistant turn with: what generation must stop at."""
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\ue002"}]
    try:
        text = render(tokenizer, conversation)
    except TemplateError:
        return None
    content_end = text.find("\ue002") + 1
    if content_end == 0:
        return None
    special = _special_tokens(tokenizer)
    end = _end_of_turn(text, content_end, special)
    if end is None:
        return None
    return next(token for token in special if text.startswith(token, end - len(token)))
