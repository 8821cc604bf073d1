"""From the data named in a run config to the tokenised train and eval datasets SFTTrainer trains on.

Built on the shared pipeline (pipeline.py): read and validate (strict: stop with every problem and its line;
lenient: drop them and say which), hold out the eval split, render and label, set max_length from the data when
the config says "auto", and run the pre-flight checks that block a run which would train on the wrong tokens or on
nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneterm.config import RunConfig
from tuneterm.data.formats import Detection
from tuneterm.data.pipeline import EncodedExample, EncodeReport, Example, ReadReport, encode_examples, read_examples
from tuneterm.data.records import DataError, Problem
from tuneterm.data.stats import suggest_max_length, truncation
from tuneterm.plan.schedule import eval_split_size

FULLY_TRUNCATED_LIMIT = 0.10
"""Share of examples that may lose their whole response to max_length before the run is blocked."""


@dataclass
class Split:
    name: str
    examples: list[EncodedExample]


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


def _listed(problems: list[Problem], limit: int = 5) -> str:
    shown = ", ".join(p.where for p in problems[:limit])
    return shown + (f" and {len(problems) - limit} more" if len(problems) > limit else "")


def load_examples(source: str, config: RunConfig, warnings: list[str]) -> tuple[Detection, list[Example]]:
    """Valid examples of one source; invalid records stop the run (strict) or are dropped with a warning."""
    report, stream = read_examples(source, config.get("data.format"), config.get("data.columns"))
    examples = list(stream)
    _judge_records(source, report, bool(config.get("data.strict")), warnings)
    if not examples:
        raise DataError(f"{source}: no valid {report.detection.format} example", report.invalid)
    return report.detection, examples


def _judge_records(source: str, report: ReadReport, strict: bool, warnings: list[str]) -> None:
    """Invalid records stop a strict run; exact duplicates are always left out, and said."""
    if report.duplicates:
        warnings.append(f"{source}: left out {len(report.duplicates)} exact duplicates: "
                        + ", ".join(str(p) for p in report.duplicates[:3])
                        + (f" and {len(report.duplicates) - 3} more" if len(report.duplicates) > 3 else ""))
    if not report.invalid:
        return
    if strict:
        raise DataError(f"{source}: {len(report.invalid)} of {report.records} records are not valid "
                        f"{report.detection.format} data ({report.detection.evidence}); fix them, or set "
                        "data.strict: false to leave them out", sorted(report.invalid, key=_location_order))
    warnings.append(f"{source}: left out {len(report.invalid)} invalid of {report.records} records: "
                    f"{_listed(report.invalid)}")


def _location_order(problem: Problem) -> tuple[str, int]:
    location = problem.location
    return location["file"], location.get("line", location.get("row", 0))


def prepare(config: RunConfig, tokenizer: Any, context_length: int | None) -> PreparedData:
    warnings: list[str] = []
    detection, examples = load_examples(config.get("data.train"), config, warnings)
    if config.get("data.max_samples"):
        examples = examples[:config.get("data.max_samples")]
    if config.get("data.eval"):
        _, held_out = load_examples(config.get("data.eval"), config, warnings)
    else:
        examples, held_out = _split(examples, config.get("data.val_size"), config.get("training.seed"))

    train_on = "all" if detection.format == "text" else config.get("data.train_on")
    train = _encode("train", examples, tokenizer, train_on, config, warnings)
    evaluation = _encode("eval", held_out, tokenizer, train_on, config, warnings) if held_out else None

    lengths = np.array([e.length for e in train.examples])
    setting = config.get("training.max_length")
    max_length, why = (suggest_max_length(lengths, context_length) if setting == "auto"
                       else (int(setting), "set in the config"))
    for split in (s for s in (train, evaluation) if s is not None):
        _truncate(split, max_length, warnings)
    return PreparedData(detection, train, evaluation, max_length, why, lengths, warnings)


def _split(examples: list[Example], val_size: float | int, seed: int) -> tuple[list[Example], list[Example]]:
    held_out = eval_split_size(len(examples), val_size)
    if held_out >= len(examples):
        raise DataError(f"data.val_size: {val_size} holds out {held_out} of {len(examples)} examples, leaving none "
                        "to train on; lower it")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    eval_ids, train_ids = sorted(order[:held_out]), sorted(order[held_out:])
    return [examples[i] for i in train_ids], [examples[i] for i in eval_ids]


def _encode(name: str, examples: list[Example], tokenizer: Any, train_on: str, config: RunConfig,
            warnings: list[str]) -> Split:
    report = EncodeReport()
    encoded = list(encode_examples(tokenizer, examples, train_on, report))
    if report.prompt_leaks:
        raise DataError(f"masking failed on {len(report.prompt_leaks)} {name} examples: trained tokens include "
                        "prompt text. The chat template does something tuneterm cannot follow; set "
                        "model.chat_template to a simpler template", report.prompt_leaks)
    unusable = report.template_failures + report.untrained
    if unusable and config.get("data.strict"):
        raise DataError(f"{len(unusable)} {name} examples cannot be trained on (the chat template fails or leaves "
                        "no trained token); fix them, or set data.strict: false to leave them out", unusable)
    if unusable:
        warnings.append(f"left out {len(unusable)} {name} examples the chat template cannot train on: "
                        f"{_listed(unusable)}")
    if report.missing_end_of_turn:
        warnings.append(f"{report.missing_end_of_turn} {name} examples: the chat template writes no end-of-turn "
                        "token after the assistant reply, so the model does not learn to stop; use a template that "
                        "ends each reply with the EOS token")
    if report.system_folded:
        warnings.append(f"the chat template refuses the system role: in {report.system_folded} {name} examples "
                        "the system prompt was put at the start of the first user message")
    if not encoded:
        raise DataError(f"no {name} example can be trained on", unusable)
    return Split(name, encoded)


def _truncate(split: Split, max_length: int, warnings: list[str]) -> None:
    lengths = np.array([e.length for e in split.examples])
    trained = np.array([e.trained_tokens for e in split.examples])
    cut = truncation(lengths, (e.trained_lost_at(max_length) for e in split.examples), trained, max_length)
    if cut.fully_truncated > FULLY_TRUNCATED_LIMIT * len(split.examples):
        suggested, _ = suggest_max_length(lengths)
        raise DataError(f"{cut.fully_truncated} of {len(split.examples)} {split.name} examples lose their whole "
                        f"response at max_length {max_length}: raise training.max_length (the data's 99th "
                        f"percentile suggests {suggested})")
    if cut.truncated_examples:
        warnings.append(f"{cut.truncated_examples} of {len(split.examples)} {split.name} examples are longer than "
                        f"max_length {max_length} and are cut; {cut.response_tokens_lost} response tokens are lost"
                        + (f", and {cut.fully_truncated} examples lose their whole response and are left out"
                           if cut.fully_truncated else ""))
    split.examples = [e.truncated(max_length) for e in split.examples if e.trained_lost_at(max_length) < e.trained_tokens]
