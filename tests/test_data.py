"""The data layer: reading with locations, format normalisation, and response-only labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tuneterm.data.chat import DEFAULT_CHAT_TEMPLATE, render_for_training
from tuneterm.data.formats import detect_format, to_conversations
from tuneterm.data.prepare import load_conversations
from tuneterm.data.records import DataError, read_records
from tuneterm.data.tokenize import encode_batch, trained_segments
from tuneterm.demo import build_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama 3 style: BOS, header tokens around the role, <|eot_id|> after every turn, content trimmed.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Mistral [INST] style: no system role of its own (folded into the first user turn), EOS after each reply.
MISTRAL = ("{{ bos_token }}{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
           "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}[INST] "
           "{% if loop.first and system %}{{ system }}\n\n{% endif %}{{ m['content'] }} [/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
]
CORPUS = [m["content"] for m in CONVERSATION] * 5 + ["What is 2 plus 3?", "Spell hot backwards.",
                                                     "Assistant: The capital. Then The end."] * 3


def tokenizer_with(template: str, special: list[str], eos: str, bos: str | None = None):
    tokenizer = build_tokenizer(CORPUS, template, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.add_special_tokens({"eos_token": eos, **({"bos_token": bos} if bos else {})})
    return tokenizer


TEMPLATES = {
    "chatml": (CHATML, [], "<|im_end|>", None, "<|im_end|>"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|eot_id|>", "<|begin_of_text|>", "<|eot_id|>"),
    "mistral": (MISTRAL, ["[INST]", "[/INST]", "<s>", "</s>"], "</s>", "<s>", "</s>"),
    "default": (DEFAULT_CHAT_TEMPLATE, [], "<|im_end|>", None, "<|im_end|>"),
}


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_trained_segments_are_exactly_the_assistant_replies_and_end_of_turn(family: str) -> None:
    template, special, eos, bos, end_of_turn = TEMPLATES[family]
    tokenizer = tokenizer_with(template, special, eos, bos)
    rendered = render_for_training(tokenizer, CONVERSATION, "responses")
    [encoded] = encode_batch(tokenizer, [rendered])
    assert trained_segments(tokenizer, encoded) == [
        "The capital of France is Paris." + end_of_turn,
        "The capital of Italy is Rome." + end_of_turn,
    ]
    assert rendered.end_of_turn_trained


def test_template_without_end_of_turn_token_is_reported() -> None:
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer = tokenizer_with(plain, [], "<|im_end|>")
    rendered = render_for_training(tokenizer, CONVERSATION, "responses")
    assert not rendered.end_of_turn_trained
    [encoded] = encode_batch(tokenizer, [rendered])
    assert [s.strip() for s in trained_segments(tokenizer, encoded)] == ["The capital of France is Paris.",
                                                                         "The capital of Italy is Rome."]


def test_train_on_all_trains_every_token() -> None:
    tokenizer = tokenizer_with(CHATML, [], "<|im_end|>")
    [encoded] = encode_batch(tokenizer, [render_for_training(tokenizer, CONVERSATION, "all")])
    assert encoded.labels == encoded.input_ids


def test_jsonl_problems_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    path.write_text("\n".join([good, "{not json", good, '{"messages": [{"role": "user", "content": "hi"}]}',
                               '{"messages": [{"role": "robot", "content": "x"}]}']) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_conversations(str(path), "auto")
    problems = [str(p) for p in caught.value.problems]
    assert problems[0].startswith(f"{path}:2: malformed JSON")
    assert problems[1] == f"{path}:4: the conversation ends with a user turn; the last turn must be the assistant's " \
                          "reply to train on"
    assert problems[2] == f"{path}:5: messages[0]: unknown role 'robot'; expected one of system, user, assistant"
    assert "3 of 5 records are not valid messages data" in caught.value.summary


def test_alpaca_records_become_conversations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be exact."},
        {"instruction": "Add 2 and 3", "output": "5", "history": [["Hi", "Hello!"]]},
    ])
    records, problems = read_records(path)
    assert not problems
    detection = detect_format(records)
    assert detection.format == "alpaca" and "instruction" in detection.evidence
    conversations, wheres, invalid = to_conversations(records, "alpaca")
    assert not invalid and wheres == [f"{path}:1", f"{path}:2"]
    assert conversations[0] == [{"role": "system", "content": "Be exact."},
                                {"role": "user", "content": "Translate\n\nbonjour"},
                                {"role": "assistant", "content": "hello"}]
    assert [m["role"] for m in conversations[1]] == ["user", "assistant", "user", "assistant"]


def test_unrecognised_columns_are_listed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    records, _ = read_records(path)
    with pytest.raises(DataError, match="Columns found: question \\(1/1\\), answer \\(1/1\\)"):
        detect_format(records)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        read_records(empty)
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


def test_a_token_that_straddles_template_and_reply_is_trained() -> None:
    # "Assistant: " + "The..." tokenises as "Assistant", ":", " The": the space is template text, "The" the reply.
    template = ("{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}"
                "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}")
    tokenizer = tokenizer_with(template, [], "<|im_end|>")
    rendered = render_for_training(tokenizer, CONVERSATION, "responses")
    [encoded] = encode_batch(tokenizer, [rendered])
    first_trained = next(i for i, label in enumerate(encoded.labels) if label != -100)
    assert tokenizer.decode([encoded.input_ids[first_trained]]) == " The"
    assert trained_segments(tokenizer, encoded) == [" The capital of France is Paris.<|im_end|>",
                                                    " The capital of Italy is Rome.<|im_end|>"]
