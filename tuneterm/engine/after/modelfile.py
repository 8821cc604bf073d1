"""An Ollama Modelfile whose TEMPLATE writes what the run's own chat template writes.

Ollama does not run Jinja: a Modelfile carries its chat template as a Go template over `.Messages`. Rather than
guess a family from a name, the template the run trained with is read by rendering it: each message's content is
replaced by a marker, and the text around the markers gives what the template writes before and after a system,
user and assistant message, what it writes before the first message (a BOS token) and when no system message is
given (a default system prompt, which becomes the Modelfile's SYSTEM), and its generation prompt. That reading is
then checked: the conversations below, with and without a system prompt, one to three turns, with and without a
generation prompt, must render exactly as the turn-by-turn pieces put together. A template that does anything else
(folds the system prompt into a user turn, writes the last turn differently, has no generation prompt) cannot be
expressed this way, and the Modelfile is refused with the difference, never guessed.

The BOS token is left out of TEMPLATE when llama.cpp adds it by itself (the GGUF's tokenizer.ggml.add_bos_token),
so that a prompt does not start with two. A template that trims whitespace around messages (Llama 3's) is
expressed all the same, with a note: Ollama passes messages as they are, so only a message that starts or ends with
whitespace renders differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuneterm.errors import ExportError

Messages = list[dict[str, str]]
Render = Callable[[Messages, bool], str]
"""render(messages, add_generation_prompt): the chat template's text for a conversation."""

ROLES = ("system", "user", "assistant")
MODELFILE = "Modelfile"


class TemplateNotExpressible(ExportError):
    """The chat template does something an Ollama TEMPLATE over .Messages cannot write."""


@dataclass(frozen=True)
class ChatFormat:
    """The chat template read turn by turn."""

    start: str
    """Written once before the first message (a BOS token), or ""."""
    around: dict[str, tuple[str, str]]
    """Per role, the text before and after its content."""
    generation_prompt: str
    default_system: str | None
    """The system prompt the template writes when the conversation has none."""
    trims: bool
    """It strips whitespace around each message's content."""

    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        """The conversation as these pieces write it: what the template must write too."""
        if self.default_system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        text = self.start
        for message in messages:
            before, after = self.around[message["role"]]
            content = message["content"].strip() if self.trims else message["content"]
            text += before + content + after
        return text + (self.generation_prompt if add_generation_prompt else "")


def _marker(index: int) -> str:
    return f"\ue000{index}\ue001"


