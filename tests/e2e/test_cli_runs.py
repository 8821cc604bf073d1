"""The command line running real tiny trainings: exit codes, printed progress, what lands on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_cli import write_config
from tuneterm.cli import main
from tuneterm.engine.events import RunFinished, read_events


def test_train_runs_headless_and_exits_zero(base_config: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    base_config["training"]["num_train_epochs"] = 1
    code = main(["train", str(write_config(tmp_path, base_config)), "--set", "lora.r=4"])
    out = capsys.readouterr().out
    assert code == 0, out
    run_dir = Path(base_config["training"]["output_dir"])
    assert f"Run directory: {run_dir}" in out
    assert "Run completed at step" in out and "tensors changed (all changed)" in out
    assert "r: 4\n" in (run_dir / "config.yaml").read_text()
    assert isinstance(read_events(run_dir / "events.jsonl")[-1], RunFinished)


def test_invalid_data_is_refused_with_every_line_before_a_run_directory_is_made(
        base_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = base_config["data"]["train"]
    lines = Path(good).read_text().splitlines()[:40]
    for number in range(25, 0, -1):  # 25 broken records, written in reverse so that sorting shows
        lines.insert(number, '{"messages": [{"role": "user", "content": "hi"}]}')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    base_config["data"]["train"] = str(bad)
    code = main(["train", str(write_config(tmp_path, base_config)), "--runs-dir", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 1 and "Run directory" not in out
    failure = err.splitlines()
    assert failure[0].startswith("tuneterm train: data.train: 25 of 65 records are not valid messages data")
    listed = [line.strip() for line in failure[1:21]]
    assert listed == [f"{bad}:{2 * n}: the conversation ends with a user turn; the last turn must be the "
                      "assistant's reply to train on" for n in range(1, 21)]
    assert failure[21].strip() == "... and 5 more"
    assert not Path(base_config["training"]["output_dir"]).exists() and not (tmp_path / "runs").exists(), \
        "nothing written for a run that could not start"


def test_a_run_that_fails_before_training_stays_a_run_to_start_again(base_config: dict, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    weightless = tmp_path / "weightless"  # its config and tokenizer are read before the run; its weights are not
    shutil.copytree(base_config["model"]["path"], weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    base_config["model"]["path"] = str(weightless)
    assert main(["train", str(write_config(tmp_path, base_config))]) == 1
    out = capsys.readouterr().out
    assert f"Run failed: model.path: {weightless} is not a model directory: it has no weights" in out
    run_dir = Path(base_config["training"]["output_dir"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "error.log").is_file()
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert f"Start it again with tuneterm train {run_dir / 'config.yaml'}" in capsys.readouterr().err


def test_a_saved_config_runs_again_into_a_new_directory(base_config: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base_config["training"].update(num_train_epochs=1, max_steps=2)
    assert main(["train", str(write_config(tmp_path, base_config))]) == 0
    first = Path(base_config["training"]["output_dir"])
    saved = (first / "config.yaml").read_text()
    assert f"output_dir: null  # derived: each run gets a new directory; this one was {first}" in saved
    capsys.readouterr()
    assert main(["train", str(first / "config.yaml"), "--runs-dir", str(tmp_path / "again")]) == 0
    [second] = list((tmp_path / "again").iterdir())
    assert f"Run directory: {second}" in capsys.readouterr().out
    assert (second / "adapter_model.safetensors").is_file()


def test_demo_headless_trains_an_adapter_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneterm.demo import demo_dir
    from tuneterm.engine.events import EvalFinished

    assert main(["demo", "--headless", "--runs-dir", str(tmp_path / "runs")]) == 0
    [run_dir] = list((tmp_path / "runs").iterdir())
    for name in ("config.yaml", "events.jsonl", "adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                 "trainer_state.json", "training_loss.png", "training_eval_loss.png"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("checkpoint-*"))
    evals = [e.eval_loss for e in read_events(run_dir / "events.jsonl") if isinstance(e, EvalFinished)]
    assert min(evals) < 0.5 * evals[0], evals
    base = AutoModelForCausalLM.from_pretrained(str(demo_dir() / "model"))
    tuned = PeftModel.from_pretrained(base, str(run_dir))
    lora_b = [v for k, v in tuned.state_dict().items() if "lora_B" in k]
    assert lora_b and all(bool(v.abs().sum() > 0) for v in lora_b)
