"""Engine parts that need no training run: precision, checkpoints, library output, loading errors."""

from __future__ import annotations

import logging
import time
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

from tuneterm.config import config_from_mapping
from tuneterm.data.tokenizer import load_tokenizer
from tuneterm.engine.capture import library_output_as_events
from tuneterm.engine.events import WarningIssued
from tuneterm.engine.rundir.layout import mark_complete, resume_point
from tuneterm.errors import ConfigError, LoadError, RunDirError, first_sentence
from tuneterm.hardware import Device, choose_cpu_threads, resolve_precision

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


def _checkpoint(run_dir: Path, step: int, marked: bool = True,
                files: tuple[str, ...] = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt",
                                          "scheduler.pt")) -> Path:
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(f"{name} of step {step}".encode() * 100)
    if marked:
        mark_complete(path)
    return path


def test_resume_takes_the_newest_intact_checkpoint_and_names_the_ones_it_skips(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("method: lora\n")
    _checkpoint(tmp_path, 5)
    ten = _checkpoint(tmp_path, 10)
    truncated = _checkpoint(tmp_path, 15)
    garbage = _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 25, marked=False)  # the process died while saving it
    _checkpoint(tmp_path, 30, files=("trainer_state.json", "adapter_model.safetensors", "scheduler.pt"))
    with open(truncated / "optimizer.pt", "r+b") as handle:
        handle.truncate(100)
    data = bytearray((garbage / "adapter_model.safetensors").read_bytes())
    data[10:20] = b"0123456789"
    (garbage / "adapter_model.safetensors").write_bytes(bytes(data))

    checkpoint, skipped = resume_point(tmp_path)
    assert checkpoint == ten
    assert skipped == [
        "checkpoint-30 skipped: it has no optimizer.pt, so the optimizer and schedule would restart",
        "checkpoint-25 skipped: it was never completed (the process stopped while saving it)",
        "checkpoint-20 skipped: adapter_model.safetensors does not match what was saved (corrupted)",
        "checkpoint-15 skipped: optimizer.pt is 100 bytes instead of 2,300 (truncated or replaced)",
    ]


def test_no_checkpoint_means_no_resume(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("method: lora\n")
    _checkpoint(tmp_path, 3, marked=False)
    with pytest.raises(RunDirError, match="no complete checkpoint to resume from; checkpoint-3 skipped: it was "
                                          "never completed"):
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
        logging.getLogger("transformers.trainer_utils").warning(
            "mtime may not be reliable on this filesystem, falling back to numerical ordering")
        warnings.warn("torch says something", UserWarning, stacklevel=1)
    assert [e.message for e in events if isinstance(e, WarningIssued)] == [
        "Some weights were not initialized", "UserWarning: torch says something"]
    assert root.handlers == handlers_before


def test_a_command_outside_a_run_routes_library_output_as_a_run_does(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from tuneterm.cli.common import library_output_routed

    @library_output_routed
    def command(args: argparse.Namespace) -> int:
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        logging.getLogger("transformers.modeling_utils").warning("Some weights were not initialized")
        print("the command's own line")
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside the tests, where nothing silences them
        assert command(argparse.Namespace()) == 0
    out, err = capsys.readouterr()
    assert out == "the command's own line\n"
    assert err == "warning (transformers): Some weights were not initialized\n", "deprecations said nowhere"


def test_hub_id_in_offline_mode_fails_at_once_with_what_to_do(tmp_path: Path) -> None:
    from tuneterm.work import import_training_libraries

    import_training_libraries()  # seconds on their own; the hub's answer is what must be quick
    config = config_from_mapping({"model": {"path": "example-org/no-such-model"}})
    started = time.monotonic()
    with pytest.raises(LoadError, match=r"hub cannot be reached from this machine \(offline mode is on.*Download it"):
        load_tokenizer(config)
    assert time.monotonic() - started < 5


def test_without_network_the_hub_is_asked_once_and_again_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import huggingface_hub.constants

    from tuneterm import hub

    # Offline mode off: the real request goes out and meets this session's closed network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    answer = hub.ask_hub("example-org/some-model")
    assert answer.state == "unreachable" and time.monotonic() - started < 5, "no retries"
    source = hub.open_source("example-org/some-model")
    assert source.kwargs["local_files_only"] is True
    # The network comes back: the next question gets a new answer (nothing is cached for the process).
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, *a, **k: types.SimpleNamespace(gated=False))
    assert hub.open_source("example-org/some-model").kwargs["local_files_only"] is False
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", _raise_not_found)
    with pytest.raises(LoadError, match="model.path: example-org/some-model is not a local path, and on the hub: no "
                                        "such repository"):
        hub.open_source("example-org/some-model")


def _raise_not_found(self: object, *args: object, **kwargs: object) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    response: Any = types.SimpleNamespace(status_code=404, headers={}, request=None)  # what the error reads of one
    raise RepositoryNotFoundError("404", response=response)


def test_paths_and_hub_ids_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneterm.hub import looks_like_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert looks_like_hub_id("Qwen/Qwen2.5-0.5B") and looks_like_hub_id("HuggingFaceH4/ultrachat_200k:train_sft")
    assert not looks_like_hub_id("data/trian.jsonl"), "a file name is never a repository"
    assert not looks_like_hub_id("data/train"), "a local data/ directory makes it a path"
    assert not looks_like_hub_id("./org/name") and not looks_like_hub_id("/abs/path")


def test_library_messages_are_cut_where_their_meaning_ends() -> None:
    message = ("Couldn't instantiate the backend tokenizer from one of:\n(1) a `tokenizers` library serialization "
               "file,\n(2) a slow tokenizer instance to convert or\n(3) an equivalent slow tokenizer class.\n\n"
               "You need to have sentencepiece installed.")
    assert first_sentence(message) == ("Couldn't instantiate the backend tokenizer from one of: (1) a `tokenizers` "
                                       "library serialization file, (2) a slow tokenizer instance to convert or (3) "
                                       "an equivalent slow tokenizer class.")


def test_cpu_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import psutil

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: [97.0, 4.0])
    threads, why = choose_cpu_threads("auto", sample_seconds=0)
    assert threads == 1 and "1 of 2 cores were busy" in why
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: [3.0, 4.0])
    assert choose_cpu_threads("auto", sample_seconds=0)[0] == 2
    assert choose_cpu_threads(3) == (3, "set in the config")


def test_runs_compared_list_the_settings_they_were_given_or_that_change_what_is_trained(tmp_path: Path) -> None:
    from tests.helpers import two_recorded_runs
    from tuneterm.engine.after.compare import differing_settings, load_curves, short_names

    first, second = two_recorded_runs(tmp_path)
    curves = load_curves([first, second])
    assert "training.cpu_threads" in curves[0].chosen and "training.learning_rate" not in curves[0].chosen
    assert differing_settings(curves) == [("training.learning_rate", [0.003, 0.001]),
                                          ("training.per_device_train_batch_size", [8, 4])], \
        "not the threads tuneterm chose, nor the eval batch that followed the micro-batch"
    assert short_names([first.name, second.name]) == ["221907", "223015"]
    assert short_names(["20261201-221907-qwen-lora", "20261202-101500-llama-qlora"]) == [
        "20261201-221907-qwen-lora", "20261202-101500-llama-qlora"], "nothing shared at either end: whole"
    assert short_names(["x-model-lora", "y-model-lora", "z-model-lora"]) == ["x", "y", "z"]
    assert short_names(["run", "run"]) == ["run", "run"] and short_names(["only-one"]) == ["only-one"]
