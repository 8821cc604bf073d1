"""Experiments without training: the variations a person writes (a grid, a list, a file's section) and where each
problem is said; the plan of each variation; the results of runs written as the engine writes them (the table, the
best, the noise that makes a tie, the findings); the wizard's choice of what to vary."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_jsonl
from tuneterm.config import RunConfig, load_config
from tuneterm.engine.events import (
    EVENTS_FILE,
    EvalFinished,
    EventLog,
    ExperimentEnded,
    ExperimentStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStatus,
    StepLogged,
    VariationEnded,
)
from tuneterm.engine.experiment.definition import ExperimentSpec, check_variations, parse_vary, read_section, spec_of
from tuneterm.engine.experiment.directory import read_experiment, write_experiment
from tuneterm.engine.experiment.plan import format_experiment_plan, plan_experiment, with_not_run
from tuneterm.engine.experiment.results import results_of, run_noise
from tuneterm.engine.experiment.tables import README_FILE, results_markdown, write_results
from tuneterm.engine.rundir.layout import CONFIG_FILE
from tuneterm.errors import ConfigError

BASE = {"method": "lora", "model": {"path": "org/model"}, "data": {"train": "org/data"},
        "lora": {"r": 16, "lora_alpha": 32}}


def base_config(**training: object) -> RunConfig:
    return load_config(base={**BASE, "training": training})


def test_a_grid_runs_every_combination_first_axis_outermost_with_short_names() -> None:
    spec = spec_of(base_config(), "run.yaml", vary=["lora.r=8,16", "training.learning_rate=1e-4,2e-4"])
    names = [v.name for v in spec.variations()]
    assert names == ["01-r8-lr1e-4", "02-r8-lr2e-4", "03-r16-lr1e-4", "04-r16-lr2e-4"]
    assert spec.name == "r-lr" and spec.varied == ["lora.r", "training.learning_rate"]
    checked = check_variations(spec)
    assert [c.variation.overrides for c in checked][1] == {"lora.r": 8, "training.learning_rate": 2e-4}, \
        "values as the config holds them: 2e-4 a number, not the string YAML 1.1 reads"
    assert all(c.config is not None and not c.problems for c in checked)


def test_keys_that_change_together_and_values_with_commas() -> None:
    axis = parse_vary("lora.r,lora.lora_alpha=[[8, 16], [16, 32]]")
    assert axis.keys == ("lora.r", "lora.lora_alpha") and axis.points == ((8, 16), (16, 32))
    assert parse_vary("lora.target_modules=[all-linear, [q_proj, v_proj]]").points == (
        ("all-linear",), (["q_proj", "v_proj"],))
    for text, message in (("lora.r", "expected KEY=V1,V2"), ("lora.r,lora.lora_alpha=[[8, 16], [16]]", "a list of 2"),
                          ("lora.r=8,8", "8 is given twice"), ("lora.r=[8", "not a YAML list")):
        with pytest.raises(ConfigError) as caught:
            parse_vary(text)
        assert message in str(caught.value) and f"--vary {text}" in str(caught.value)


def test_listed_variations_run_with_the_base_and_the_noise_repeat_follows_the_first() -> None:
    spec = spec_of(base_config(), "run.yaml", variations=["lora.r=32 lora.lora_alpha=64", "lora.lora_dropout=0.1"],
                   measure_noise=True)
    variations = spec.variations()
    assert [v.name for v in variations] == ["01-base", "02-r32-alpha64", "03-dropout0.1", "04-base-seed3408"]
    assert variations[3].repeat_of == "01-base" and variations[3].overrides == {"training.seed": 3408}
    with pytest.raises(ConfigError, match="nothing varies"):
        spec_of(base_config(), "run.yaml")
    with pytest.raises(ConfigError, match="varied by two axes"):
        spec_of(base_config(), "run.yaml", vary=["lora.r=8,16", "lora.r,lora.lora_alpha=[[8, 16]]"])


def test_an_invalid_value_is_said_where_it_was_written_and_the_same_settings_do_not_run_twice() -> None:
    spec = spec_of(base_config(), "run.yaml", vary=["lora.r=0,16,8"], variations=["lora.r=8"])
    checked = {c.variation.name: c for c in check_variations(spec)}
    assert [str(p) for p in checked["01-r0"].problems] == ["--vary lora.r=0,16,8: lora.r: 0 must be greater than 0"]
    assert [str(p) for p in checked["04-base"].problems] == ["the same settings as 02-r16"], "the base's r is 16"
    assert [str(p) for p in checked["05-r8"].problems] == ["the same settings as 03-r8"]


def test_the_experiments_section_of_a_config_file_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + """experiments:
  name: rank-and-rate
  grid:
    lora.r, lora.lora_alpha: [[8, 16], [32, 64]]
  variations:
    - name: five-epochs
      training.num_train_epochs: 5
    - lora.lora_dropout: 2
