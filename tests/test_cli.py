"""The command line: exit codes, messages, and the import boundary that keeps it fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneterm.cli import main
from tuneterm.engine.events import RunFinished, read_events

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "textual")


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("statement", ["import tuneterm.cli", "import tuneterm.engine", "import tuneterm.config",
                                       "from tuneterm.cli import main\ntry:\n    main(['--help'])\n"
                                       "except SystemExit:\n    pass"])
def test_cli_and_engine_imports_stay_free_of_heavy_libraries(statement: str) -> None:
    code = f"import sys\n{statement}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip().splitlines()[-1] == "[]"


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


def test_a_failing_run_exits_non_zero_with_one_line(base_config: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    base_config["data"]["train"] = str(bad)
    code = main(["train", str(write_config(tmp_path, base_config))])
    out = capsys.readouterr().out
    assert code == 1
    [failure] = [line for line in out.splitlines() if line.startswith("Run failed:")]
    assert f"{bad}: 1 of 1 records are not valid messages data" in failure
    assert "error.log" in failure


def test_config_problems_exit_2_before_any_run_directory_exists(base_config: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    base_config["data"]["train"] = str(tmp_path / "missing.jsonl")
    code = main(["train", str(write_config(tmp_path, base_config)), "--set", "training.lerning_rate=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training.lerning_rate: unknown key; did you mean learning_rate?" in err
    assert not Path(base_config["training"]["output_dir"]).exists()
    code = main(["train", str(write_config(tmp_path, base_config))])
    assert code == 2 and f"data.train: {tmp_path / 'missing.jsonl'}: no such file or directory" in capsys.readouterr().err
    assert not Path(base_config["training"]["output_dir"]).exists()


def test_resume_takes_only_the_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path), "--set", "lora.r=4"]) == 2
    assert "keeps its own config.yaml" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a tuneterm run directory" in capsys.readouterr().err


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
