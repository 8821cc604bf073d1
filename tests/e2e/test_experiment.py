"""An experiment for real: a 2x2 grid of the tiny model, started detached as `tuneterm experiment` starts it,
stopped with `tuneterm stop` while its first run trains, and gone on with where it was (`--resume`), one
variation failing at run time while the others finish; its table holds each run's own eval losses and marks the
best. The runs train in two processes only (the detached experiment's, then this one): every variation of one start
trains in the process of its experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import wait_for
from tuneterm.cli import main
from tuneterm.engine.after.report import loss_text, report_of
from tuneterm.engine.events import (
    EVENTS_FILE,
    ExperimentEnded,
    ExperimentStarted,
    RunFinished,
    RunStarted,
    StepLogged,
    VariationEnded,
    read_events,
)
from tuneterm.engine.experiment.directory import read_experiment
from tuneterm.engine.experiment.results import results_of
from tuneterm.engine.experiment.tables import CURVES_FILE, README_FILE, RESULTS_FILE
from tuneterm.engine.rundir.layout import MARKER_FILE, is_live

GRID = ["--vary", "lora.target_modules=[all-linear, [q_proj, v_proj]]",
        "--vary", "lora.layers_to_transform=[null, [1]]"]
"""Four variations; PEFT refuses layers_to_transform with a target_modules that is a string (all-linear) when it
builds the adapter, so the second one fails at run time (nothing before it can tell)."""


def trained_a_step(run_dir: Path) -> bool:
    path = run_dir / EVENTS_FILE
    return path.is_file() and any(isinstance(e, StepLogged) for e in read_events(path))


def test_a_grid_runs_detached_stops_goes_on_where_it_was_and_compares_its_runs(
        tiny_model: Path, chat_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "method": "lora", "model": {"path": str(tiny_model)},
        "data": {"train": str(chat_data["train"]), "eval": str(chat_data["eval"])},
        "lora": {"r": 8, "lora_alpha": 16},
        "training": {"learning_rate": 3e-3, "max_steps": 8, "eval_steps": 2, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "gradient_checkpointing": False}}))
    runs = tmp_path / "runs"
    assert main(["experiment", str(config), *GRID, "--name", "grid", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "Experiment grid: 4 of 4 variations of" in out  # the plan, before anything ran
    directory = Path(out.split("Experiment directory: ")[1].splitlines()[0])
    experiment = read_experiment(directory)
    first, failing, third, fourth = (experiment.run_dir(v) for v in experiment.variations)
    assert f"tuneterm stop {directory}" in out and is_live(directory)

    wait_for(lambda: trained_a_step(first), what="the first run's first step")
    assert main(["stop", str(directory)]) == 0
    assert "Asked experiment" in capsys.readouterr().out
    stopped = results_of(experiment)
    assert stopped.status == "stopped"
    assert [row.state for row in stopped.rows] == ["stopped", "pending", "pending", "pending"]
    stopped_at = stopped.rows[0].step
    assert 1 <= stopped_at < 8 and (first / f"checkpoint-{stopped_at}" / MARKER_FILE).is_file()

    assert main(["experiment", "--resume", str(directory), "--foreground"]) == 1  # a variation failed
    out = capsys.readouterr().out
    results = results_of(experiment)
    assert results.status == "finished"
    assert [row.state for row in results.rows] == ["completed", "failed", "completed", "completed"]
    assert "layers_to_transform` cannot be used when `target_modules` is a str" in results.rows[1].reason
    first_events = read_events(first / EVENTS_FILE)
    assert [e.status for e in first_events if isinstance(e, RunFinished)] == ["stopped", "completed"]
    assert [Path(e.resumed_from).name for e in first_events if isinstance(e, RunStarted) and e.resumed_from] == [
        f"checkpoint-{stopped_at}"]

    # The table says what each run's own report says, and marks the lowest best eval loss.
    for row, run_dir in zip(results.rows, (first, failing, third, fourth)):
        assert row.run_dir == run_dir
        if row.state == "completed":
            report = report_of(run_dir)
            assert report.outcome == "improved" and row.best_eval_loss == report.best_eval_loss
            assert row.report is not None and row.report.final_eval_loss == report.final_eval_loss
            assert loss_text(report.best_eval_loss) in out
    scored = [row for row in results.rows if row.best_eval_loss is not None]
    best = min(scored, key=lambda row: row.best_eval_loss or 0.0)
    assert results.best is best and [row.mark for row in results.rows].count("best") == 1
    assert f"★  {best.name}" in out and "failed: `layers_to_transform`" in out

    # What the directory keeps: its own events, the table, the curves.
    kinds = [(type(e).__name__, getattr(e, "status", "")) for e in read_events(directory / EVENTS_FILE)
             if isinstance(e, (ExperimentStarted, ExperimentEnded))]
    assert kinds == [("ExperimentStarted", ""), ("ExperimentEnded", "stopped"), ("ExperimentStarted", ""),
                     ("ExperimentEnded", "finished")]
    ended = [(e.variation, e.status) for e in read_events(directory / EVENTS_FILE) if isinstance(e, VariationEnded)]
    names = [v.name for v in experiment.variations]
    assert ended == [(names[0], "stopped"), (names[0], "completed"), (names[1], "failed"), (names[2], "completed"),
                     (names[3], "completed")]
    assert not is_live(directory)
    readme = (directory / README_FILE).read_text()
    assert f"| ★ [{best.name}]({best.name}/)" in readme and "## Noise" in readme
    assert (directory / CURVES_FILE).stat().st_size > 0 and (directory / RESULTS_FILE).is_file()


def test_print_commands_writes_the_experiment_for_a_scheduler_and_runs_nothing(
        tiny_model: Path, chat_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuneterm.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])},
                                      "experiments": {"grid": {"lora.r": [4, 8]}}}))
    directory = tmp_path / "shared" / "rank"
    assert main(["experiment", str(config), "--vary", "training.learning_rate=1e-3,0", "--out", str(directory),
                 "--print-commands"]) == 0
    out = capsys.readouterr().out
    assert ("Not run:\n  02-r4-lr0, 04-r8-lr0: --vary training.learning_rate=1e-3,0: training.learning_rate: 0.0 must "
            "be greater than 0") in out, "the file's grid, crossed with --vary; the plan first, as always"
    experiment = read_experiment(directory)
    commands = [line for line in out.splitlines() if line.startswith("tuneterm train")]
    assert commands == [f"tuneterm train {directory / 'configs' / name}.yaml" for name in ("01-r4-lr1e-3",
                                                                                        "03-r8-lr1e-3")]
    for variation in experiment.runnable:  # each line trains exactly its variation into its run directory here
        config_of = load_config(experiment.config_path(variation))
        assert config_of.get("lora.r") == variation.overrides["lora.r"]
        assert config_of.get("training.output_dir") == str(experiment.run_dir(variation))
    assert not any(experiment.run_dir(v).exists() for v in experiment.variations) and not is_live(directory)
    assert main(["experiment", "--results", str(directory)]) == 0
    assert "not started, 0 of 2 variations done" in capsys.readouterr().out
