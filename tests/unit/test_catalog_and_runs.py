"""The models at hand and what each is from its small files; the runs of a runs directory and their status."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneterm.engine.events import EvalFinished, PhaseStarted, RunFailed, RunFinished, RunStarted, StepLogged
from tuneterm.engine.rundir.layout import holding_run_lock
from tuneterm.engine.rundir.runs import list_runs, summarise_run
from tuneterm.plan.catalog import cached_models, describe_model, local_models


def test_a_model_directory_is_described_from_its_files(tiny_model: Path, tmp_path: Path) -> None:
    described = describe_model(str(tiny_model))
    assert described.architecture == "LlamaForCausalLM" and described.layers == 2 and described.hidden_size == 64
    assert described.has_chat_template and described.has_tokenizer and not described.needs_remote_code
    assert described.usable and described.hub is None

    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"architectures": ["MyModel"], "model_type": "mine",
                                                     "auto_map": {"AutoModelForCausalLM": "modeling.MyModel"}}))
    described = describe_model(str(custom))
    assert described.needs_remote_code
    assert any("no tokenizer files" in p for p in described.problems) and not described.usable


def test_a_directory_that_is_not_a_model_says_what_it_lacks_and_what_a_model_directory_holds(
        tiny_model: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import shutil

    from tuneterm.cli import main

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    holds = "A model directory holds config.json, the tokenizer files (tokenizer.json, tokenizer_config.json) and " \
            "the weights (model.safetensors)"
    assert main(["inspect", str(data), "--model", str(empty)]) == 1
    said = capsys.readouterr().err
    assert f"model.path: {empty} is not a model directory: it has no tokenizer files" in said and holds in said
    assert "sentencepiece" not in said, "not the library's guess at what went wrong"
    assert main(["plan", "--set", f"model.path={empty}", "--set", f"data.train={data}"]) == 1
    assert f"{empty} is not a model directory: it has no config.json. {holds}" in capsys.readouterr().err
    described = describe_model(str(empty))
    assert described.problems == [f"model.path: {empty} is not a model directory: it has no config.json, and no "
                                  f"tokenizer files (tokenizer.json, tokenizer_config.json). {holds}, as "
                                  "save_pretrained writes them or `hf download ORG/NAME --local-dir DIR` fetches them"]

    adapter = tmp_path / "a-run"
    shutil.copytree(tiny_model, adapter, ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model)}))
    assert main(["plan", "--set", f"model.path={adapter}", "--set", f"data.train={data}"]) == 1
    assert (f"{adapter} holds a LoRA adapter (adapter_config.json), not a model: model.path is the base model it "
            f"was trained from ({tiny_model}); tuneterm merge {adapter} MERGED_DIR") in capsys.readouterr().err


def test_a_model_without_weights_is_refused_before_loading_with_what_it_lacks(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    import shutil

    import pytest

    from tuneterm.config import config_from_mapping
    from tuneterm.engine.loading import load_model
    from tuneterm.errors import LoadError
    from tuneterm.hardware import CPU

    weightless = tmp_path / "weightless"
    shutil.copytree(tiny_model, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    config = config_from_mapping({"model": {"path": str(weightless)}, "data": {"train": "t"}})
    with pytest.raises(LoadError, match=r"is not a model directory: it has no weights \(model.safetensors or "
                                        r"pytorch_model.bin\)\. A model directory holds"):
        load_model(config, "fp32", CPU)


def test_a_hub_id_without_network_says_what_to_do_at_once() -> None:
    described = describe_model("example-org/some-model")
    assert not described.usable and described.hub is not None and described.hub.state == "offline"
    assert "hf download example-org/some-model" in described.problems[0]
    assert "no such directory" in describe_model("./not/here").problems[0]


def test_local_models_are_found_two_levels_down(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "workspace"
    (root / "models").mkdir(parents=True)
    os.symlink(tiny_model, root / "models" / "tiny")
    (root / "models" / "not-a-model").mkdir()
    found = local_models([root])
    assert [(e.name, e.source, e.architecture) for e in found] == [("tiny", "local", "LlamaForCausalLM")]
    assert found[0].path == str(tiny_model.resolve())


def test_models_in_the_hugging_face_cache_are_listed(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    blob = repo / "blobs" / "blob1"
    blob.write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    os.symlink(blob, snapshot / "config.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    [entry] = cached_models()
    assert (entry.name, entry.path, entry.source, entry.architecture) == ("org/tiny", "org/tiny", "cache",
                                                                          "Qwen3ForCausalLM")
    assert entry.size_bytes and entry.size_bytes > 0


def _run(runs: Path, name: str, events: list) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: qlora\nmodel:\n  path: org/model\n")
    (run / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    return run


def test_runs_are_listed_with_a_truthful_status(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    started = RunStarted(time=100.0, run_dir="", config={}, defaulted=[], notes={}, train_examples=10,
                         eval_examples=2, steps_per_epoch=5, total_steps=10, trainable_params=1, total_params=2,
                         device="CPU")
    step = StepLogged(step=4, max_steps=10, epoch=0.8, loss=1.0, learning_rate=1e-4)
    evaluation = EvalFinished(step=4, epoch=0.8, eval_loss=1.2, best_eval_loss=1.1, best_step=2,
                              evals_since_improvement=1, patience=3)
    _run(runs, "done", [PhaseStarted(time=10.0, phase="loading"), started, step,
                        RunFinished(status="completed", run_dir="", global_step=10, best_eval_loss=0.9)])
    _run(runs, "broken", [PhaseStarted(time=20.0, phase="loading"), RunFailed(reason="data.train: 3 of 9 records "
                                                                                     "are not valid")])
    _run(runs, "killed", [PhaseStarted(time=30.0, phase="loading"), started, step, evaluation])
    live = _run(runs, "live", [PhaseStarted(time=40.0, phase="loading"), started, step, evaluation])
    (runs / "not-a-run").mkdir()
    with holding_run_lock(live):
        by_name = {r.name: r for r in list_runs(runs)}
        assert [r.name for r in list_runs(runs)] == ["live", "killed", "broken", "done"], "newest first"
    assert by_name["done"].status == "completed" and by_name["done"].best_eval_loss == 0.9
    assert by_name["done"].step == 10 and by_name["done"].total_steps == 10
    assert by_name["broken"].status == "failed" and "3 of 9 records" in by_name["broken"].reason
    assert by_name["killed"].status == "interrupted", "no process and no last event: it died"
    assert by_name["killed"].step == 4 and by_name["killed"].best_eval_loss == 1.1
    assert by_name["live"].status == "running"
    assert by_name["live"].method == "qlora" and by_name["live"].model == "org/model"
    gone = summarise_run(live)
    assert gone is not None and gone.status == "interrupted", "the lock is gone with its holder"
    assert "not-a-run" not in by_name
