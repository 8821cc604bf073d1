"""Run directories: one per run, never reused, holding everything needed to reproduce or resume it.

Layout of RUN_DIR:
  config.yaml                  the resolved config (defaulted and derived values commented)
  events.jsonl                 every event of the run, one JSON object per line, appended live
  checkpoint-N/                Trainer checkpoints (adapter, optimizer, scheduler, RNG, trainer_state.json) and,
                               written last, tuneterm-complete.json: every file's size and hash
  adapter_model.safetensors    the final (best, when evaluating) adapter, with adapter_config.json
  tokenizer files              so the adapter directory loads on its own
  trainer_state.json           the Trainer's log history
  training_loss.png, training_eval_loss.png
  adapter_check.json           proof that the adapter weights changed
  error.log                    the traceback, when a run failed
  accelerate.yaml, launch.json a run launched on chosen GPUs or several processes: the command (launch/command.py)
  train.log                    the output of a detached run
  .lock                        held (flock) by the process running it (the main process of a distributed run, or
                               the supervisor of a detached launch), so a run list can tell a live run from one whose
                               processes died
Only the main process of a distributed run writes here, except for what the Trainer has every process write into a
checkpoint (its RNG state, its optimizer shard).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from tuneterm.config import RunConfig, output_dir_problem
from tuneterm.errors import RunDirError

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
MARKER_FILE = "tuneterm-complete.json"
DEFAULT_RUNS_ROOT = Path("runs")

# What a checkpoint must hold to be resumed from, as each layout the Trainer writes names it: one process's files,
# FSDP's sharded directories, or DeepSpeed's global_stepN directory (every process's optimizer and model states and
# the scheduler's).
_RESUMABLE = {
    "trainer_state.json": (r"trainer_state\.json",),
    "optimizer.pt": (r"optimizer\.pt", r"optimizer_\d+/.+", r"global_step\d+/.+optim_states\.pt"),
    "scheduler.pt": (r"scheduler\.pt", r"global_step\d+/.+"),
}
_WEIGHTS = (r"(adapter_)?model\.safetensors", r"model\.safetensors\.index\.json", r"pytorch_model_fsdp_\d+/.+",
            r"global_step\d+/.+model_states\.pt")


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


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mark_complete(checkpoint: Path) -> None:
    """Written last, after every file of the checkpoint: their sizes and hashes. A checkpoint without it (the
    process died while saving) or whose files no longer match it (truncated, overwritten) is never resumed from."""
    files = {str(path.relative_to(checkpoint)): {"size": path.stat().st_size, "blake2b": _digest(path)}
             for path in sorted(checkpoint.rglob("*")) if path.is_file() and path.name != MARKER_FILE}
    staging = checkpoint / f".{MARKER_FILE}.tmp"
    staging.write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")
    os.replace(staging, checkpoint / MARKER_FILE)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when it is complete and intact."""
    try:
        marker = json.loads((checkpoint / MARKER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it was never completed (the process stopped while saving it)"
    except (OSError, ValueError):
        return f"its {MARKER_FILE} is unreadable"
    names = set(marker["files"])
    for required, layouts in _RESUMABLE.items():
        if not _any_matches(layouts, names):
            return f"it has no {required}, so the optimizer and schedule would restart"
    if not _any_matches(_WEIGHTS, names):
        return "it holds no weights"
    for name, expected in marker["files"].items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is {path.stat().st_size:,} bytes instead of {expected['size']:,} (truncated or replaced)"
        if _digest(path) != expected["blake2b"]:
            return f"{name} does not match what was saved (corrupted)"
    return None


def _any_matches(patterns: tuple[str, ...], names: set[str]) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in patterns for name in names)


def last_complete_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that is complete and intact, and why each newer one was skipped."""
    skipped: list[str] = []
    for checkpoint in reversed(checkpoints(run_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint.name} skipped: {problem}")
    return None, skipped


def resume_point(run_dir: Path) -> tuple[Path, list[str]]:
    """The checkpoint a stopped or interrupted run continues from (and the newer ones skipped, each with why),
    or a RunDirError saying why there is none."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a tuneterm run directory (no {CONFIG_FILE})")
    checkpoint, skipped = last_complete_checkpoint(run_dir)
    if checkpoint is None:
        reasons = "".join(f"; {reason}" for reason in skipped)
        raise RunDirError(f"{run_dir}: no complete checkpoint to resume from{reasons}. Start it again with "
                          f"tuneterm train {run_dir / CONFIG_FILE}")
    return checkpoint, skipped


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
