"""Local paths and Hugging Face hub ids: which one a value is, and whether the hub can give it right now.

huggingface_hub retries a failed download five times with backoff: on a machine without network one
`from_pretrained` of a hub id takes about half a minute (23-28 s measured) before it fails. So before loading a
hub id tuneterm asks the hub once for the repository's info, which is not retried (30 ms without network), and
loads from the local cache alone when the hub cannot answer. huggingface_hub's own offline mode (HF_HUB_OFFLINE,
TRANSFORMERS_OFFLINE) is respected, and the hub is asked again each time, so a long-running app sees the network
come back. Shared by the data layer (hub datasets, tokenizers) and the plan and engine layers (models).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneterm.errors import LoadError, first_sentence

HubState = Literal["reachable", "offline", "unreachable", "not_found", "gated", "error"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A last path component ending in one of these is a file name, never a repository.
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".yaml", ".yml", ".jinja", ".safetensors", ".bin")


def looks_like_hub_id(text: str, base: Path | None = None) -> bool:
    """"org/name" or "org/name:split", where no local "org" directory says it is a path instead."""
    name = text.split(":", 1)[0]
    if not _REPO_ID.match(name) or name.lower().endswith(_FILE_SUFFIXES):
        return False
    return not ((base or Path.cwd()) / name.split("/", 1)[0]).exists()


def resolve_source(value: str, base: Path) -> str:
    """A path written in a config file, resolved against that file's directory; a hub id stays as it is."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if (base / path).exists() or not looks_like_hub_id(value, base):
        return str((base / path).resolve())
    return value


@dataclass(frozen=True)
class HubAnswer:
    state: HubState
    detail: str = ""
    gated: bool = False
    """The repository asks users to accept its terms (and this machine's login has access, when reachable)."""


def ask_hub(repo_id: str, repo_type: str = "model", revision: str | None = None,
            timeout: float = 10.0) -> HubAnswer:
    """Whether the hub can give this repository now. One request, never retried."""
    from huggingface_hub import HfApi, is_offline_mode
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if is_offline_mode():
        return HubAnswer("offline", "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)")
    api = HfApi()
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=timeout)
        if getattr(info, "gated", False):
            api.auth_check(repo_id, repo_type=repo_type)
    except GatedRepoError:
        return HubAnswer("gated", gated=True)
    except RevisionNotFoundError:
        return HubAnswer("not_found", f"the revision {revision} does not exist")
    except RepositoryNotFoundError:
        return HubAnswer("not_found", "no such repository, or a private one this machine's login cannot see")
    except HfHubHTTPError as exc:
        return HubAnswer("error", first_sentence(str(exc)))
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types (httpx, OfflineModeIsEnabled)
        return HubAnswer("unreachable", first_sentence(str(exc)) or type(exc).__name__)
    return HubAnswer("reachable", gated=bool(getattr(info, "gated", False)))


def hub_url(repo_id: str, repo_type: str = "model") -> str:
    return f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def explain(answer: HubAnswer, key: str, repo_id: str, repo_type: str = "model") -> str:
    """What a person should do when the hub cannot give a repository."""
    if answer.state == "gated":
        return (f"{key}: {repo_id} is gated: accept its terms at {hub_url(repo_id, repo_type)}, then log in on this "
                "machine with `hf auth login` (or set HF_TOKEN). tuneterm never stores the token.")
    if answer.state == "not_found":
        return f"{key}: {repo_id} is not a local path, and on the hub: {answer.detail}"
    if answer.state in ("offline", "unreachable"):
        kind = " --repo-type dataset" if repo_type == "dataset" else ""
        return (f"{key}: '{repo_id}' is not a local path or in the Hugging Face cache, and the hub cannot be "
                f"reached from this machine ({answer.detail}). Download it on a connected machine (hf download "
                f"{repo_id}{kind} --local-dir DIR), copy it here and set {key} to that directory.")
    return f"{key}: {repo_id}: the hub answered with an error: {answer.detail}"


