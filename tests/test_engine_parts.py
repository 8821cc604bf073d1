"""Engine parts that need no training run: precision, checkpoints, library output, loading errors."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from tuneterm.config import config_from_mapping
from tuneterm.engine.capture import library_output_as_events
from tuneterm.engine.events import WarningIssued
from tuneterm.engine.loading import LoadError, load_tokenizer
from tuneterm.hardware import Device, resolve_precision
from tuneterm.config import ConfigError
from tuneterm.engine.rundir import RunDirError, last_complete_checkpoint, resume_point

AMPERE = Device("cuda", "NVIDIA A100", True)
TURING = Device("cuda", "Tesla T4", False)
CPU = Device("cpu", "CPU", False)


def test_auto_precision_follows_the_hardware() -> None:
    assert resolve_precision("auto", AMPERE)[0] == "bf16"
    assert resolve_precision("auto", TURING)[0] == "fp16"
    assert resolve_precision("auto", CPU)[0] == "fp32"
    with pytest.raises(ConfigError, match="bf16 is not supported by Tesla T4"):
        resolve_precision("bf16", TURING)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)


def _checkpoint(run_dir: Path, step: int, complete: bool) -> Path:
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    names = ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt"]
    for name in names + (["scheduler.pt"] if complete else []):
        (path / name).write_text("x")
    return path


def test_resume_uses_the_last_complete_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("method: lora\n")
    _checkpoint(tmp_path, 5, complete=True)
    ten = _checkpoint(tmp_path, 10, complete=True)
    _checkpoint(tmp_path, 15, complete=False)  # interrupted while saving
    assert last_complete_checkpoint(tmp_path) == ten
    assert resume_point(tmp_path) == ten


def test_no_checkpoint_means_no_resume(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("method: lora\n")
    _checkpoint(tmp_path, 3, complete=False)
    with pytest.raises(RunDirError, match="no complete checkpoint"):
        resume_point(tmp_path)


def test_library_warnings_become_events_once_and_are_restored() -> None:
    import transformers  # noqa: F401  (configures its loggers on import)

    events: list = []
    logger = logging.getLogger("transformers.modeling_utils")
    root = logging.getLogger("transformers")
    handlers_before = root.handlers[:]
    with library_output_as_events(events.append):
        logger.warning("Some weights were not initialized")
        logger.warning("Some weights were not initialized")
        logger.warning("`foo` is deprecated and will be removed in v6")
        warnings.warn("torch says something", UserWarning)
    assert [e.message for e in events if isinstance(e, WarningIssued)] == [
        "Some weights were not initialized", "UserWarning: torch says something"]
    assert root.handlers == handlers_before


def test_hub_id_without_network_fails_at_once_with_what_to_do(tmp_path: Path) -> None:
    config = config_from_mapping({"model": {"path": "example-org/no-such-model"},
                                  "data": {"train": str(tmp_path / "t.jsonl")}})
    with pytest.raises(LoadError, match="hub cannot be reached from this machine. Download it"):
        load_tokenizer(config)
