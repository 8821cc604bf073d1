"""What a run was started from, so that resuming it can tell when something changed underneath it.

Written to RUN_DIR/fingerprint.json when a run starts: every value of the config it runs, each data file's size
and content hash, and the model's config.json hash and weight file sizes (a hub id: its id and revision).
Resuming compares and refuses with what changed: a checkpoint's optimizer state, schedule and data order belong
to that data, that model and those settings. Settings that do not change what is trained (the eval batch,
gradient checkpointing, patience, threads) may change between a stop and a resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneterm.config import OPTION_BY_KEY, RunConfig

FINGERPRINT_FILE = "fingerprint.json"
CHANGEABLE_ON_RESUME = frozenset({
    "training.per_device_eval_batch_size", "training.gradient_checkpointing", "training.cpu_threads",
    "training.output_dir", "training.early_stopping_patience", "training.save_total_limit", "training.logging_steps",
    "model.attn_implementation",
})
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _file_print(path: Path) -> dict[str, Any]:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return {"size": path.stat().st_size, "blake2b": digest.hexdigest()}


def _source_print(source: str | None) -> dict[str, Any] | None:
    """A data source: every file's size and hash (a hub id: just its id)."""
    if not source:
        return None
    path = Path(source)
    if path.is_file():
        return {str(path): _file_print(path)}
    if path.is_dir():
        return {str(p): _file_print(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return {"hub": source}


def _model_print(config: RunConfig) -> dict[str, Any]:
    path = Path(config.get("model.path"))
    if not path.is_dir():
        return {"hub": config.get("model.path"), "revision": config.get("model.revision")}
    found: dict[str, Any] = {}
    if (path / "config.json").is_file():
        found["config.json"] = _file_print(path / "config.json")
    for weights in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        found[weights.name] = {"size": weights.stat().st_size}
    return found


def fingerprint(config: RunConfig) -> dict[str, Any]:
    values = json.loads(json.dumps(config.values, default=str))
    return {"config": {k: v for k, v in values.items() if k not in CHANGEABLE_ON_RESUME},
            "data": {"data.train": _source_print(config.get("data.train")),
                     "data.eval": _source_print(config.get("data.eval"))},
            "model": _model_print(config)}


def record(config: RunConfig, run_dir: Path) -> None:
    (run_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint(config), indent=1), encoding="utf-8")


def changes(config: RunConfig, run_dir: Path) -> list[str]:
    """What differs between the run's start and now, one sentence each; [] when nothing (or no fingerprint)."""
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        return []
    before, now = json.loads(path.read_text(encoding="utf-8")), fingerprint(config)
    found = []
    for key in sorted(set(before["config"]) | set(now["config"])):
        old, new = before["config"].get(key), now["config"].get(key)
        option = OPTION_BY_KEY.get(key)
        if key not in before["config"] and option is not None and new == option.default_for(config.method):
            continue  # an option tuneterm gained after the run started, left at its default
        if old != new:
            found.append(f"{key} was {old!r} and is now {new!r} in config.yaml")
    for key in ("data.train", "data.eval"):
        old, new = before["data"].get(key), now["data"].get(key)
        if old != new:
            found.append(f"{key}: {_what_changed(old, new)}")
    if before["model"] != now["model"]:
        found.append(f"model.path: {_what_changed(before['model'], now['model'])}")
    return found


def _what_changed(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    old, new = old or {}, new or {}
    for name in sorted(set(old) | set(new)):
        if name not in new:
            return f"{name} is gone"
        if name not in old:
            return f"{name} is new"
        if old[name] != new[name]:
            before, after = old[name], new[name]
            if isinstance(before, dict) and before.get("size") != after.get("size"):
                return f"{name} changed ({before.get('size'):,} bytes then, {after.get('size'):,} now)"
            return f"{name} changed (same size, different content)"
    return "changed"