@dataclass(frozen=True)
class Source:
    """A model or dataset named in a config, ready for from_pretrained / load_dataset."""

    path: str
    key: str
    """The config key it was given in ("model.path", "data.train"), for messages."""
    repo_type: str
    answer: HubAnswer | None
    """What the hub said; None for a local path."""
    kwargs: dict[str, Any]
    """from_pretrained arguments: revision, trust_remote_code and, for a hub id the hub cannot give now,
    local_files_only (so it fails at once instead of after retries)."""

    def failure(self, exc: BaseException) -> LoadError:
        """A LoadError that says what to do, for an exception from from_pretrained."""
        from huggingface_hub.errors import GatedRepoError

        if isinstance(exc, GatedRepoError):
            return LoadError(explain(HubAnswer("gated", gated=True), self.key, self.path, self.repo_type))
        if self.answer is not None and self.answer.state != "reachable":
            return LoadError(explain(self.answer, self.key, self.path, self.repo_type))
        return LoadError(f"{self.key}: {self.path}: cannot load it: "
                         f"{first_sentence(str(exc)) or type(exc).__name__}")


ModelPart = Literal["config", "tokenizer", "weights"]

MODEL_DIRECTORY = ("A model directory holds config.json, the tokenizer files (tokenizer.json, tokenizer_config.json) "
                   "and the weights (model.safetensors), as save_pretrained writes them or `hf download ORG/NAME "
                   "--local-dir DIR` fetches them")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")
_PART_NAMES = {"config": "config.json", "tokenizer": "tokenizer files (tokenizer.json, tokenizer_config.json)",
               "weights": "weights (model.safetensors or pytorch_model.bin)"}


def _has(directory: Path, part: ModelPart) -> bool:
    names = {entry.name for entry in directory.iterdir() if entry.is_file()}
    if part == "config":
        return "config.json" in names
    if part == "tokenizer":
        return any(name in names for name in _TOKENIZER_FILES) or any(n.endswith(".tiktoken") for n in names)
    return any(name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json") for name in names)


def not_a_model_directory(directory: Path, needs: tuple[ModelPart, ...], key: str = "model.path") -> str:
    """Why a local directory cannot serve as the model for what `needs` (its config, its tokenizer, its weights):
    what it lacks and what a model directory holds; "" when it has them (or cannot be listed)."""
    try:
        missing = [part for part in needs if not _has(directory, part)]
        adapter = directory / "adapter_config.json"
        if missing and adapter.is_file():
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path") or "?"
            return (f"{key}: {directory} holds a LoRA adapter (adapter_config.json), not a model: {key} is the base "
                    f"model it was trained from ({base}); tuneterm merge {directory} MERGED_DIR writes the two as "
                    "one model")
    except (OSError, ValueError):
        return ""
    if not missing:
        return ""
    lacking = ", and no ".join(_PART_NAMES[part] for part in missing)
    return f"{key}: {directory} is not a model directory: it has no {lacking}. {MODEL_DIRECTORY}"


def open_source(path: str, revision: str | None = None, trust_remote_code: bool = False, key: str = "model.path",
                repo_type: str = "model", needs: tuple[ModelPart, ...] = ()) -> Source:
    """A local directory as it is (holding what `needs` of a model); a hub id after asking the hub. A gated or
    missing repository fails here, and so does a directory that lacks what is needed, saying what."""
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if Path(path).exists():
        problem = not_a_model_directory(Path(path), needs, key) if needs and Path(path).is_dir() else ""
        if problem:
            raise LoadError(problem)
        return Source(path, key, repo_type, None, kwargs)
    if not looks_like_hub_id(path):
        raise LoadError(f"{key}: {path}: no such file or directory")
    answer = ask_hub(path, repo_type, revision)
    if answer.state in ("gated", "not_found", "error"):
        raise LoadError(explain(answer, key, path, repo_type))
    return Source(path, key, repo_type, answer, {**kwargs, "local_files_only": answer.state != "reachable"})