def read_chat_format(render: Render, bos_token: str | None) -> ChatFormat:
    """The template's pieces, checked on the conversations of `_CHECKED`; TemplateNotExpressible when it cannot be
    written turn by turn."""
    def rendered(roles: str, generation: bool = False) -> str:
        messages = [{"role": ROLES["sua".index(r)], "content": _marker(i)} for i, r in enumerate(roles)]
        try:
            return render(messages, generation)
        except Exception as exc:  # noqa: BLE001 - jinja raises its own errors, and templates call raise_exception()
            raise TemplateNotExpressible(f"the chat template cannot render a conversation of {_roles_text(roles)}: "
                                         f"{exc}") from None

    def pieces(text: str, count: int) -> list[str]:
        parts, rest = [], text
        for index in range(count):
            head, found, rest = rest.partition(_marker(index))
            if not found:
                raise TemplateNotExpressible("the chat template does not write each message's content as it is "
                                             "given (it changes or drops some): Ollama's template cannot do that")
            parts.append(head)
        return [*parts, rest]

    user_only = pieces(rendered("u"), 1)
    user_after = user_only[1]
    _, between_ua, assistant_after = pieces(rendered("ua"), 2)
    _, _, between_au, _ = pieces(rendered("uau"), 3)
    system_start, between_su, _ = pieces(rendered("su"), 2)
    if not between_ua.startswith(user_after):
        raise TemplateNotExpressible("the chat template writes a user message differently when an answer follows")
    assistant_before = between_ua[len(user_after):]
    if not between_au.startswith(assistant_after):
        raise TemplateNotExpressible("the chat template writes an answer differently when another message follows")
    user_before = between_au[len(assistant_after):]
    if not between_su.endswith(user_before):
        raise TemplateNotExpressible("the chat template writes the first user message differently after a system "
                                     "prompt (it folds the system prompt into it)")
    start = bos_token if bos_token and system_start.startswith(bos_token) else ""
    system_before, system_after = system_start[len(start):], between_su[:len(between_su) - len(user_before)]
    without_system = user_only[0][len(start):]
    default_system = None
    if without_system != user_before:
        block = without_system[:len(without_system) - len(user_before)] if without_system.endswith(user_before) \
            else None
        if block is None or not (block.startswith(system_before) and block.endswith(system_after)):
            raise TemplateNotExpressible(f"the chat template writes {without_system!r} before the first user message "
                                         "when there is no system prompt, which is not a system message")
        default_system = block[len(system_before):len(block) - len(system_after)]
    generation_prompt = rendered("u", True)[len(rendered("u")):]
    if not generation_prompt:
        raise TemplateNotExpressible("the chat template writes no generation prompt (nothing opens the answer), so "
                                     "Ollama would not know where the answer starts")
    trims = " \ue000x\ue001 " not in render([{"role": "user", "content": " \ue000x\ue001 "}], False)
    found = ChatFormat(start, {"system": (system_before, system_after), "user": (user_before, user_after),
                               "assistant": (assistant_before, assistant_after)}, generation_prompt, default_system,
                       trims)
    for roles, generation in _CHECKED:
        messages = [{"role": ROLES["sua".index(r)], "content": text} for r, text in zip(roles, _TEXTS)]
        expected, actual = found.render(messages, generation), render(messages, generation)
        if expected != actual:
            at = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
            raise TemplateNotExpressible(
                f"the chat template writes a conversation of {_roles_text(roles)} differently from one message at a "
                f"time: at character {at} it writes {actual[at:at + 40]!r} where the turn-by-turn pieces give "
                f"{expected[at:at + 40]!r}")
    return found


_TEXTS = ("Be brief.", "What is 2 + 2?", "4.", "And 3 + 3?", "6.", "Thanks!")
_CHECKED = [("u", True), ("su", True), ("ua", False), ("sua", False), ("uau", True), ("suaua", False),
            ("suauau", True)]


def _roles_text(roles: str) -> str:
    return ", ".join(ROLES["sua".index(r)] for r in roles)


def go_template(chat: ChatFormat, llama_cpp_adds_bos: bool) -> str:
    """The Go template Ollama renders over .Messages (system messages included, in place): each message in its
    role's pieces, and the generation prompt after the last one unless it is an answer being continued."""
    def text(piece: str) -> str:
        return piece.replace("{{", '{{ "{{" }}')

    start = "" if llama_cpp_adds_bos else chat.start
    branches = []
    for index, role in enumerate(ROLES):
        before, after = chat.around[role]
        content = "{{ .Content }}"
        closing = text(after) if role != "assistant" else f"{{{{ if not $last }}}}{text(after)}{{{{ end }}}}"
        branches.append(f'{{{{ {"if" if index == 0 else "else if"} eq .Role "{role}" }}}}{text(before)}'
                        f"{content}{closing}")
    return (f"{text(start)}{{{{ range $i, $_ := .Messages }}}}{{{{ $last := eq (len (slice $.Messages $i)) 1 }}}}"
            f"{''.join(branches)}{{{{ end }}}}{{{{ if and $last (ne .Role \"assistant\") }}}}"
            f"{text(chat.generation_prompt)}{{{{ end }}}}{{{{ end }}}}")


def modelfile_text(gguf_name: str, chat: ChatFormat, stops: list[str], llama_cpp_adds_bos: bool) -> str:
    """The Modelfile: the GGUF beside it, the template, the default system prompt, and a stop parameter for each
    token that ends an answer (the template's end of turn first)."""
    template = go_template(chat, llama_cpp_adds_bos)
    for name, value in (("TEMPLATE", template), ("SYSTEM", chat.default_system or "")):
        if '"""' in value:
            raise TemplateNotExpressible(f'the chat template\'s {name.lower()} text contains """, which ends a '
                                         "Modelfile's quoted value")
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', ""]
    if chat.default_system is not None:
        lines += [f'SYSTEM """{chat.default_system}"""', ""]
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in dict.fromkeys(stops)]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
