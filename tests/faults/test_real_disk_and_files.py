"""Faults made for real rather than injected: a filesystem that truly fills up, run files truly damaged, data
paths that are truly not files.

An injected OSError(ENOSPC) carries the errno a real full disk often loses (torch.save's C++ writer reports
"unexpected pos" instead), and a patched loader never meets a file cut in half. So the disk here is a small
tmpfs that a checkpoint of the tiny model overflows, the adapter is a trained run's file truncated or overwritten
in place, and the data is a named pipe or /dev/zero; each is met through the command a person would run: its
`main`, in this process, or in a process of its own with a time limit where a command that read the path would
never return (a pipe nobody writes, a device without end).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FinishedRun
from tests.faults.conftest import write_config
from tests.helpers import ROOT, with_changes
from tuneterm.cli import main
from tuneterm.config import config_from_mapping
from tuneterm.engine.after.generate import ADAPTER_FILE
from tuneterm.engine.events import RunFailed
from tuneterm.engine.run.plans import new_run
from tuneterm.engine.run.runner import ERROR_LOG, run
from tuneterm.engine.rundir.layout import MARKER_FILE

COMMAND_TIMEOUT = 300
"""Seconds a tuneterm command may take before the test calls it hung (a CPU shared with other tests is slow)."""

CHECKPOINT_OVERFLOW_KB = 500
"""A disk this size holds the run's first checkpoint (about 300 KB with the run's own files) and fills up while
the second one writes its optimizer state through torch.save, the writer that loses the errno."""


Command = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def tuneterm(capsys: pytest.CaptureFixture[str]) -> Command:
    """tuneterm(ARGUMENTS...): the command run in this process, its exit status and what it printed."""
    def command(*arguments: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = main(list(arguments))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["tuneterm", *arguments], code, out, err)

    return command


def in_a_process(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, given COMMAND_TIMEOUT seconds."""
    return subprocess.run([sys.executable, "-m", "tuneterm", *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _mount(*arguments: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("mount") is None:
        pytest.skip("a real full disk needs a tmpfs, and this machine has no mount command")
    return subprocess.run(["mount", *arguments], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """small_disk(kilobytes): a tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(kilobytes: int) -> Path:
        where = tmp_path / f"disk-{len(mounted)}"
        where.mkdir()
        done = _mount("-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(where))
        if done.returncode != 0:
            pytest.skip(f"a real full disk needs a tmpfs, and mounting one is not permitted here: "
                        f"{done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def test_a_disk_that_fills_up_during_a_checkpoint_is_said_and_the_run_resumes_once_space_is_freed(
        tiny_run: dict, small_disk: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        tuneterm: Command) -> None:
    disk = small_disk(CHECKPOINT_OVERFLOW_KB)
    config = with_changes(tiny_run, training={"output_dir": str(disk / "run")})
    plan = new_run(config_from_mapping(config))
    result = run(plan)

    assert isinstance(result, RunFailed) and result.error_type == "RunFailure", result
    assert result.reason.startswith("The disk is full (no space left on device) while saving at step 4"), result
    assert "The last good checkpoint, checkpoint-2, is kept. The incomplete checkpoint-4 can be deleted." \
        in result.reason
    assert result.last_good_checkpoint == str(plan.run_dir / "checkpoint-2")
    assert (plan.run_dir / "checkpoint-2" / MARKER_FILE).is_file()
    assert not (plan.run_dir / "checkpoint-4" / MARKER_FILE).exists()
    error_log = plan.run_dir / ERROR_LOG
    if error_log.exists():
        assert "Traceback" in error_log.read_text(), "error.log holds the traceback, never nothing"
    else:
        assert f"the traceback could not be written to {error_log}: No space left on device" in capsys.readouterr().err

    assert _mount("-o", "remount,size=8m", str(disk)).returncode == 0, "the disk is given more room"
    resumed = tuneterm("train", "--resume", str(plan.run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "checkpoint-4 skipped: it was never completed" in resumed.stdout
    assert "Run completed at step 10." in resumed.stdout


@pytest.fixture
def trained_copy(finished_run: FinishedRun, tmp_path: Path) -> Path:
    """A copy of a finished run (the shared one stays intact for the other tests)."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run.run_dir, copy)
    return copy


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _overwrite_header(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(8)  # past the header's length: its JSON
        handle.write(b"\x00" * 64)


def _one_line_naming(done: subprocess.CompletedProcess[str], damaged: Path) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    said = [line for line in done.stderr.splitlines() if str(damaged) in line]
    assert len(said) == 1 and "cannot be read, it is damaged or incomplete" in said[0], done.stderr
    return said[0]


@pytest.mark.parametrize("damage", [_truncate, _overwrite_header], ids=["truncated", "overwritten"])
def test_chat_on_a_damaged_adapter_names_the_file_and_the_intact_copy_that_replaces_it(
        trained_copy: Path, damage: Callable[[Path], None], tuneterm: Command) -> None:
    adapter = trained_copy / ADAPTER_FILE
    damage(adapter)
    said = _one_line_naming(tuneterm("chat", str(trained_copy), "--prompt", "What is the capital of France?"),
                            adapter)
    assert f"train again: tuneterm train {trained_copy / 'config.yaml'}" in said
    copy_command = said[said.index("cp "):].split(";")[0].split()
    subprocess.run(copy_command, check=True)  # what the message says to do
    answered = tuneterm("chat", str(trained_copy), "--prompt", "What is the capital of France?")
    assert answered.returncode == 0, answered.stderr


def test_the_stop_check_and_merge_on_a_damaged_adapter_name_the_file(trained_copy: Path, tmp_path: Path,
                                                                      tuneterm: Command) -> None:
    adapter = trained_copy / ADAPTER_FILE
    _truncate(adapter)
    _one_line_naming(tuneterm("chat", str(trained_copy), "--stop-check"), adapter)
    _one_line_naming(tuneterm("merge", str(trained_copy), str(tmp_path / "merged")), adapter)
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_disk_too_small_in_a_unit_that_shows_the_sizes(finished_run: FinishedRun,
                                                                        small_disk: Callable[[int], Path],
                                                                        tuneterm: Command) -> None:
    disk = small_disk(64)
    done = tuneterm("merge", str(finished_run.run_dir), str(disk / "merged"))
    assert done.returncode != 0
    assert re.search(rf"{re.escape(str(disk))}: \d+ MB free, the merged model needs about [1-9]\d* MB: free some "
                     "space or choose another disk", done.stderr), done.stderr


@pytest.fixture
def named_pipe(tmp_path: Path) -> Path:
    pipe = tmp_path / "train.jsonl"
    os.mkfifo(pipe)
    return pipe


@pytest.mark.parametrize("kind", ["named pipe", "device"])
def test_inspect_refuses_data_that_is_not_a_file_by_what_it_is(kind: str, named_pipe: Path, tiny_model: Path) -> None:
    data, what = (named_pipe, "a named pipe (FIFO)") if kind == "named pipe" else (Path("/dev/zero"),
                                                                                  "a character device")
    done = in_a_process("inspect", str(data), "--model", str(tiny_model))
    assert done.returncode != 0
    assert f"data.train: {data}: {what}, not a regular file: the data must be a .jsonl, .json, .csv, .parquet file " \
           "or a directory of them" in done.stderr, done.stderr
    assert "empty" not in done.stderr


def test_train_refuses_a_named_pipe_as_its_data(named_pipe: Path, tiny_run: dict, tmp_path: Path) -> None:
    config = write_config(tmp_path / "run.yaml", with_changes(tiny_run, data={"train": str(named_pipe)}))
    done = in_a_process("train", str(config))
    assert done.returncode != 0
    assert f"data.train: {named_pipe}: a named pipe (FIFO), not a regular file" in done.stdout + done.stderr
