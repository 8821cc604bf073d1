"""The Ollama Modelfile's TEMPLATE read from the chat template a run trained with, for the real templates of two
families, and refused for templates that cannot be written one message at a time.

The expected TEMPLATE texts below were rendered by Go's text/template (the engine Ollama runs) over the same
conversations and gave exactly what transformers renders with the Jinja template.
"""

from __future__ import annotations

import pytest

from tests.unit.test_templates import FAMILIES, make_tokenizer
from tuneterm.engine.after.modelfile import TemplateNotExpressible, modelfile_text, read_chat_format

# Qwen2.5-Instruct's template as its tokenizer_config.json has it: ChatML, with tools and a default system prompt.
QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
# Meta-Llama-3-8B-Instruct's template as its tokenizer_config.json has it.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2 + 2?"}],
]


def chat_format(template: str, special: list[str], eos: str, bos: str | None):
    tokenizer = make_tokenizer(template, special, eos, bos)

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    return read_chat_format(render, tokenizer.bos_token), render


def test_chatml_of_qwen25_gives_its_turns_its_default_system_prompt_and_its_end_of_turn() -> None:
    chat, render = chat_format(QWEN25, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None)
    for conversation in CONVERSATIONS:
        assert chat.render(conversation, True) == render(conversation, True)
    assert chat.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert modelfile_text("run-q8_0.gguf", chat, ["<|im_end|>", "<|endoftext|>"], llama_cpp_adds_bos=False) == (
        "FROM ./run-q8_0.gguf\n\n"
        'TEMPLATE """{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}'
        '{{ end }}{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}{{ end }}"""\n\n'
        'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""\n\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n')


@pytest.mark.parametrize("adds_bos", [True, False], ids=["llama.cpp-adds-bos", "bos-in-template"])
def test_llama3_keeps_its_headers_and_writes_bos_once(adds_bos: bool) -> None:
    chat, render = chat_format(LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                        "<|eot_id|>"], "<|eot_id|>", "<|begin_of_text|>")
    for conversation in CONVERSATIONS:
        assert chat.render(conversation, True) == render(conversation, True)
    assert chat.start == "<|begin_of_text|>" and chat.default_system is None and chat.trims
    text = modelfile_text("run-q4_k_m.gguf", chat, ["<|eot_id|>"], llama_cpp_adds_bos=adds_bos)
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.startswith("{{ range") if adds_bos else template.startswith("<|begin_of_text|>{{ range")
    assert ('{{ else if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
            in template)
    assert template.endswith('{{ if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>'
                             "\n\n{{ end }}{{ end }}")
    assert "SYSTEM" not in text and text.endswith('PARAMETER stop "<|eot_id|>"\n')


@pytest.mark.parametrize(("family", "reason"), [
    ("gemma", "folds the system prompt into"),
    ("mistral", "changes or drops some"),
])
def test_templates_that_cannot_be_written_turn_by_turn_are_refused(family: str, reason: str) -> None:
    template, special, eos, bos, _ = FAMILIES[family]
    with pytest.raises(TemplateNotExpressible, match=reason):
        chat_format(template, special, eos, bos)


def test_a_template_without_a_generation_prompt_is_refused() -> None:
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    with pytest.raises(TemplateNotExpressible, match="no generation prompt"):
        chat_format(template, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None)
