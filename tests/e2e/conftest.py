"""One finished run shared by the tests that only read it (files, events, adapter), so each is trained once."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    events: list
    """The events as the sink received them."""
    result: object
    config: dict


@pytest.fixture(scope="session")
def finished_run(tiny_model: Path, chat_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    from tuneterm.config import config_from_mapping
    from tuneterm.engine.runner import new_run, run

    config = {"method": "lora", "model": {"path": str(tiny_model)},
              "data": {"train": str(chat_data["train"]), "eval": str(chat_data["eval"])},
              "lora": {"r": 8, "lora_alpha": 16},
              "training": {"learning_rate": 3e-3, "num_train_epochs": 2, "per_device_train_batch_size": 8,
                           "gradient_accumulation_steps": 2, "gradient_checkpointing": False, "eval_steps": 5}}
    plan = new_run(config_from_mapping(copy.deepcopy(config)), tmp_path_factory.mktemp("finished-runs"))
    events: list = []
    result = run(plan, events.append)
    return FinishedRun(plan.run_dir, events, result, config)
