"""The command line: exit codes and messages that need no training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneterm.cli import main


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_config_problems_exit_2_before_any_run_directory_exists(base_config: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    base_config["data"]["train"] = str(tmp_path / "missing.jsonl")
    code = main(["train", str(write_config(tmp_path, base_config)), "--set", "training.lerning_rate=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training.lerning_rate: unknown key; did you mean learning_rate?" in err
    assert not Path(base_config["training"]["output_dir"]).exists()
    code = main(["train", str(write_config(tmp_path, base_config))])
    missing = f"data.train: {tmp_path / 'missing.jsonl'}: no such file or directory"
    assert code == 2 and missing in capsys.readouterr().err
    assert not Path(base_config["training"]["output_dir"]).exists()


def test_resume_takes_only_the_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path), "other.yaml"]) == 2
    assert "keeps its own config.yaml" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a tuneterm run directory" in capsys.readouterr().err




def test_runs_plain_lists_runs_and_says_when_there_are_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from tests.helpers import DATA

    shutil.copytree(DATA / "recorded-run", tmp_path / "runs" / "recorded-run")
    assert main(["runs", "--plain", "--runs-dir", str(tmp_path / "runs")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:2] == ["completed", "132/132"] and "1.4691" in line and line.endswith("recorded-run")
    assert main(["runs", "--plain", "--runs-dir", str(tmp_path / "none")]) == 0
    assert f"No runs in {tmp_path / 'none'}." in capsys.readouterr().err


def test_monitor_and_stop_refuse_what_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", str(tmp_path / "nope")]) == 2
    assert "is not a tuneterm run directory (no config.yaml)" in capsys.readouterr().err
    assert main(["stop", str(tmp_path / "nope")]) == 2
    assert "is not a tuneterm run directory" in capsys.readouterr().err


def test_the_app_without_a_terminal_says_what_works_without_one(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Under pytest stdin is not a terminal: the app must refuse at once instead of waiting for keys."""
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 2
    said = capsys.readouterr().err
    assert "needs a terminal" in said and "tuneterm runs --plain" in said and "tuneterm train" in said
