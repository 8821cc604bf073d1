"""The built-in demo: a real fine-tuning run that needs no network, no GPU and no download.

It builds, once, a tiny Llama-architecture model with a real byte-level BPE tokenizer (trained with the
`tokenizers` library on the demo corpus) and a ChatML chat template, and a small chat dataset of short
question-and-answer conversations with a held-out eval file. Everything is cached under the user's cache
directory (TUNETERM_CACHE_DIR overrides it). Training a LoRA adapter on it takes a minute or two on a CPU and
the eval loss falls visibly: the whole pipeline (data, masking, trainer, events, checkpoints, adapter check)
runs for real, only small.

The model is trained from scratch on the demo's own text for a few seconds, not a pretrained LLM, so its
learning rate is far higher than the 2e-4 the guides recommend for those (the advice says why it does not apply
here); the demo config says so where it sets it.

`tuneterm demo --tools` is its agent-style twin: a model of the same size whose tokenizer carries Qwen3's chat
template (templates/qwen3.jinja, the one the Qwen3 models ship: it renders tools, tool calls, tool results and
think blocks, and has a thinking switch) and Qwen3's think and tool-call tags, and data that calls a calculator
and a capitals tool (OpenAI-style tool_calls, tool results, a tools list per record), with reasoning
(reasoning_content) in some replies.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tuneterm.cache import cache_root

DEMO_VERSION = "v2"
TOOLS_DEMO_VERSION = "v1"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Kenya": "Nairobi", "Egypt": "Cairo",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Peru": "Lima", "Chile": "Santiago",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens",
    "Turkey": "Ankara", "Iran": "Tehran", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Australia": "Canberra",
    "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest", "Cuba": "Havana", "Ghana": "Accra",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "early": "late", "light": "dark", "open": "closed",
    "happy": "sad", "full": "empty", "strong": "weak", "loud": "quiet", "high": "low", "wet": "dry",
    "young": "old", "hard": "soft", "rich": "poor", "thick": "thin", "near": "far", "clean": "dirty",
}
SYSTEM_PROMPTS = ["You are a concise assistant.", "Answer in one short sentence."]
TOOLS_TEMPLATE = Path(__file__).parent / "templates" / "qwen3.jinja"
QWEN3_TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
"""Tags Qwen3's tokenizer has as tokens of their own (added, not special: they are text the model writes)."""
TOOLS = [
    {"type": "function", "function": {
        "name": "add", "description": "Add two whole numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
    {"type": "function", "function": {
        "name": "capital_of", "description": "The capital city of a country.",
        "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}}},
]


def _demo_path(tools: bool) -> Path:
    return cache_root() / (f"demo-tools-{TOOLS_DEMO_VERSION}" if tools else f"demo-{DEMO_VERSION}")


def built_demo_dir(tools: bool = False) -> Path | None:
    """The demo's directory (the tools demo's with `tools`) when it has been built already."""
    target = _demo_path(tools)
    return target if (target / "model" / "config.json").is_file() else None


def demo_dir(tools: bool = False) -> Path:
    """The demo's model and data (the tools demo's with `tools`), built on first use."""
    target = _demo_path(tools)
    if built_demo_dir(tools) is not None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        build_demo(staging, tools)
        try:
            staging.rename(target)
        except OSError:  # another process finished building first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def demo_config(directory: Path) -> dict[str, Any]:
    """The run config of a demo directory (either demo's)."""
    return {
        "method": "lora",
        "model": {"path": str(directory / "model")},
        "data": {"train": str(directory / "data" / "train.jsonl"), "eval": str(directory / "data" / "eval.jsonl")},
        "lora": {"r": 16, "lora_alpha": 32},
        "training": {
            # A model trained from scratch takes a far higher rate than the 2e-4 for pretrained LLMs: its best eval
            # loss is 1.47 at 3e-3 and 2.05 at 2e-4 (tuneterm demo --headless --set training.learning_rate=2e-4).
            "learning_rate": 3e-3,
            "num_train_epochs": 3,
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "gradient_checkpointing": False,
            "eval_interval_epochs": 0.2,
        },
    }


def build_demo(directory: Path, tools: bool = False) -> None:
    rng = random.Random(3407)
    if tools:
        rows = tool_conversations(rng)
        train, evaluation = rows[len(rows) // 10:], rows[:len(rows) // 10]
    else:
        train, evaluation = ([{"messages": messages} for messages in part] for part in conversations(rng))
    (directory / "data").mkdir(parents=True)
    for name, part in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        with open(directory / "data" / name, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in part)
    corpus = [str(message.get("content") or message.get("reasoning_content"))
              for row in train + evaluation for message in row["messages"]]
    if tools:  # the template's own text and the tool schemas, so that the tools preamble is a few hundred tokens
        template = TOOLS_TEMPLATE.read_text(encoding="utf-8")
        tokenizer = build_tokenizer(corpus + [template, json.dumps(TOOLS)] * 20, template, vocab_size=1200)
        tokenizer.add_tokens(QWEN3_TAGS)
        build_model(tokenizer, corpus, directory / "model", context=2048)
    else:
        build_model(build_tokenizer(corpus, CHAT_TEMPLATE), corpus, directory / "model")


def tool_conversations(rng: random.Random) -> list[dict[str, Any]]:
    """Four kinds of records, shuffled: a calculator call with reasoning before it, a capitals lookup, an answer
    reasoned out without a tool, and a plain answer (so that both of a hybrid template's modes are trained)."""
    rows: list[dict[str, Any]] = []
    for a in range(2, 60, 2):
        for b in (3, 7, 12, 19):
            call = {"type": "function", "id": f"call_{a}_{b}",
                    "function": {"name": "add", "arguments": {"a": a, "b": b}}}
            rows.append({"tools": TOOLS, "messages": [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": "", "reasoning_content": f"Adding {a} and {b}: the add tool.",
                 "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "name": "add", "content": json.dumps({"sum": a + b})},
                {"role": "assistant", "content": f"{a} plus {b} is {a + b}.",
                 "reasoning_content": f"The add tool says {a + b}."}]})
    for country, capital in CAPITALS.items():
        call = {"type": "function", "id": f"call_{country.lower()}",
                "function": {"name": "capital_of", "arguments": json.dumps({"country": country})}}
        rows.append({"tools": TOOLS, "messages": [
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "name": "capital_of",
             "content": json.dumps({"capital": capital})},
            {"role": "assistant", "content": f"The capital of {country} is {capital}."}]})
    for word, opposite in OPPOSITES.items():
        rows.append({"messages": [
            {"role": "user", "content": f"What is the opposite of {word}?"},
            {"role": "assistant", "content": f"The opposite of {word} is {opposite}.",
             "reasoning_content": f"{word.capitalize()} and {opposite} are opposites."}]})
        rows.append({"messages": [{"role": "user", "content": f"Spell {word} backwards."},
                                  {"role": "assistant", "content": f"{word} backwards is {word[::-1]}."}]})
    rng.shuffle(rows)
    return rows


def conversations(rng: random.Random) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """Question-and-answer turns from five families; the eval file holds questions the training file lacks."""
    questions = demo_questions()
    rng.shuffle(questions)
    held_out = len(questions) // 10
    return _dialogues(questions[held_out:], rng, 700), _dialogues(questions[:held_out], rng, 80)


def demo_questions() -> list[tuple[str, str]]:
    """The demo's questions and answers, five families of them."""
    questions = []
    for a in range(1, 40):
        for b in (3, 7, 12, 25):
            questions.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    for country, capital in CAPITALS.items():
        questions.append((f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
    for word, opposite in OPPOSITES.items():
        questions.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."))
        questions.append((f"Spell {word} backwards.", f"{word} backwards is {word[::-1]}."))
    for metres in range(1, 30):
        questions.append((f"How many centimetres are in {metres} metres?",
                          f"{metres} metres is {metres * 100} centimetres."))
    return questions


def _dialogues(questions: list[tuple[str, str]], rng: random.Random, count: int) -> list[list[dict[str, str]]]:
    """`count` distinct conversations: one or two turns, some with a system prompt."""
    rows: dict[str, list[dict[str, str]]] = {}
    while len(rows) < count:
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for question, answer in rng.sample(questions, k=1 if rng.random() < 0.7 else 2):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.setdefault(json.dumps(messages), messages)
    return list(rows.values())


def build_tokenizer(corpus: list[str], chat_template: str, vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer trained on `corpus`, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = chat_template
    return tokenizer


def build_model(tokenizer: Any, corpus: list[str], directory: Path, hidden_size: int = 128, layers: int = 2,
                steps: int = 300, ends_text: bool = True, context: int = 512) -> None:
    """A small Llama-architecture model pretrained on `corpus` as plain text, saved with its tokenizer.

    Pretraining gives the demo what a real base model has: it knows the facts but not the chat format, which
    is what fine-tuning then teaches. A few hundred steps take seconds on a CPU. With `ends_text` False the model
    never sees an end token, like a base model whose chat tokens are new: only fine-tuning can teach it to stop.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(3407)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=context, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    ending = [tokenizer.eos_token_id] if ends_text else []
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + ending for text in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(3407)
    model.train()
    for _ in range(steps):
        batch = rng.sample(ids, k=32)
        width = max(map(len, batch))
        input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in batch])
        labels = torch.tensor([row + [-100] * (width - len(row)) for row in batch])
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