""")
    config = load_config(path)  # what `tuneterm train run.yaml` reads: the section is the experiment's, not the run's
    assert config.get("lora.r") == 16
    section = read_section(path)
    spec = spec_of(config, str(path), section=section)
    assert spec.name == "rank-and-rate"
    assert [v.name for v in spec.variations()] == ["01-r8-alpha16", "02-r32-alpha64", "03-base", "04-five-epochs",
                                                   "05-dropout2"]
    problems = [str(p) for c in check_variations(spec) for p in c.problems]
    assert problems == [f"{path}:16: lora.lora_dropout: 2 must be at least 0 and below 1"]
    path.write_text(yaml.safe_dump(BASE) + "experiments:\n  grid: [lora.r]\n  vary: {}\n")
    with pytest.raises(ConfigError) as caught:
        read_section(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:10: experiments.grid: a mapping of KEY: [values] (or KEY1, KEY2: [[A1, B1], ...])",
        f"{path}:11: experiments.vary: unknown key; the section has name, grid, variations, measure_noise"]


def test_the_plan_names_what_cannot_run_and_why(tiny_model: Path, chat_data: dict, tmp_path: Path) -> None:
    from tuneterm.hardware import hypothetical_gpu
    from tuneterm.plan.planner import make_plan

    config = load_config(base={"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])},
                               "training": {"per_device_train_batch_size": 4}})
    spec = spec_of(config, "run.yaml", vary=["training.per_device_train_batch_size=4,4096",
                                             "data.eval=[null, missing.jsonl]"])
    gpu = hypothetical_gpu(2)
    plan = plan_experiment(spec, lambda variation: make_plan(variation, gpus=gpu))
    by_name = {v.variation.name: v for v in plan.variations}
    first = by_name["01-batch4-evalnone"]
    assert first.runnable and first.plan is not None and first.plan.schedule is not None
    assert by_name["03-batch4096-evalnone"].not_run.startswith("will not fit on GPU 0 planned GPU with 2 GB free: "
                                                               "needs about")
    assert "missing.jsonl: no such file or directory" in by_name["02-batch4-evalmissing.jsonl"].not_run
    text = format_experiment_plan(plan)
    assert "Experiment batch-eval: 1 of 4 variations of run.yaml run" in text
    assert "time: no run of this model and method has trained on this device yet" in text
    assert "Not run:\n" in text and "  03-batch4096-evalnone: will not fit" in text

    directory = tmp_path / "experiment"
    directory.mkdir()
    experiment = write_experiment(spec, with_not_run(plan), directory)
    again = read_experiment(directory)
    assert [v.name for v in again.runnable] == ["01-batch4-evalnone"] and again.varied == spec.varied
    written = load_config(again.config_path(again.runnable[0]))
    assert written.get("training.output_dir") == str(directory / "01-batch4-evalnone")
    assert experiment.train_commands() == [f"tuneterm train {directory / 'configs' / '01-batch4-evalnone.yaml'}"]


# Results from runs as the engine writes them -----------------------------------------------------------------


def write_run(run_dir: Path, evals: list[float], train_loss: float = 1.0, status: RunStatus = "completed",
              failed: str = "", baseline: float = 3.0) -> None:
    """A run's directory as the engine leaves it: its config, its events (the eval loss before training, then
    `evals`, one every 10 steps) and its end."""
    run_dir.mkdir(parents=True)
    load_config(base=BASE).save(run_dir / CONFIG_FILE)
    now = time.time()
    with EventLog(run_dir / EVENTS_FILE) as emit:
        emit(RunStarted(time=now, run_dir=str(run_dir), config={}, defaulted=[], notes={}, train_examples=100,
                        eval_examples=10, steps_per_epoch=10 * len(evals), total_steps=10 * len(evals),
                        trainable_params=1, total_params=2, device="CPU"))
        if failed:
            emit(RunFailed(time=now + 1, reason=failed))
            return
        best, best_step = None, None
        emit(EvalFinished(time=now, step=0, epoch=0.0, eval_loss=baseline, baseline_eval_loss=baseline))
        for index, loss in enumerate(evals, start=1):
            emit(StepLogged(time=now + index, step=10 * index, max_steps=10 * len(evals), epoch=index / len(evals),
                            loss=train_loss, learning_rate=1e-4))
            if loss < baseline and (best is None or loss < best):
                best, best_step = loss, 10 * index
            emit(EvalFinished(time=now + index, step=10 * index, epoch=index / len(evals), eval_loss=loss,
                              baseline_eval_loss=baseline, best_eval_loss=best, best_step=best_step))
        emit(RunFinished(time=now + len(evals) + 1, status=status, run_dir=str(run_dir), global_step=10 * len(evals),
                         best_eval_loss=best, baseline_eval_loss=baseline, final_eval_loss=evals[-1],
                         outcome="improved" if best is not None else "worse_than_baseline"))


def written_experiment(tmp_path: Path, vary: list[str]):  # noqa: ANN201
    spec = spec_of(load_config(base=BASE), "run.yaml", vary=vary)
    directory = tmp_path / "experiment"
    directory.mkdir()
    return write_experiment(spec, [(c.variation, c.config) for c in check_variations(spec)], directory)


def test_run_noise_leaves_out_the_trend_and_needs_four_evaluations() -> None:
    assert run_noise([2.0, 1.9, 1.8]) is None
    assert run_noise([2.0, 1.8, 1.6, 1.4, 1.2]) == pytest.approx(0.0, abs=1e-12), "a steady fall is no noise"
    assert (run_noise([2.0, 1.5, 1.2, 1.05, 1.0]) or 1.0) < 0.05, "nor is a steady bend"
    noisy = [1.0 + 0.01 * (-1) ** i for i in range(6)]  # +-0.01 around a level: a spread of 0.01
    assert 0.01 <= (run_noise(noisy) or 0.0) <= 0.02
    assert 0.01 <= (run_noise([1.5 - 0.1 * i + 0.01 * (-1) ** i for i in range(6)]) or 0.0) <= 0.02, \
        "the same noise on a steady fall"


def test_the_table_marks_the_lowest_best_eval_loss_and_calls_differences_under_the_noise_ties(tmp_path: Path) -> None:
    experiment = written_experiment(tmp_path, ["lora.r=8,16", "training.learning_rate=1e-4,2e-4"])
    a, b, c, d = (experiment.run_dir(v) for v in experiment.variations)
    write_run(a, [2.0, 1.6, 1.51, 1.53, 1.50, 1.52], train_loss=0.5)
    write_run(b, [2.0, 1.6, 1.52, 1.50, 1.51, 1.49])
    write_run(c, [2.0, 1.4, 1.2, 1.21, 1.19, 1.2], status="early_stopped")
    write_run(d, [3.5], failed="CUDA out of memory: try a smaller micro-batch")
    results = results_of(experiment)
    assert results.status == "finished"
    assert [row.state for row in results.rows] == ["completed", "completed", "early_stopped", "failed"]
    assert [row.mark for row in results.rows] == ["", "", "best", ""]
    best = results.best
    assert best is not None and best.best_eval_loss == 1.19 and best.report is not None and best.report.best_step == 50
    assert results.noise is not None and 0 < results.noise.margin < 0.29 and "second differences" in results.noise.how
    text = "\n".join(results.findings)
    assert "Best by eval loss: 03-r16-lr1e-4, 1.1900 (perplexity 3.29) at step 50." in text
    assert "lora.r: 8 → 16 -0.3100 (better)" in text
    assert "training.learning_rate: 1e-4 → 2e-4 -0.0100 (a tie)" in text
    assert "The lowest train loss is 01-r8-lr1e-4's, not the best's" in text
    assert "04-r16-lr2e-4 failed: CUDA out of memory: try a smaller micro-batch" in text
    write_results(results)
    readme = (experiment.directory / README_FILE).read_text()
    assert "| ★ [03-r16-lr1e-4](03-r16-lr1e-4/) | 16 | 2e-4 |" not in readme
    assert "| ★ [03-r16-lr1e-4](03-r16-lr1e-4/) | 16 | 1e-4 | early stopped | 1.0000 | 3.0000 | 1.1900 | 1.2000 |" \
           in readme
    saved = json.loads((experiment.directory / "results.json").read_text())
    assert saved["best"] == "03-r16-lr1e-4" and saved["rows"][2]["eval_loss_best"] == 1.19
    assert (experiment.directory / "curves.png").stat().st_size > 0


def test_a_tie_with_the_best_is_said_and_the_noise_may_come_from_a_repeat(tmp_path: Path) -> None:
    spec = spec_of(load_config(base=BASE), "run.yaml", vary=["lora.r=8,16"], measure_noise=True)
    directory = tmp_path / "experiment"
    directory.mkdir()
    experiment = write_experiment(spec, [(c.variation, c.config) for c in check_variations(spec)], directory)
    first, second, repeat = (experiment.run_dir(v) for v in experiment.variations)
    write_run(first, [2.0, 1.5])  # too few evaluations to measure a run's own noise
    write_run(second, [2.0, 1.47])
    write_run(repeat, [2.0, 1.44])
    results = results_of(experiment)
    assert results.noise is not None and results.noise.margin == pytest.approx(0.06)
    assert "its repeat with another seed, 03-r8-seed3408: 0.0600" in results.noise.how
    assert [row.mark for row in results.rows] == ["tie", "tie", "best"]
    assert any(f.startswith("Within the noise of it (0.0600), a tie rather than a loss: 01-r8 (+0.0600), 02-r16 "
                            "(+0.0300)") for f in results.findings)
    assert "lora.r: 8 → 16 -0.0300 (a tie)." in results.findings


def test_nothing_is_called_best_when_no_training_beat_the_eval_loss_before_it(tmp_path: Path) -> None:
    experiment = written_experiment(tmp_path, ["lora.r=8,16"])
    for variation in experiment.variations:
        write_run(experiment.run_dir(variation), [3.1, 3.2, 3.3, 3.4])
    results = results_of(experiment)
    assert results.best is None and [row.best_eval_loss for row in results.rows] == [None, None]
    assert results.findings == ["No variation's training beat its eval loss before training: nothing is called best."]


def test_runs_whose_eval_losses_before_training_differ_are_said_not_comparable(tmp_path: Path) -> None:
    experiment = written_experiment(tmp_path, ["training.max_length=64,512"])
    first, second = (experiment.run_dir(v) for v in experiment.variations)
    write_run(first, [2.0, 1.6], baseline=3.0)
    write_run(second, [2.0, 1.5], baseline=3.0004)  # (a mean of batch means moves this little with the eval batch)
    assert not any("not comparable" in f for f in results_of(experiment).findings)
    shutil.rmtree(second)
    write_run(second, [2.0, 1.5], baseline=3.2)
    assert "The eval losses before training differ (3.0000 to 3.2000): these runs do not measure the same eval data " \
           "the same way (a different max length or eval set), so their eval losses are not comparable." \
           in results_of(experiment).findings


def test_an_experiment_stopped_part_way_and_one_cut_off(tmp_path: Path) -> None:
    experiment = written_experiment(tmp_path, ["lora.r=8,16,32"])
    first, second, third = (experiment.run_dir(v) for v in experiment.variations)
    assert results_of(experiment).status == "not started"
    write_run(first, [2.0, 1.5, 1.4, 1.3])
    write_run(second, [2.0, 1.6], status="stopped")
    with EventLog(experiment.directory / EVENTS_FILE) as emit:
        emit(ExperimentStarted(variations=[v.name for v in experiment.variations]))
        emit(VariationEnded(variation=experiment.variations[0].name, status="completed"))
        emit(VariationEnded(variation=experiment.variations[1].name, status="stopped"))
        emit(ExperimentEnded(status="stopped", reason="tuneterm stop"))
    results = results_of(experiment)
    assert results.status == "stopped" and [row.state for row in results.rows] == ["completed", "stopped", "pending"]
    assert (results.done, results.to_run) == (1, 3)
    with EventLog(experiment.directory / EVENTS_FILE) as emit:
        emit(ExperimentStarted(variations=[experiment.variations[1].name, experiment.variations[2].name], resumed=True))
    assert results_of(experiment).status == "interrupted"
    with EventLog(experiment.directory / EVENTS_FILE) as emit:
        emit(VariationEnded(variation=experiment.variations[2].name, status="failed",
                            reason="it could not start: the disk is full"))
    row = results_of(experiment).rows[2]
    assert (row.state, row.reason) == ("failed", "it could not start: the disk is full")
    markdown = results_markdown(results_of(experiment))
    assert "| 03-r32 | 32 | failed | - |" in markdown


def test_the_wizards_choice_of_settings_to_vary() -> None:
    from tuneterm.plan.ranges import experiment_ranges
    from tuneterm.ui.state.experiment_choice import ExperimentChoice

    config = load_config(base=BASE)
    ranges = experiment_ranges(config, None)
    assert [(r.key, r.values, r.chosen) for r in ranges] == [
        ("lora.r", (8, 16, 32), True), ("training.learning_rate", (1e-4, 2e-4, 4e-4), True),
        ("training.num_train_epochs", (1, 3, 5), False), ("lora.lora_dropout", (0.0, 0.05, 0.1), False)]
    choice = ExperimentChoice.of(config, "the wizard", ranges)
    assert [c.text for c in choice.choices][:2] == ["8, 16, 32", "1e-4, 2e-4, 4e-4"]
    choice.choices[0].text = "8, 16"
    choice.choices[1].chosen = False
    spec = choice.spec()
    assert spec is not None and spec.name == "r-alpha"
    assert [v.overrides for v in spec.variations()] == [{"lora.r": 8, "lora.lora_alpha": 16},
                                                        {"lora.r": 16, "lora.lora_alpha": 32}], "alpha = 2r"
    choice.choices[0].text = "8, big"
    assert choice.spec() is None and [str(p) for p in choice.problems] == [
        "lora.r: big: a number, as lora.lora_alpha follows it"]
    choice.choices[0].chosen = False
    assert choice.spec() is None and str(choice.problems[0]) == "tick at least one setting to vary"
    full = experiment_ranges(load_config(base={**BASE, "method": "full", "lora": {}}), None)
    assert [r.key for r in full] == ["training.learning_rate", "training.num_train_epochs"]
    assert full[0].values == (1e-5, 2e-5, 4e-5)
    assert not any(math.isnan(v) for r in full for v in r.values if isinstance(v, float))


def test_an_experiment_spec_is_written_so_each_variation_trains_alone(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": "hello"}])
    spec = ExperimentSpec("rates", load_config(base={**BASE, "data": {"train": str(data)}}), "run.yaml")
    spec.axes = [parse_vary("training.learning_rate=1e-4,2e-4")]
    directory = tmp_path / "experiment"
    directory.mkdir()
    experiment = write_experiment(spec, [(c.variation, c.config) for c in check_variations(spec)], directory)
    config = load_config(experiment.config_path(experiment.variations[1]))
    assert config.get("training.learning_rate") == 2e-4 and config.get("data.train") == str(data)
    assert config.get("training.output_dir") == str(directory / "02-lr2e-4")
    assert load_config(directory / "base.yaml").get("training.learning_rate") == 2e-4, "the base: the default"
