"""Run directories: one per run, never reused, holding everything needed to reproduce or resume it.

Layout of RUN_DIR:
  config.yaml                  the resolved config (defaulted and derived values commented)
  events.jsonl                 every event of the run, one JSON object per line, appended live
  checkpoint-N/                Trainer checkpoints (adapter, optimizer, scheduler, RNG, trainer_state.json)
  adapter_model.safetensors    the final (best, when evaluating) adapter, with adapter_config.json
  tokenizer files              so the adapter directory loads on its own
  trainer_state.json           the Trainer's log history
  training_loss.png, training_eval_loss.png
  adapter_check.json           proof that the adapter weights changed
  error.log                    the traceback, when a run failed
  .lock                        held (flock) by the process running it, so a run list can tell a live run from
                               one whose process died
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from tuneterm.config import RunConfig, output_dir_problem
from tuneterm.errors import RunDirError

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
DEFAULT_RUNS_ROOT = Path("runs")

# Files without which a checkpoint cannot be resumed from (weights are checked separately).
_CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def create_run_dir(config: RunConfig, runs_root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """A new, empty directory for this run. An existing non-empty directory is never used."""
    explicit = config.get("training.output_dir")
    if explicit:
        problem = output_dir_problem(explicit)
        if problem is not None:
            raise RunDirError(str(problem))
        path = Path(explicit).expanduser()
        _make(path, "training.output_dir", exist_ok=True)
        return path
    _make(runs_root, "the runs directory (--runs-dir)", exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(config.get('model.path'))}-{config.method}"
    for attempt in range(1, 1000):
        path = runs_root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise _unwritable(runs_root, "the runs directory (--runs-dir)", exc) from None
        return path
    raise RunDirError(f"{runs_root}: cannot find a free run directory name for {stem}")


def _make(path: Path, what: str, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as exc:
        raise _unwritable(path, what, exc) from None


def _unwritable(path: Path, what: str, exc: OSError) -> RunDirError:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = "it (or a folder above it) is a file, not a directory"
    else:
        reason = exc.strerror or str(exc)
    return RunDirError(f"{what}: cannot create {path}: {reason}. Choose a writable directory.")


def _slug(model_path: str) -> str:
    name = Path(str(model_path).rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:40]


def checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N directories, by step."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_complete_checkpoint(path: Path) -> bool:
    return all((path / name).is_file() for name in _CHECKPOINT_FILES) and \
        any((path / name).is_file() for name in _WEIGHT_FILES)


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in checkpoints(run_dir) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def resume_point(run_dir: Path) -> Path:
    """The checkpoint a stopped or interrupted run continues from, or a RunDirError saying why there is none."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a tuneterm run directory (no {CONFIG_FILE})")
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint is None:
        raise RunDirError(f"{run_dir}: no complete checkpoint to resume from; start it again with "
                          f"tuneterm train {run_dir / CONFIG_FILE}")
    return checkpoint


@contextlib.contextmanager
def holding_run_lock(run_dir: Path) -> Iterator[None]:
    """Held while a process runs this run; the kernel lets go when the process dies, even by kill -9."""
    descriptor = os.open(run_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for attempt in range(40):  # a run list may hold it for a moment to look
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 39:
                    raise RunDirError(f"{run_dir}: another process is running this run; watch it with tuneterm "
                                      f"monitor {run_dir}") from None
                time.sleep(0.05)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        yield
    finally:
        os.close(descriptor)


def is_live(run_dir: Path) -> bool:
    """Whether a process holds the run's lock now."""
    try:
        descriptor = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False
