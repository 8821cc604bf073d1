"""Response-only masking against chat templates written in the style of real model families, and against
templates generated at random: the trained text must be exactly each assistant reply plus its end-of-turn token.
"""

from __future__ import annotations

import random

import pytest

from tuneterm.data.chat import RenderedConversation, render_for_training
from tuneterm.data.template import DEFAULT_CHAT_TEMPLATE
from tuneterm.data.tokenize import encode_batch, trained_segments
from tuneterm.demo import build_tokenizer

SYSTEM = {"role": "system", "content": "Answer briefly."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
]
REPLIES = [TURNS[1]["content"], TURNS[3]["content"]]

# Each family: (template, special tokens, eos, bos, end-of-turn token written after a reply).
FAMILIES = {
    # Llama 3.1: header tokens, a default system block when none is given, content trimmed, <|eot_id|>.
    "llama3": ("{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|start_header_id|>system<|end_header_id|>"
               "\n\nCutting Knowledge Date: December 2023<|eot_id|>{% endif %}{% for message in messages %}"
               "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}"
               "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
               "{% endif %}",
               ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>",
               "<|begin_of_text|>", "<|eot_id|>"),
    # ChatML as Qwen 2.5 writes it, with its default system prompt.
    "chatml": ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
               "You are a helpful assistant.<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>"
               "{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
               "<|im_start|>assistant\n{% endif %}",
               ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|im_end|>"),
    # Gemma 2/3: the assistant is "model", the system prompt is folded into the first user turn.
    "gemma": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
              "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
              "{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' "
              "else message['role'] %}<start_of_turn>{{ role }}\n{{ (prefix if loop.first else '') + "
              "(message['content'] | trim) }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}"
              "<start_of_turn>model\n{% endif %}",
              ["<start_of_turn>", "<end_of_turn>", "<bos>"], "<eos>", "<bos>", "<end_of_turn>"),
    # Gemma 1: refuses the system role outright (tuneterm folds it into the first user turn itself).
    "gemma1": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
               "{% endif %}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else "
               "message['role'] %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
               ["<start_of_turn>", "<end_of_turn>", "<bos>"], "<eos>", "<bos>", "<end_of_turn>"),
    # Mistral v0.3: [INST] ... [/INST] with no generation prompt, the system prompt in the last user turn,
    # " " + reply + </s>.
    "mistral": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
                "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
                "{% for message in loop_messages %}{% if message['role'] == 'user' %}{% if system is defined and "
                "loop.index0 == loop_messages | length - 2 %}[INST] {{ system }}\n\n{{ message['content'] }}[/INST]"
                "{% else %}[INST] {{ message['content'] }}[/INST]{% endif %}{% else %}{{ ' ' + message['content'] }}"
                "{{ eos_token }}{% endif %}{% endfor %}",
                ["[INST]", "[/INST]"], "</s>", "<s>", "</s>"),
    # Phi-3: role tokens, <|end|> after every turn, EOS at the very end.
    "phi3": ("{% for message in messages %}{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}<|end|>\n"
             "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}<|end|>\n{% else %}<|assistant|>\n"
             "{{ message['content'] }}<|end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n"
             "{% else %}{{ eos_token }}{% endif %}",
             ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|endoftext|>", None, "<|end|>"),
    # A plain-text template: no special tokens at all but EOS after each reply.
    "plain": ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% elif m['role'] == "
              "'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% else %}{{ m['content'] }}\n\n{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
              [], "</s>", None, "</s>"),
    # tuneterm's default for base models without a template.
    "default": (DEFAULT_CHAT_TEMPLATE, [], "</s>", None, "</s>"),
    # DeepSeek: non-ASCII special tokens, the system prompt as bare text.
    "deepseek": ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
                 "{% elif message['role'] == 'user' %}<｜User｜>{{ message['content'] }}{% else %}<｜Assistant｜>"
                 "{{ message['content'] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}{% if add_generation_prompt %}"
                 "<｜Assistant｜>{% endif %}",
                 ["<｜User｜>", "<｜Assistant｜>"], "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>",
                 "<｜end▁of▁sentence｜>"),
    # A template that marks what to train with {% generation %} blocks.
    "generation": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
                   "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}"
                   "<|im_end|>{% endif %}\n{% endfor %}",
                   ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|im_end|>"),
}


def corpus_for(template: str) -> list[str]:
    words = [m["content"] for m in [SYSTEM, *TURNS]] + ["Cutting Knowledge Date: December 2023", "User: Assistant: "]
    return words * 5 + [template]


