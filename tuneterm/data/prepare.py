"""From the data named in a run config to the tokenised train and eval datasets SFTTrainer trains on.

The data summary's pass (summary.py) already prepared every example and wrote its tokens to the store: preparing
for training takes them from there, so a run started after the wizard read its data (or `tuneterm inspect`, or an
earlier run, with the same data, tokenizer and settings) does not read, render or tokenise it again. On top of
the summary: validate (strict: stop with every problem and its line; lenient: leave them out and say which), hold
out the eval split, set max_length from the data when the config says "auto", and stop on the findings that would
make a run train on the wrong tokens or on nothing. What `tuneterm plan` and the app show is computed by the same
functions from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneterm.config import RunConfig
from tuneterm.data.formats import Detection
from tuneterm.data.store import EncodedExample
from tuneterm.data.summary import DataSummary, DataView, first_error, summarise_source
from tuneterm.errors import DataError
from tuneterm.work import Work


@dataclass
class Split:
    name: str
    examples: list[EncodedExample]


@dataclass
class PreparedData:
    summary: DataSummary
    view: DataView
    train: Split
    eval: Split | None
    warnings: list[str] = field(default_factory=list)

    @property
    def detection(self) -> Detection:
        return self.summary.train.detection

    @property
    def max_length(self) -> int:
        return self.view.max_length

    @property
    def thinking(self) -> bool | None:
        """How the trained model is asked (RunStarted.thinking): in thinking mode when any example was trained so."""
        modes = self.summary.train.encode.thinking
        return None if not modes or None in modes else modes[True] > 0

    @property
    def max_length_why(self) -> str:
        return self.view.max_length_why

    def to_datasets(self) -> tuple[Any, Any | None]:
        """datasets.Dataset objects with input_ids and labels, as SFTTrainer takes pre-tokenised data."""
        return _dataset(self.train), (_dataset(self.eval) if self.eval else None)


def _dataset(split: Split) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in split.examples],
                              "labels": [e.labels for e in split.examples]})


def summarise(config: RunConfig, tokenizer: Any, work: Work | None = None,
              template_warnings: list[str] | None = None) -> DataSummary:
    """The data summary of a config's training (and eval) data."""
    options = {"fmt": config.get("data.format"), "columns": config.get("data.columns"),
               "train_on": config.get("data.train_on"), "reasoning": config.get("data.reasoning"), "work": work}
    train = summarise_source(config.get("data.train"), tokenizer, key="data.train", **options)
    evaluation = (summarise_source(config.get("data.eval"), tokenizer, key="data.eval", **options)
                  if config.get("data.eval") else None)
    return DataSummary(train, evaluation, list(template_warnings or []))


def view_of(summary: DataSummary, config: RunConfig, context_length: int | None) -> DataView:
    """The numbers the data gives under a config's settings."""
    return summary.view(val_size=config.get("data.val_size"), seed=config.get("training.seed"),
                        max_samples=config.get("data.max_samples"), max_length=config.get("training.max_length"),
                        context_length=context_length, strict=bool(config.get("data.strict")))


def refuse_blocking(view: DataView) -> None:
    """Raise DataError with the first finding that would stop a run (with the records behind it), if any."""
    blocking = first_error(view.findings)
    if blocking is not None:
        raise DataError(str(blocking), blocking.details)


def prepare(config: RunConfig, tokenizer: Any, context_length: int | None, work: Work | None = None,
            summary: DataSummary | None = None) -> PreparedData:
    """The examples to train and evaluate on, cut to max_length; DataError on anything that blocks a run. `summary`
    is the config's data summary when one is at hand (the app's, for a run started from the wizard)."""
    if summary is None or not all(source.stored for source in (summary.train, summary.eval) if source is not None):
        summary = summarise(config, tokenizer, work, summary.template_warnings if summary else None)
    view = view_of(summary, config, context_length)
    refuse_blocking(view)
    train = summary.train.encoded(view.train_indices)
    if summary.eval is not None:
        held_out = summary.eval.encoded(np.arange(summary.eval.examples), notes=True)
    else:
        held_out = summary.train.encoded(view.eval_indices, notes=True) if view.eval_indices is not None else []
    return PreparedData(summary, view, _cut("train", train, view.max_length),
                        _cut("eval", held_out, view.max_length) if held_out else None,
                        [str(f) for f in view.findings if f.level == "warning"])


def _cut(name: str, examples: list[EncodedExample], max_length: int) -> Split:
    """Examples cut to max_length; those that would lose their whole response are left out (the findings say
    how many)."""
    return Split(name, [e.truncated(max_length) for e in examples
                        if e.trained_lost_at(max_length) < e.trained_tokens])
