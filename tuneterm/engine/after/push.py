"""A run on the Hugging Face Hub: its adapter, its merged model or its GGUF, with the run card as the model card.

The token is huggingface_hub's own: HF_TOKEN, or the login `hf auth login` saved; tuneterm never writes one.
Everything that can refuse is checked before anything is uploaded, and at once: the hub's offline switches
(HF_HUB_OFFLINE), a missing token, an unreachable hub (one request, not retried), and, for a merged model or a
GGUF, an export of the run that passed its check (`tuneterm export`); an export is never made implicitly here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneterm.engine.after.card import CARD_FILE, write_card
from tuneterm.engine.after.generate import ADAPTER_FILE
from tuneterm.engine.after.report import read_exports, report_of
from tuneterm.errors import ExportError, RunDirError, first_sentence
from tuneterm.hub import hub_url

WHAT = ("adapter", "merged", "gguf")
ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "config.yaml",
                 "training_loss.png", "training_eval_loss.png", "stop_check.json", "exports.json"]
"""What an adapter upload holds: the adapter, the tokenizer with its chat template, the config that reproduces the
run, its curves and checks (never checkpoints, events or optimizer states)."""


@dataclass(frozen=True)
class Pushed:
    repo_id: str
    url: str
    files: list[str]
    private: bool


def pushable(run_dir: Path, what: str) -> tuple[Path, list[str]]:
    """The folder to upload and the files in it: the run directory for the adapter, the newest passed export for a
    merged model or a GGUF."""
    if what not in WHAT:
        raise RunDirError(f"--what must be one of {', '.join(WHAT)}, not {what!r}")
    if what == "adapter":
        if not (run_dir / ADAPTER_FILE).is_file():
            raise RunDirError(f"{run_dir}: no {ADAPTER_FILE} to push (a full fine-tune: push --what merged after "
                              "`tuneterm export ... --format merged`, or the run saved nothing)")
        return run_dir, [name for name in ADAPTER_FILES if (run_dir / name).is_file()]
    formats = ("merged",) if what == "merged" else ("gguf", "ollama")
    for export in reversed(read_exports(run_dir)):
        folder = Path(str(export.get("out_dir")))
        if export.get("format") in formats and export.get("passed") and folder.is_dir():
            files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CARD_FILE)
            return folder, files
    fmt = "merged" if what == "merged" else "gguf"
    raise RunDirError(f"{run_dir} has no {what} export that passed its check (and still exists): run `tuneterm export "
                      f"{run_dir} OUT_DIR --format {fmt}` first")


def push(run_dir: Path, repo_id: str, what: str = "adapter", private: bool = False,
         on_phase: Callable[[str], None] = lambda text: None) -> Pushed:
    from huggingface_hub import HfApi, get_token, is_offline_mode

    folder, files = pushable(run_dir, what)
    if is_offline_mode():
        raise ExportError("the Hugging Face hub is switched off on this machine (HF_HUB_OFFLINE or "
                          "TRANSFORMERS_OFFLINE is set): nothing was uploaded")
    token = get_token()
    if token is None:
        raise ExportError("no Hugging Face token: set HF_TOKEN, or log in once with `hf auth login` (tuneterm reads "
                          "the token huggingface_hub keeps and never writes one)")
    api = HfApi(token=token)
    try:
        user = api.whoami()
    except Exception as exc:  # noqa: BLE001 - connection and HTTP errors come in many types
        raise ExportError(f"the Hugging Face hub did not answer ({first_sentence(str(exc)) or type(exc).__name__}): "
                          "nothing was uploaded") from None
    on_phase(f"creating {repo_id} as {user.get('name', 'you')}")
    api.create_repo(repo_id, private=private, exist_ok=True)
    card = write_card(report_of(run_dir))
    on_phase(f"uploading {len(files)} files from {folder}")
    api.upload_file(path_or_fileobj=str(card), path_in_repo=CARD_FILE, repo_id=repo_id,
                    commit_message=f"tuneterm: the run card of {run_dir.name}")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=files,
                      commit_message=f"tuneterm: {what} of {run_dir.name}")
    return Pushed(repo_id, hub_url(repo_id), [CARD_FILE, *files], private)