def make_tokenizer(template: str, special: list[str], eos: str, bos: str | None):
    tokenizer = build_tokenizer(corpus_for(template), template, vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.add_special_tokens({"eos_token": eos, **({"bos_token": bos} if bos else {})})
    return tokenizer


def trained_text(tokenizer, conversation: list[dict]) -> tuple[list[str], RenderedConversation]:
    rendered = render_for_training(tokenizer, conversation, "responses")
    [encoded] = encode_batch(tokenizer, [rendered])
    return trained_segments(tokenizer, encoded), rendered


def assert_exactly_replies(segments: list[str], replies: list[str], end_of_turn: str) -> None:
    """Each segment is one reply and its end-of-turn token; only a space the template put before the reply may
    ride along, when BPE merges it into the reply's first token."""
    assert len(segments) == len(replies), segments
    for segment, reply in zip(segments, replies):
        assert segment.lstrip(" ") == reply + end_of_turn, segment
        assert len(segment) - len(segment.lstrip(" ")) <= 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_multi_turn_trained_text_is_exactly_the_replies(family: str, with_system: bool) -> None:
    template, special, eos, bos, end_of_turn = FAMILIES[family]
    tokenizer = make_tokenizer(template, special, eos, bos)
    conversation = ([SYSTEM] if with_system else []) + TURNS
    segments, rendered = trained_text(tokenizer, conversation)
    assert_exactly_replies(segments, REPLIES, end_of_turn)
    assert rendered.end_of_turn_trained
    assert rendered.system_folded == (family == "gemma1" and with_system)
    if with_system:
        assert SYSTEM["content"] in rendered.text  # the system prompt is kept, whatever the template does with it


def test_a_template_that_alters_earlier_replies_trains_what_it_renders() -> None:
    # Qwen3 style: the reasoning of earlier assistant turns is dropped from the rendered conversation.
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not loop.last %}"
                "{{ m['content'].split('</think>')[-1].lstrip('\\n') }}{% else %}{{ m['content'] }}{% endif %}"
                "<|im_end|>\n{% endfor %}")
    tokenizer = make_tokenizer(template, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None)
    conversation = [TURNS[0], {"role": "assistant", "content": "<think>\nFrance.\n</think>\n" + REPLIES[0]},
                    TURNS[2], {"role": "assistant", "content": "<think>\nItaly.\n</think>\n" + REPLIES[1]}]
    segments, _ = trained_text(tokenizer, conversation)
    assert segments == [REPLIES[0] + "<|im_end|>", "<think>\nItaly.\n</think>\n" + REPLIES[1] + "<|im_end|>"]


def test_a_template_with_no_end_of_turn_token_is_reported() -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer = make_tokenizer(template, [], "</s>", None)
    segments, rendered = trained_text(tokenizer, TURNS)
    assert not rendered.end_of_turn_trained
    assert [s.strip() for s in segments] == REPLIES


def test_train_on_all_trains_every_token() -> None:
    template, special, eos, bos, _ = FAMILIES["chatml"]
    tokenizer = make_tokenizer(template, special, eos, bos)
    [encoded] = encode_batch(tokenizer, [render_for_training(tokenizer, TURNS, "all")])
    assert (encoded.labels == encoded.input_ids).all()


# Templates the tests never saw: role headers, separators, end-of-turn tokens, BOS, trimming and system handling
# drawn at random, rendered and checked by the same rule.
HEADERS = [("<|u|>", "<|a|>", "<|s|>"), ("### User:\n", "### Assistant:\n", "### System:\n"),
           ("[USER] ", "[BOT] ", "[SYS] "), ("<｜問｜>", "<｜答｜>", "<｜系｜>"), ("Human: ", "AI: ", "Context: "),
           ("<start>user\n", "<start>bot\n", "<start>system\n")]
ENDS = ["<|end|>", "</turn>", "<｜终｜>", "<eot>"]
SEPARATORS = ["", "\n", "\n\n", " "]


def random_template(rng: random.Random) -> tuple[str, list[str], str]:
    user, assistant, system = rng.choice(HEADERS)
    end, separator = rng.choice(ENDS), rng.choice(SEPARATORS)
    content = "message['content'] | trim" if rng.random() < 0.5 else "message['content']"
    fold = rng.random() < 0.4
    parts = ["{{ bos_token }}" if rng.random() < 0.5 else ""]
    if fold:
        parts.append("{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n' %}"
                     "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = "
                     "messages %}{% endif %}")
    else:
        parts.append("{% set prefix = '' %}{% set loop_messages = messages %}")
    parts.append("{% for message in loop_messages %}"
                 f"{{% if message['role'] == 'user' %}}{user}{{{{ (prefix if loop.first else '') + ({content}) }}}}"
                 f"{separator}"
                 f"{{% elif message['role'] == 'system' %}}{system}{{{{ {content} }}}}{separator}"
                 f"{{% else %}}{assistant}{{{{ {content} }}}}{end}{separator}{{% endif %}}{{% endfor %}}")
    special = [t for t in (user, assistant, system) if t.startswith("<")] + [end]
    return "".join(parts), special, end


@pytest.mark.parametrize("seed", range(24))
def test_generated_templates(seed: int) -> None:
    rng = random.Random(seed)
    template, special, end = random_template(rng)
    tokenizer = make_tokenizer(template, special, end, "<bos>" if "bos_token" in template else None)
    for conversation in ([SYSTEM, *TURNS], TURNS, TURNS[:2]):
        segments, rendered = trained_text(tokenizer, conversation)
        replies = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert_exactly_replies(segments, replies, end)
        assert rendered.end_of_turn_trained


def test_generation_blocks_decide_what_is_trained_where_a_template_has_them() -> None:
    # The block also covers template text ("<think></think>" that the model must learn to write before replying).
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
                "{% generation %}<think></think>{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}"
                "{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}")
    tokenizer = make_tokenizer(template, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], "<|im_end|>", None)
    segments, _ = trained_text(tokenizer, TURNS)
    assert segments == [f"<think></think>{reply}<|im_end|>" for reply in REPLIES]
