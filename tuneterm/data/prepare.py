"""From the files named in a run config to the tokenised train and eval datasets SFTTrainer trains on.

One path for every run: read and validate the records (stopping with every problem and its line), normalise
them to conversations, hold out the eval split, render each with the model's chat template, and turn the
trained character spans into labels. The token lengths it measures set max_length when the config says "auto".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneterm.config import RunConfig
from tuneterm.data.chat import TemplateError, render_for_training
from tuneterm.data.formats import Conversation, Detection, detect_format, to_conversations
from tuneterm.data.records import DataError, Problem, read_records
from tuneterm.data.tokenize import Encoded, encode_batch, truncate
from tuneterm.plan.schedule import eval_split_size

LENGTH_MULTIPLE = 64
_BATCH = 1000


@dataclass
class Split:
    name: str
    examples: list[Encoded]
    wheres: list[str]


@dataclass
class PreparedData:
    detection: Detection
    train: Split
    eval: Split | None
    max_length: int
    max_length_why: str
    lengths: np.ndarray
    """Untruncated token length of every training example."""
    warnings: list[str] = field(default_factory=list)

    def to_datasets(self) -> tuple[Any, Any | None]:
        """datasets.Dataset objects with input_ids and labels, as SFTTrainer takes pre-tokenised data."""
        return _dataset(self.train), (_dataset(self.eval) if self.eval else None)


def _dataset(split: Split) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in split.examples],
                              "labels": [e.labels for e in split.examples]})


def load_conversations(path: str, fmt: str) -> tuple[list[Conversation], list[str], Detection]:
    """Read and validate a file; any invalid record stops with the full list of problems."""
    records, problems = read_records(path)
    total = len(records) + len(problems)
    detection = detect_format(records) if fmt == "auto" else Detection(fmt, "set by data.format")
    conversations, wheres, invalid = to_conversations(records, detection.format)
    problems += invalid
    if problems:
        raise DataError(f"{path}: {len(problems)} of {total} records are not valid {detection.format} data "
                        f"({detection.evidence})", sorted(problems, key=_location_order))
    return conversations, wheres, detection


def _location_order(problem: Problem) -> tuple[int, str]:
    tail = problem.where.rsplit(":", 1)[-1].replace("row", "").strip()
    return (int(tail) if tail.isdigit() else 0, problem.where)


def prepare(config: RunConfig, tokenizer: Any, context_length: int | None) -> PreparedData:
    conversations, wheres, detection = load_conversations(config.get("data.train"), config.get("data.format"))
    max_samples = config.get("data.max_samples")
    if max_samples:
        conversations, wheres = conversations[:max_samples], wheres[:max_samples]
    seed = config.get("training.seed")
    eval_file = config.get("data.eval")
    if eval_file:
        eval_conversations, eval_wheres, _ = load_conversations(eval_file, config.get("data.format"))
    else:
        held_out = eval_split_size(len(conversations), config.get("data.val_size"))
        if held_out >= len(conversations):
            raise DataError(f"data.val_size: {config.get('data.val_size')} holds out {held_out} of "
                            f"{len(conversations)} examples, leaving none to train on; lower it")
        order = list(range(len(conversations)))
        random.Random(seed).shuffle(order)
        eval_ids, train_ids = sorted(order[:held_out]), sorted(order[held_out:])
        eval_conversations, eval_wheres = [conversations[i] for i in eval_ids], [wheres[i] for i in eval_ids]
        conversations, wheres = [conversations[i] for i in train_ids], [wheres[i] for i in train_ids]

    train_on = config.get("data.train_on")
    warnings: list[str] = []
    train = _encode("train", conversations, wheres, tokenizer, train_on, warnings)
    evaluation = _encode("eval", eval_conversations, eval_wheres, tokenizer, train_on, warnings) \
        if eval_conversations else None

    lengths = np.array([len(e.input_ids) for e in train.examples])
    max_length, why = _max_length(config.get("training.max_length"), lengths, context_length)
    for split in (s for s in (train, evaluation) if s is not None):
        _truncate(split, max_length, warnings)
    if not train.examples:
        raise DataError(f"{config.get('data.train')}: no training example has a trained token left")
    return PreparedData(detection, train, evaluation, max_length, why, lengths, warnings)


def _encode(name: str, conversations: list[Conversation], wheres: list[str], tokenizer: Any, train_on: str,
            warnings: list[str]) -> Split:
    rendered, kept_wheres, problems = [], [], []
    for conversation, where in zip(conversations, wheres):
        try:
            rendered.append(render_for_training(tokenizer, conversation, train_on))
            kept_wheres.append(where)
        except TemplateError as exc:
            problems.append(Problem(where, str(exc)))
    if problems:
        raise DataError(f"the chat template fails on {len(problems)} {name} examples", problems)
    if any(not r.end_of_turn_trained for r in rendered):
        warnings.append("the chat template writes no end-of-turn token after assistant replies, so the model "
                        "does not learn to stop; use a template that ends each reply with the EOS token")
    encoded: list[Encoded] = []
    for start in range(0, len(rendered), _BATCH):
        encoded += encode_batch(tokenizer, rendered[start:start + _BATCH])
    return Split(name, encoded, kept_wheres)


def _max_length(setting: int | str, lengths: np.ndarray, context_length: int | None) -> tuple[int, str]:
    if setting != "auto":
        return int(setting), "set in the config"
    p99 = int(math.ceil(np.percentile(lengths, 99)))
    rounded = math.ceil(p99 / LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    why = f"99th percentile of the training examples' token lengths ({p99}) rounded up to a multiple of " \
          f"{LENGTH_MULTIPLE}"
    if context_length and rounded > context_length:
        return context_length, f"{why}, capped at the model's context length {context_length}"
    return rounded, why


def _truncate(split: Split, max_length: int, warnings: list[str]) -> None:
    kept, kept_wheres, dropped = [], [], []
    truncated = 0
    for encoded, where in zip(split.examples, split.wheres):
        truncated += len(encoded.input_ids) > max_length
        short = truncate(encoded, max_length)
        if short.trained_tokens:
            kept.append(short)
            kept_wheres.append(where)
        else:
            dropped.append(where)
    if truncated:
        warnings.append(f"{truncated} of {len(split.examples)} {split.name} examples are longer than max_length "
                        f"{max_length} and are truncated")
    if dropped:
        warnings.append(f"{len(dropped)} {split.name} examples have no trained token within max_length "
                        f"{max_length} and are left out: {', '.join(dropped[:5])}{' ...' if len(dropped) > 5 else ''}")
    split.examples, split.wheres = kept, kept_wheres
