"""Which models are at hand, and what each one is, from its small files alone.

The app's model step lists the models already in the Hugging Face cache (huggingface_hub's cache scan), local
directories holding a config.json, and any hub id typed in. For each, config.json and the tokenizer's config are
read (no weights, no torch): architecture, sizes, context length, dtype, whether a chat template exists, whether
the repository's own code must run (`auto_map`), and for hub ids whether the hub gates it. A hub id is fetched
with only those files, so the memory estimate comes before any weight download. Nothing here raises for a model
that cannot be described: the description says what is missing and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneterm.hub import HubAnswer, ask_hub, explain, looks_like_hub_id, not_a_model_directory

# What describing a model needs: config.json and the tokenizer's small files (never weights).
MODEL_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
               "chat_template.jinja", "chat_template.json", "generation_config.json", "tokenizer.model")
_SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "runs", ".cache", "site-packages"}


@dataclass(frozen=True)
class ModelEntry:
    """A model the person can pick."""

    name: str
    path: str
    """What model.path becomes: a hub id for cached models, a directory otherwise."""
    source: Literal["cache", "local", "demo"]
    architecture: str | None = None
    size_bytes: int | None = None
    last_used: float | None = None
    """Seconds since the epoch the cache last read it."""


@dataclass(frozen=True)
class ModelDescription:
    path: str
    architecture: str | None = None
    model_type: str | None = None
    layers: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    dtype: str | None = None
    has_tokenizer: bool = False
    has_chat_template: bool = False
    needs_remote_code: bool = False
    hub: HubAnswer | None = None
    """What the hub said, for a hub id; None for a local directory."""
    problems: list[str] = field(default_factory=list)
    """Why the model cannot be used as it is, each with what to do."""

    @property
    def usable(self) -> bool:
        return self.architecture is not None and not self.problems


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _architecture(config: dict[str, Any] | None) -> str | None:
    if not config:
        return None
    architectures = config.get("architectures") or []
    return architectures[0] if architectures else config.get("model_type")


def describe_files(directory: Path, path: str, hub: HubAnswer | None = None) -> ModelDescription:
    """A description from a directory holding (some of) MODEL_FILES."""
    config = _read_json(directory / "config.json")
    if config is None:
        problem = (not_a_model_directory(directory, ("config", "tokenizer"))
                   or f"model.path: {path}: its config.json is not a JSON object of a model's settings")
        return ModelDescription(path, hub=hub, problems=[problem])
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    tokenizer_config = _read_json(directory / "tokenizer_config.json") or {}
    has_tokenizer = (directory / "tokenizer.json").is_file() or (directory / "tokenizer.model").is_file()
    has_template = bool(tokenizer_config.get("chat_template")) or (directory / "chat_template.jinja").is_file() \
        or (directory / "chat_template.json").is_file()
    problems = [] if has_tokenizer else [f"{path}: no tokenizer files (tokenizer.json); tuneterm needs the model's "
                                         "fast tokenizer to find the trained tokens"]
    return ModelDescription(
        path=path, architecture=_architecture(config), model_type=config.get("model_type"),
        layers=text.get("num_hidden_layers") or text.get("n_layer"),
        hidden_size=text.get("hidden_size") or text.get("n_embd"), vocab_size=text.get("vocab_size"),
        context_length=text.get("max_position_embeddings") or text.get("n_positions"),
        dtype=config.get("dtype") or config.get("torch_dtype"), has_tokenizer=has_tokenizer,
        has_chat_template=has_template, needs_remote_code="auto_map" in config, hub=hub, problems=problems)


def describe_model(path: str, revision: str | None = None) -> ModelDescription:
    """A local directory from its files; a hub id from its small files, fetched (with network) or from the
    cache (without)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return describe_files(local, path)
    if local.is_file() and local.name == "config.json":
        return describe_files(local.parent, path)
    if not looks_like_hub_id(path):
        return ModelDescription(path, problems=[f"{path}: no such directory, and not a hub id (org/name)"])
    answer = ask_hub(path, "model", revision)
    if answer.state in ("gated", "not_found", "error"):
        directory = None
    elif answer.state == "reachable":
        directory = _fetch_small_files(path, revision)
    else:
        directory = _cached_snapshot(path, revision)
    if directory is None:
        return ModelDescription(path, hub=answer, problems=[explain(answer, "model.path", path)])
    return describe_files(directory, path, answer)


def _fetch_small_files(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    directory = None
    for name in MODEL_FILES:
        try:
            directory = Path(hf_hub_download(repo_id, name, revision=revision)).parent
        except EntryNotFoundError:
            continue
    return directory


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def cached_models() -> list[ModelEntry]:
    """Models in the Hugging Face cache, most recently used first."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return []
    entries = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        config = _read_json(revisions[0].snapshot_path / "config.json") if revisions else None
        if config is None:
            continue
        entries.append(ModelEntry(repo.repo_id, repo.repo_id, "cache", _architecture(config), repo.size_on_disk,
                                  repo.last_accessed))
    return sorted(entries, key=lambda e: -(e.last_used or 0))


def local_models(roots: Iterable[Path], depth: int = 2, limit: int = 2000) -> list[ModelEntry]:
    """Directories under `roots` (to `depth` levels) that hold a config.json of a model with a tokenizer."""
    found: dict[Path, ModelEntry] = {}
    examined = 0
    for root in roots:
        queue = [(Path(root).expanduser(), 0)]
        while queue and examined < limit:
            directory, level = queue.pop(0)
            examined += 1
            config = directory / "config.json"
            if config.is_file() and (directory / "tokenizer_config.json").is_file():
                resolved = directory.resolve()
                size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
                found.setdefault(resolved, ModelEntry(directory.name, str(resolved), "local",
                                                      _architecture(_read_json(config)), size,
                                                      os.stat(config).st_mtime))
                continue
            if level >= depth:
                continue
            try:
                children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
                                  and p.name not in _SKIPPED_DIRS)
            except OSError:
                continue
            queue += [(child, level + 1) for child in children]
    return list(found.values())
