"""Shared fixtures: tiny models and datasets built offline, once per test session.

Once per session, not once per worker: the tests run in parallel processes (pytest-xdist), and what they only read
(the data, the tiny model, a finished run) is built by the first worker that needs it, into a directory all
workers share (`built_once`), while the others wait for it.

No test reaches the network, whatever the developer's environment says: the Hugging Face offline switches are
forced on, the Hugging Face home is a fresh directory (no cached models, no login token), and any connection to
an address outside this machine fails. The model is a small Llama-architecture model with a byte-level BPE
tokenizer trained on the fly and a ChatML chat template, pretrained for a few seconds on the data's own text so
that it behaves like a (very small) base model.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import pickle
import random
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import built_once, shared_by_the_workers, write_jsonl

# The tests run in parallel, one process per core (pytest-xdist), so torch gets one thread each: two processes
# each spinning a thread per core on the same cores made the tiny model's build 2.4 times slower (14 s against 6).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "HF_HOME": tempfile.mkdtemp(prefix="tuneterm-test-hf-")})
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
    os.environ.pop(_name, None)

_connect = socket.socket.connect


def _local_only(self: socket.socket, address: tuple[Any, ...] | str | bytes) -> None:
    """Connections to this machine (distributed runs, control sockets) pass; anything else is refused."""
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            raise OSError(f"tests may not reach the network (tried {host})")
    return _connect(self, address)


socket.socket.connect = _local_only  # type: ignore[method-assign, assignment]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the developer's own tuneterm cache."""
    monkeypatch.setenv("TUNETERM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tuneterm-cache"))


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A messages-format train file and a held-out eval file with questions the train file lacks."""
    def build(root: Path) -> None:
        from tuneterm.demo import conversations

        train, evaluation = conversations(random.Random(7))
        write_jsonl(root / "train.jsonl", [{"messages": m} for m in train[:160]])
        write_jsonl(root / "eval.jsonl", [{"messages": m} for m in evaluation[:32]])

    root = built_once(shared_by_the_workers(tmp_path_factory) / "chat-data", build)
    return {"train": root / "train.jsonl", "eval": root / "eval.jsonl"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, chat_data: dict[str, Path]) -> Path:
    def build(directory: Path) -> None:
        from tuneterm.demo import CHAT_TEMPLATE, build_model, build_tokenizer

        corpus = [m["content"] for path in chat_data.values()
                  for line in path.read_text().splitlines() for m in json.loads(line)["messages"]]
        tokenizer = build_tokenizer(corpus, CHAT_TEMPLATE, vocab_size=400)
        build_model(tokenizer, corpus, directory, hidden_size=64, layers=2, steps=150)

    return built_once(shared_by_the_workers(tmp_path_factory) / "tiny-model", build)


@pytest.fixture
def base_config(tiny_model: Path, chat_data: dict[str, Path], tmp_path: Path) -> dict:
    """A small LoRA run: a few seconds on a CPU."""
    return {
        "method": "lora",
        "model": {"path": str(tiny_model)},
        "data": {"train": str(chat_data["train"]), "eval": str(chat_data["eval"])},
        "lora": {"r": 8, "lora_alpha": 16},
        "training": {
            "learning_rate": 3e-3,
            "num_train_epochs": 2,
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "gradient_checkpointing": False,
            "eval_steps": 5,
            "output_dir": str(tmp_path / "run"),
        },
    }


# One finished run shared by the tests that only read it (files, events, adapter, chat), so it is trained once.
@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    events: list
    """The events as the sink received them."""
    result: object
    config: dict


@pytest.fixture(scope="session")
def finished_run(tiny_model: Path, chat_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    config = {"method": "lora", "model": {"path": str(tiny_model)},
              "data": {"train": str(chat_data["train"]), "eval": str(chat_data["eval"])},
              "lora": {"r": 8, "lora_alpha": 16},
              "training": {"learning_rate": 3e-3, "num_train_epochs": 2, "per_device_train_batch_size": 8,
                           "gradient_accumulation_steps": 2, "gradient_checkpointing": False, "eval_steps": 5}}

    def train(directory: Path) -> None:
        from tuneterm.config import config_from_mapping
        from tuneterm.engine.run.plans import new_run
        from tuneterm.engine.run.runner import run

        plan = new_run(config_from_mapping(copy.deepcopy(config)), directory / "runs")
        events: list = []
        result = run(plan, events.append)
        # What the sink received, for the workers that did not train the run.
        (directory / "received.pickle").write_bytes(pickle.dumps((plan.run_dir, events, result)))

    directory = built_once(shared_by_the_workers(tmp_path_factory) / "finished-run", train)
    run_dir, events, result = pickle.loads((directory / "received.pickle").read_bytes())
    return FinishedRun(run_dir, events, result, config)
