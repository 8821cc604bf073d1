"""Tool calls, tool results and reasoning, trained exactly as real families' chat templates render them.

The templates are the ones the models ship: Qwen3-0.6B's (the tools demo uses it too), and in
tests/data/chat_templates Llama-3.1-8B-Instruct's and Mistral-Nemo-Instruct-2407's, each with a tokenizer that has
the family's special and added tokens. For every turn of a multi-step tool conversation and of a reasoning
conversation, the trained text is asserted whole: what the model learns to write is exactly its think block, its
tool-call syntax, its answer and its end-of-turn token, and never the tools preamble, a tool result, or the user's
and system's text.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from tests.helpers import write_jsonl
from tuneterm.data.chat import render_for_training
from tuneterm.data.summary import summarise_source
from tuneterm.data.template import DEFAULT_CHAT_TEMPLATE, template_traits
from tuneterm.data.tokenize import encode_batch, trained_segments
from tuneterm.demo import TOOLS_TEMPLATE, build_tokenizer

TEMPLATES = Path(__file__).parent.parent / "data" / "chat_templates"

# family: (template file, special tokens, added (non-special) tokens, eos, bos)
FAMILIES = {
    "qwen3": (str(TOOLS_TEMPLATE), ["<|im_start|>", "<|im_end|>"],
              ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
              "<|im_end|>", None),
    "llama3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja",
                 ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
                  "<|python_tag|>"], [], "<|eot_id|>", "<|begin_of_text|>"),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja",
                     ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                      "[/TOOL_RESULTS]"], [], "</s>", "<s>"),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def call(city: str, call_id: str) -> dict:
    return {"type": "function", "id": call_id, "function": {"name": "get_weather", "arguments": {"city": city}}}


SYSTEM = {"role": "system", "content": "You are a weather assistant."}
QUESTION = {"role": "user", "content": "Weather in Paris and Rome?"}
RESULTS = [{"role": "tool", "tool_call_id": "call00001", "content": '{"temp": 21}'},
           {"role": "tool", "tool_call_id": "call00002", "content": '{"temp": 18}'}]
ANSWER = "Paris is 21°C, Rome 18°C."
TOOL_CONVERSATION: list[dict] = [
    SYSTEM, QUESTION,
    {"role": "assistant", "content": "", "reasoning_content": "I need both cities.",
     "tool_calls": [call("Paris", "call00001"), call("Rome", "call00002")]},
    *RESULTS,
    {"role": "assistant", "content": ANSWER, "reasoning_content": "Paris is warmer."},
]
CALLS_JSON = ['{"name": "get_weather", "arguments": {"city": "Paris"}}',
              '{"name": "get_weather", "arguments": {"city": "Rome"}}']


@functools.cache
def tokenizer_for(family: str):
    name, special, added, eos, bos = FAMILIES[family]
    template = (TEMPLATES / name).read_text(encoding="utf-8")
    corpus = [ANSWER, QUESTION["content"], SYSTEM["content"], *CALLS_JSON, "think reasoning cities warmer"] * 5
    tokenizer = build_tokenizer([*corpus, template], template, vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.add_tokens(added)
    tokenizer.add_special_tokens({"eos_token": eos, **({"bos_token": bos} if bos else {})})
    return tokenizer


def trained(family: str, conversation: list[dict], tools: list[dict] | None = None, reasoning: str = "auto"):
    """The trained text of each turn, from the labels (decoded) and from the character spans, which must agree."""
    tokenizer = tokenizer_for(family)
    rendered = render_for_training(tokenizer, conversation, "responses", tools, reasoning)
    [encoded] = encode_batch(tokenizer, [rendered])
    segments = trained_segments(tokenizer, encoded)
    assert segments == [rendered.text[start:end] for start, end in rendered.trained]
    return segments, rendered


def assert_never_trained(rendered, *texts: str) -> None:
    for text in texts:
        position = rendered.text.find(text)
        assert position >= 0, text
        assert not any(start < position + len(text) and position < end for start, end in rendered.trained), text


def test_qwen3_multi_step_tool_conversation_trains_reasoning_calls_and_answer_only() -> None:
    segments, rendered = trained("qwen3", TOOL_CONVERSATION, TOOLS)
    assert segments == [
        "<think>\nI need both cities.\n</think>\n\n"
        f"<tool_call>\n{CALLS_JSON[0]}\n</tool_call>\n<tool_call>\n{CALLS_JSON[1]}\n</tool_call><|im_end|>",
        f"<think>\nParis is warmer.\n</think>\n\n{ANSWER}<|im_end|>",
    ]
    assert_never_trained(rendered, "# Tools", '"description": "Current weather in a city"', '{"temp": 21}',
                         '{"temp": 18}', QUESTION["content"], SYSTEM["content"])
    assert rendered.dropped == () and rendered.thinking is True
    kinds = [(kind, rendered.text[start:end]) for kind, start, end in rendered.parts]
    assert ("tool result", '{"temp": 21}') in kinds and ("reasoning", "Paris is warmer.") in kinds
    assert ("tool call", f"<tool_call>\n{CALLS_JSON[0]}\n</tool_call>\n<tool_call>\n{CALLS_JSON[1]}\n</tool_call>") \
        in kinds


def test_llama31_tool_call_turn_is_its_json_and_end_of_turn() -> None:
    conversation: list[dict] = [
        SYSTEM, QUESTION, {"role": "assistant", "content": "", "tool_calls": [call("Paris", "c1")]},
        {"role": "tool", "content": '{"temp": 21}'}, {"role": "assistant", "content": ANSWER}]
    segments, rendered = trained("llama3.1", conversation, TOOLS)
    assert segments == ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', f"{ANSWER}<|eot_id|>"]
    # Llama 3.1 puts the tool schemas into the first user message: they are prompt, like the tool's result.
    assert_never_trained(rendered, "Given the following functions", '"required": [', "temp", QUESTION["content"])


def test_mistral_nemo_trains_the_tool_calls_token_and_the_calls() -> None:
    segments, rendered = trained("mistral-nemo", TOOL_CONVERSATION, TOOLS)
    assert segments == [
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"}, '
        '{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "call00002"}]</s>',
        f"{ANSWER}</s>",
    ]
    assert_never_trained(rendered, "[AVAILABLE_TOOLS]", "[TOOL_RESULTS]", '"call_id": "call00001"')
    assert rendered.dropped == ("reasoning",)  # Mistral's template has no place for reasoning


REASONING_TURNS: list[dict] = [
    {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4.", "reasoning_content": "Two and two."},
    {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6.", "reasoning_content": "Three twice."},
]


def test_qwen3_reasoning_is_trained_where_the_template_renders_it_and_its_loss_is_said() -> None:
    segments, rendered = trained("qwen3", REASONING_TURNS)
    # Qwen3 keeps only the reasoning after the last user message: the first reply is rendered without its own.
    assert segments == ["4.<|im_end|>", "<think>\nThree twice.\n</think>\n\n6.<|im_end|>"]
    assert rendered.dropped == ("reasoning",) and rendered.thinking is True
    assert "Two and two." not in rendered.text


def test_inline_think_blocks_render_as_the_templates_own_reasoning() -> None:
    inline = [*REASONING_TURNS[:3], {"role": "assistant", "content": "<think>\nThree twice.\n</think>\n\n6."}]
    assert trained("qwen3", inline)[0] == trained("qwen3", REASONING_TURNS)[0]


def test_reasoning_choices_render_as_the_model_is_asked() -> None:
    plain = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}]
    # No reasoning in the data: the no-think rendering, its empty think block in the prompt, not trained.
    segments, rendered = trained("qwen3", plain, reasoning="auto")
    assert segments == ["4.<|im_end|>"] and rendered.thinking is False
    assert "<think>\n\n</think>\n\n4." in rendered.text and not rendered.empty_thinking_trained
    # keep: thinking mode for every reply, so the empty block is trained, and that is flagged.
    segments, rendered = trained("qwen3", plain, reasoning="keep")
    assert segments == ["<think>\n\n</think>\n\n4.<|im_end|>"] and rendered.empty_thinking_trained
    # drop: reasoning the data holds is left out, and the reply rendered the no-think way.
    segments, rendered = trained("qwen3", REASONING_TURNS, reasoning="drop")
    assert segments == ["4.<|im_end|>", "6.<|im_end|>"] and rendered.thinking is False
    assert "Three twice." not in rendered.text and rendered.dropped == ()


def test_template_traits_are_found_by_rendering() -> None:
    qwen, llama = template_traits(tokenizer_for("qwen3")), template_traits(tokenizer_for("llama3.1"))
    assert qwen.renders_reasoning and qwen.thinking_switch
    assert qwen.generation_prompts == {True: "<|im_start|>assistant\n",
                                       False: "<|im_start|>assistant\n<think>\n\n</think>\n\n"}
    assert not llama.renders_reasoning and not llama.thinking_switch
    assert llama.generation_prompts == {None: "<|start_header_id|>assistant<|end_header_id|>\n\n"}
    assert template_traits(tokenizer_for("mistral-nemo")).generation_prompts == {None: ""}


# Records as files, read through the whole summary: refusals with their line, and what templates leave out.


def record(messages: list[dict], tools: list[dict] | None = None) -> dict:
    return {"messages": messages, **({"tools": tools} if tools else {})}


def summary_of(tmp_path: Path, rows: list[dict], family: str = "qwen3", tokenizer=None, **options):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    return summarise_source(str(path), tokenizer or tokenizer_for(family), **options)


def problems(summary) -> list[tuple[str, str]]:
    return [(p.location.where().rsplit(":", 1)[-1], p.message) for p in summary.invalid.items]


@pytest.mark.parametrize(("broken", "message"), [
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {"city": "Paris"}}}]},
     "messages[1].tool_calls[0] has no function name"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                        "arguments": "{city: Paris}"}}]},
     "messages[1].tool_calls[0].function.arguments must be an object as JSON: Expecting property name enclosed "
     "in double quotes at character 1"),
])
def test_a_broken_tool_call_is_refused_with_its_line_and_message(tmp_path, broken, message) -> None:
    good = record([QUESTION, {"role": "assistant", "content": ANSWER}])
    summary = summary_of(tmp_path, [good, record([QUESTION, broken, RESULTS[0], {"role": "assistant",
                                                                                 "content": ANSWER}])])
    [(line, text)] = problems(summary)
    assert line == "2" and message in text


def test_a_tool_result_without_a_call_is_refused(tmp_path) -> None:
    orphan = record([QUESTION, {"role": "assistant", "content": "Let me see."}, RESULTS[0],
                     {"role": "assistant", "content": ANSWER}])
    wrong_id = record([QUESTION, {"role": "assistant", "content": "", "tool_calls": [call("Paris", "call00009")]},
                       RESULTS[0], {"role": "assistant", "content": ANSWER}])
    summary = summary_of(tmp_path, [orphan, wrong_id])
    assert problems(summary) == [
        ("1", "messages[2] is a tool result with no tool call before it: a tool message follows an assistant "
              "message with 'tool_calls'"),
        ("2", "messages[2]: tool_call_id 'call00001' answers none of the calls waiting for a result ('call00009')"),
    ]


def test_sharegpt_function_roles_and_a_tools_column_map_onto_the_same_messages(tmp_path) -> None:
    row = {"conversations": [
        {"from": "human", "value": QUESTION["content"]},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": ANSWER}], "tools": json.dumps([TOOLS[0]["function"]])}
    from tuneterm.data.pipeline import read_examples

    path = write_jsonl(tmp_path / "sharegpt.jsonl", [row])
    report, examples = read_examples(str(path))
    [example] = list(examples)
    assert report.detection.format == "sharegpt"
    assert example.chat.tools == TOOLS
    assert example.chat.messages == [
        QUESTION, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}'}, {"role": "assistant", "content": ANSWER}]


def test_the_summary_counts_tool_and_reasoning_records_and_reasoning_tokens(tmp_path) -> None:
    rows = [record(TOOL_CONVERSATION, TOOLS), record(REASONING_TURNS),
            record([QUESTION, {"role": "assistant", "content": ANSWER}])]
    summary = summary_of(tmp_path, rows)
    holding = summary.encode.holding
    assert (holding["tool calls"], holding["tool results"], holding["tools"], holding["reasoning"]) == (1, 1, 1, 2)
    tokenizer = tokenizer_for("qwen3")
    reasoning_texts = ["I need both cities.", "Paris is warmer.", "Three twice."]
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in reasoning_texts)
    assert abs(summary.encode.reasoning_tokens - expected) <= len(reasoning_texts)  # merges at the edges
    [warning] = [f for f in summary.findings(strict=True) if "reasoning" in f.message]
    assert warning.level == "warning" and "in 1 of the 2 examples holding reasoning" in warning.message


def test_a_template_that_never_writes_tool_calls_stops_the_run_and_says_what_to_do(tmp_path) -> None:
    tokenizer = build_tokenizer([ANSWER, QUESTION["content"]] * 5, DEFAULT_CHAT_TEMPLATE, vocab_size=300)
    tokenizer.add_special_tokens({"eos_token": "</s>"})
    rows = [record(TOOL_CONVERSATION, TOOLS), record([QUESTION, {"role": "assistant", "content": ANSWER}])]
    summary = summary_of(tmp_path, rows, tokenizer=tokenizer)
    errors = [f for f in summary.findings(strict=True) if f.level == "error"]
    assert [e.message for e in errors] == [
        "the chat template does not write tool calls: 1 of the 1 examples holding tool calls would train a "
        "different conversation than the data holds. Use a model whose chat template renders tool calls, or set "
        "model.chat_template to one that does, or remove the tool calls from the data",
        "the chat template does not write tools: 1 of the 1 examples holding tools would train a different "
        "conversation than the data holds. Use a model whose chat template renders tools, or set "
        "model.chat_template to one that does, or remove the tools from the data"]
    assert errors[0].details[0].location.where().endswith("data.jsonl:1")
    assert summary.examples == 1  # the tool conversation is not trained as something else
    lenient = [f for f in summary.findings(strict=False) if "tool calls" in f.message]
    assert lenient[0].level == "warning" and lenient[0].message.endswith("they are left out (data.strict: false)")


def test_training_empty_think_blocks_is_warned_with_the_way_out(tmp_path) -> None:
    rows = [record([QUESTION, {"role": "assistant", "content": ANSWER}])]
    assert not any("empty think" in f.message for f in summary_of(tmp_path, rows).findings(strict=True))
    [warning] = [f for f in summary_of(tmp_path, rows, reasoning="keep").findings(strict=True)
                 if "empty think" in f.message]
    assert warning.message.startswith("1 examples train an empty think block (<think></think>) into the reply")
    assert "data.reasoning: auto" in warning.message


def test_the_tools_demo_data_holds_every_part_and_trains_both_modes(tmp_path) -> None:
    import random

    from tuneterm.config import load_config
    from tuneterm.data.prepare import prepare
    from tuneterm.demo import tool_conversations

    path = write_jsonl(tmp_path / "tools.jsonl", tool_conversations(random.Random(3407)))
    config = load_config(base={"model": {"path": str(tmp_path)}, "data": {"train": str(path)}})
    data = prepare(config, tokenizer_for("qwen3"), context_length=4096)
    source = data.summary.train
    assert not [f for f in data.view.findings if f.level == "error"], data.view.findings
    assert not any("empty think" in w or "leaves out" in w for w in data.warnings), data.warnings
    holding = source.encode.holding
    assert holding["tool calls"] == holding["tool results"] == holding["tools"] == 146
    assert source.encode.thinking[True] == holding["reasoning"] == 134 and source.encode.thinking[False] == 48
    assert data.thinking is True  # some examples were trained thinking: the chat asks in thinking mode
    assert source.encode.reasoning_tokens > 0


def test_the_chat_asks_in_the_mode_the_run_trained(tmp_path) -> None:
    from tuneterm.engine.after.generate import trained_thinking
    from tuneterm.engine.events import EVENTS_FILE, EventLog, RunStarted

    assert trained_thinking(tmp_path) is None  # no run there
    log = EventLog(tmp_path / EVENTS_FILE)
    for thinking in (True, False):  # a resumed run's start is the one that counts
        log(RunStarted(run_dir=str(tmp_path), config={}, defaulted=[], notes={}, train_examples=1, eval_examples=0,
                       steps_per_epoch=1, total_steps=1, trainable_params=1, total_params=1, device="cpu",
                       thinking=thinking))
    assert trained_thinking(tmp_path) is False
