"""What a model's chat template does, found by asking it: rendering, its end of turn, and its traits.

Templates differ in what they read from a message: some render an assistant's `reasoning_content`, some have a
thinking switch (`enable_thinking`, as Qwen3's hybrid templates do), some write a generation prompt before the
assistant's text and some write none. Nothing here guesses that from the template's source or from the model's
name: a few probe conversations are rendered once per template, and what comes out is the answer. Masking
(chat.py) and everything that prompts a trained model (the chat, the stop check) render through `render` with
the same arguments, so a conversation is rendered the same way for training and at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

_PROBE_ANSWER, _PROBE_REASONING = "\ue002", "\ue003"

TemplateKey = tuple[str, str, int]


class TemplateError(ValueError):
    """The chat template cannot render this conversation, or its output cannot be aligned with the messages."""


def render(tokenizer: Any, conversation: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
           thinking: bool | None = None, generation_prompt: bool = False) -> str:
    """The conversation as the template writes it; `thinking` is passed as `enable_thinking` when it is set (only
    for templates with the switch: see TemplateTraits).

    What `tokenizer.apply_chat_template(conversation, tokenize=False, ...)` returns, rendered by the function it
    calls: the messages here are plain dicts already, so its conversion of message objects (a deep copy, 40% of
    its time) has nothing to do; keys set to None are dropped as it drops them."""
    from transformers.utils.chat_template_utils import render_jinja_template

    variables: dict[str, Any] = dict(tokenizer.special_tokens_map)
    if thinking is not None:
        variables["enable_thinking"] = thinking
    messages = [{key: value for key, value in message.items() if value is not None} for message in conversation]
    schemas: Any = tools or None
    try:
        result: Any = render_jinja_template(conversations=[messages], tools=schemas,
                                            chat_template=tokenizer.get_chat_template(None, schemas),
                                            add_generation_prompt=generation_prompt, **variables)
    except Exception as exc:  # jinja raises its own errors, and templates call raise_exception()
        raise TemplateError(f"the chat template cannot render this conversation: {exc}") from None
    text: str = result[0][0]
    return text


def special_tokens(tokenizer: Any) -> list[str]:
    """Special token strings, longest first, so that "<|im_end|>" wins over "<"."""
    tokens = set(tokenizer.all_special_tokens)
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    tokens.update(str(t) for t in added if getattr(t, "special", False))
    return sorted((t for t in tokens if t), key=len, reverse=True)


def special_after(text: str, position: int, special: Sequence[str]) -> int | None:
    """End of the special token that follows `position` (after optional whitespace), if one does."""
    start = position
    while start < len(text) and text[start].isspace():
        start += 1
    for token in special:
        if text.startswith(token, start):
            return start + len(token)
    return None


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the chat template closes an assistant turn with: what generation must stop at."""
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        text = render(tokenizer, conversation)
    except TemplateError:
        return None
    content_end = text.find(_PROBE_ANSWER) + 1
    if content_end == 0:
        return None
    special = special_tokens(tokenizer)
    end = special_after(text, content_end, special)
    if end is None:
        return None
    return next(token for token in special if text.startswith(token, end - len(token)))


@dataclass(frozen=True)
class TemplateTraits:
    """What one chat template does with reasoning and where an assistant's own text starts."""

    renders_reasoning: bool
    """It writes an assistant message's `reasoning_content` (Qwen3, DeepSeek V3.1, GLM...); others drop it."""
    thinking_switch: bool
    """`enable_thinking` changes what it writes: a hybrid reasoning template."""
    generation_prompts: dict[bool | None, str]
    """What it writes after the conversation to ask for the assistant's turn, for each `thinking` value it takes
    (None alone without a switch): the text before the assistant's own; "" for templates that write none."""
    closing: tuple[str, ...]
    """The special tokens that end an assistant turn (its end of turn and EOS)."""
    special: tuple[str, ...] = ()
    """The tokenizer's special tokens, longest first (special_tokens)."""
    key: TemplateKey = ("", "", 0)
    """The template and tokens probed (template_key)."""

    def thinking_for(self, choice: str, has_reasoning: bool) -> bool | None:
        """`enable_thinking` for a conversation under data.reasoning (None: the template has no switch)."""
        if not self.thinking_switch:
            return None
        return {"keep": True, "drop": False}.get(choice, has_reasoning)


_TRAITS: dict[TemplateKey, TemplateTraits] = {}


def template_key(tokenizer: Any) -> TemplateKey:
    """What a rendering depends on besides the conversation: the template, the special tokens it can write, and
    how many tokens the tokenizer has (a token added changes what is special)."""
    return str(tokenizer.chat_template), repr(sorted(tokenizer.special_tokens_map.items())), len(tokenizer)


def template_traits(tokenizer: Any) -> TemplateTraits:
    """The traits of the tokenizer's chat template, probed once per template and tokens."""
    key = template_key(tokenizer)
    if key not in _TRAITS:
        _TRAITS[key] = _probe(tokenizer, key)
    return _TRAITS[key]


def _probe(tokenizer: Any, key: TemplateKey) -> TemplateTraits:
    source = str(tokenizer.chat_template or "")
    question = [{"role": "user", "content": "Hi"}]
    answered = [*question, {"role": "assistant", "content": _PROBE_ANSWER, "reasoning_content": _PROBE_REASONING}]
    try:
        renders_reasoning = _PROBE_REASONING in render(tokenizer, answered)
    except TemplateError:
        renders_reasoning = False
    prompts: dict[bool | None, str] = {None: _generation_prompt(tokenizer, question, None)}
    if "enable_thinking" in source:
        on, off = (_generation_prompt(tokenizer, question, value) for value in (True, False))
        if on != off:
            prompts = {True: on, False: off}
    closing = [token for token in (end_of_turn_token(tokenizer), tokenizer.eos_token) if token]
    return TemplateTraits(renders_reasoning, len(prompts) > 1, prompts, tuple(dict.fromkeys(closing)),
                          tuple(special_tokens(tokenizer)), key)


def _generation_prompt(tokenizer: Any, question: list[dict[str, Any]], thinking: bool | None) -> str:
    try:
        asked = render(tokenizer, question, thinking=thinking, generation_prompt=True)
        plain = render(tokenizer, question, thinking=thinking)
    except TemplateError:
        return ""
    return asked[len(plain):] if asked.startswith(plain) else ""
