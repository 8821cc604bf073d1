"""What to vary in an experiment, as the guides suggest it: the settings people compare first, with their values.

The complete guide ends with the way good settings are found: a base config and a few variations of the rank, the
epochs, the learning rate and the dropout, compared by eval loss. These are its ranges, with the other guides' advice
on each, for the wizard to offer before an experiment is launched (each can be unticked or retyped). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneterm.config import GUIDE_COMPLETE, GUIDE_HYPERPARAMS, GUIDE_RANK, GUIDE_UNSLOTH, RunConfig
from tuneterm.plan.advice import not_a_pretrained_llm
from tuneterm.plan.model import ModelFacts


@dataclass(frozen=True)
class Range:
    key: str
    label: str
    values: tuple[Any, ...]
    why: str
    source: str
    chosen: bool
    """Varied unless the person says otherwise."""
    follows: tuple[tuple[str, float], ...] = ()
    """Keys set from each value, times a factor: (("lora.lora_alpha", 2.0),) keeps alpha at 2r."""


RECOMMENDED_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


def experiment_ranges(config: RunConfig, facts: ModelFacts | None) -> list[Range]:
    """The rank (alpha following it at 2r) and the learning rate, varied by default; the epochs and the dropout,
    offered. The learning rates lie around the guides' recommended start (around the config's own for a model that is
    not a pretrained LLM, which the guides' rates do not fit)."""
    ranges = []
    adapter = config.method in ("lora", "qlora")
    if adapter:
        ranges.append(Range("lora.r", "rank, alpha = 2r", (8, 16, 32),
                            "8 the usual start, 16 more capacity, 32 the complete guide's best; alpha/r stays 2",
                            f"{GUIDE_COMPLETE}, sections 1 and 8; {GUIDE_RANK}", True, (("lora.lora_alpha", 2.0),)))
    too_small = not_a_pretrained_llm(facts)
    centre = config.get("training.learning_rate") if too_small else RECOMMENDED_LEARNING_RATE[config.method]
    rates = tuple(float(f"{centre * factor:.3g}") for factor in (0.5, 1, 2))
    ranges.append(Range("training.learning_rate", "learning rate", rates,
                        "half and twice this config's rate (the guides' rates are for pretrained LLMs)" if too_small
                        else f"half and twice the recommended start of {centre:g}",
                        f"{GUIDE_HYPERPARAMS}, chapter 1; {GUIDE_UNSLOTH}", True))
    ranges.append(Range("training.num_train_epochs", "epochs", (1, 3, 5),
                        "1 may underfit, 3 the usual, 5 may overfit (early stopping keeps the best)",
                        f"{GUIDE_COMPLETE}, section 3", False))
    if adapter:
        ranges.append(Range("lora.lora_dropout", "dropout", (0.0, 0.05, 0.1),
                            "none, light, heavy (the complete guide's run at 0.1 also lowered the rate)",
                            f"{GUIDE_COMPLETE}, sections 1 and 8; {GUIDE_UNSLOTH}", False))
    return ranges
