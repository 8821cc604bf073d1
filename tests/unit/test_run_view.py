"""The monitor's model of a run, fed recorded event streams: numbers, resumed steps, and the sentinels."""

from __future__ import annotations

import dataclasses
import math
import random

from tests.helpers import DATA
from tuneterm.config import config_from_mapping
from tuneterm.engine.events import (
    EvalFinished,
    PhaseStarted,
    RunFinished,
    RunStarted,
    StepLogged,
    event_from_json,
    read_events,
)
from tuneterm.plan.resolve import schedule_of
from tuneterm.plan.schedule import learning_rates
from tuneterm.ui.state.run_view import RunView, ema

RECORDED = DATA / "recorded-run"


def started(total: int = 100, eval_steps: int = 10) -> RunStarted:
    return RunStarted(time=0.0, run_dir="r", config={"training": {"eval_steps": eval_steps, "learning_rate": 2e-4,
                                                                  "lr_scheduler_type": "cosine", "warmup_steps": 0.1,
                                                                  "early_stopping_patience": 3}},
                      defaulted=[], notes={}, train_examples=160, eval_examples=16, steps_per_epoch=10,
                      total_steps=total, trainable_params=1, total_params=10, device="CPU")


def steps(view: RunView, losses: list[float], grads: list[float] | None = None, first: int = 1) -> None:
    for offset, loss in enumerate(losses):
        view.apply(StepLogged(time=float(first + offset), step=first + offset, max_steps=100, epoch=0.0, loss=loss,
                              learning_rate=1e-4, grad_norm=(grads or [1.0] * len(losses))[offset]))


def evaluation(step: int, loss: float, baseline: float | None = None, best: tuple[float, int] | None = None,
               since: int = 0) -> EvalFinished:
    return EvalFinished(step=step, epoch=0.0, eval_loss=loss, baseline_eval_loss=baseline,
                        best_eval_loss=best[0] if best else None, best_step=best[1] if best else None,
                        evals_since_improvement=since, patience=3)


def titles(view: RunView) -> list[str]:
    return [s.title for s in view.sentinels()]


def test_a_recorded_run_replays_to_its_numbers() -> None:
    view = RunView()
    for event in read_events(RECORDED / "events.jsonl"):
        view.apply(event)
    assert view.state == "completed" and view.step == 132 == view.total_steps
    assert len(view.steps) == 132 and view.baseline is not None and math.isclose(view.baseline, 3.3135, rel_tol=1e-4)
    assert view.best is not None and view.best.step == 117
    curve = view.planned_rates(points=1000)
    assert curve is not None
    planned = dict(curve)
    for step, rate in zip(view.steps, view.rates):  # the planned curve is the one the Trainer followed
        if step in planned:
            assert math.isclose(planned[step], rate, rel_tol=1e-6, abs_tol=1e-12)
    assert view.elapsed() > 0 and view.eta() is None
    assert view.sentinels() == []


def test_a_resumed_run_replaces_the_steps_it_logs_again() -> None:
    view = RunView()
    view.apply(started())
    steps(view, [3.0, 2.0, 1.5, 1.4, 1.3])
    steps(view, [1.45, 1.35], first=4)  # resumed from checkpoint-3
    assert list(view.steps) == [1, 2, 3, 4, 5] and list(view.losses) == [3.0, 2.0, 1.5, 1.45, 1.35]


def test_a_nan_is_an_error_and_never_a_number_on_screen() -> None:
    view = RunView()
    view.apply(started())
    steps(view, [2.0, 1.8, math.nan])
    assert titles(view) == ["non-finite loss or gradient norm at step 3"]
    assert view.sentinels()[0].level == "error"
    assert all(math.isfinite(v) for v in ema(list(view.losses))[:2]) and math.isnan(view.losses[2])


def test_a_train_loss_under_0_2_warns_of_memorising() -> None:
    view = RunView()
    view.apply(started())
    steps(view, [1.0] * 10 + [0.15] * 20)
    assert any("under 0.2" in t for t in titles(view))


def test_eval_rising_while_train_falls_warns_of_overfitting() -> None:
    view = RunView()
    view.apply(started())
    view.apply(evaluation(0, 3.0, 3.0))
    steps(view, [2.0 - 0.02 * i for i in range(40)])
    for step, loss in ((10, 1.5), (20, 1.6), (30, 1.7), (40, 1.8)):
        view.apply(evaluation(step, loss, 3.0, (1.5, 10)))
    assert "eval loss rising while train loss falls" in titles(view)
    flat = RunView()
    flat.apply(started())
    steps(flat, [2.0] * 40)
    for step, loss in ((10, 1.5), (20, 1.6), (30, 1.7), (40, 1.8)):
        flat.apply(evaluation(step, loss))
    assert "eval loss rising while train loss falls" not in titles(flat), "train loss is not falling"


def test_a_gradient_norm_spike_is_flagged_against_the_median_before_it() -> None:
    rng = random.Random(0)
    view = RunView()
    view.apply(started())
    grads = [1.0 + rng.random() * 0.2 for _ in range(30)] + [9.0]
    steps(view, [1.0] * 31, grads)
    assert any(t.startswith("gradient norm spike: 9.00 at step 31") for t in titles(view))
    steps(view, [1.0], [1.1], first=32)
    assert any(t.startswith("gradient norm spike: 9.00 at step 31") for t in titles(view)), "not gone at once"
    steps(view, [1.0] * 50, [1.1] * 50, first=33)
    assert not any(t.startswith("gradient norm spike") for t in titles(view)), "shown for 50 steps"


def test_no_evaluation_better_than_the_baseline_is_flagged() -> None:
    view = RunView()
    view.apply(started())
    view.apply(evaluation(0, 2.0, 2.0))
    steps(view, [1.9] * 20)
    view.apply(evaluation(10, 2.1, 2.0, since=1))
    assert "no evaluation has beaten the eval loss before training" not in titles(view), "one evaluation is noise"
    view.apply(evaluation(20, 2.2, 2.0, since=2))
    assert "no evaluation has beaten the eval loss before training" in titles(view)
    assert view.best is None
    view.apply(RunFinished(status="completed", run_dir="r", global_step=20, outcome="worse_than_baseline"))
    assert view.state == "completed" and not view.live


def test_progress_numbers() -> None:
    view = RunView()
    view.apply(started(total=100))
    steps(view, [1.0] * 20)  # one step per second in the recorded times
    assert view.next_eval_step() == 30
    assert view.eta() == 80.0
    assert view.samples_per_second() == 16.0


def test_the_log_hands_on_new_lines_after_old_ones_fell_out() -> None:
    view = RunView()
    for step in range(1, 2501):
        view.apply(evaluation(step, 1.0))
    assert view.new_log_lines(2500) == []
    assert view.new_log_lines(2498) == ["eval at step 2,499: loss 1.0000", "eval at step 2,500: loss 1.0000"]
    assert len(view.new_log_lines(0)) == 2000, "at most the lines kept"


def test_time_lying_stopped_is_not_counted_and_paces_start_again_after_a_resume() -> None:
    view = RunView()
    view.apply(started(total=100))
    steps(view, [1.0] * 20)  # steps 1..20 at t = 1..20
    view.apply(RunFinished(time=20.0, status="stopped", run_dir="r", global_step=20))
    view.apply(PhaseStarted(time=990.0, phase="loading", detail="the resumed run loads its model"))
    resumed = started(total=100)
    view.apply(RunStarted(**{**resumed.__dict__, "time": 1000.0, "resumed_from": "checkpoint-10"}))
    assert view.eta() is None, "no pace yet in the resumed run"
    for step in range(11, 14):  # the resumed run logs steps 11.. again, two seconds apart
        view.apply(StepLogged(time=1000.0 + 2 * (step - 10), step=step, max_steps=100, epoch=0.0, loss=1.0,
                              learning_rate=1e-4, grad_norm=1.0))
    assert list(view.steps) == list(range(1, 14))
    assert view.elapsed() == 20.0 + 6.0
    assert view.eta() == 2.0 * (100 - 13)
    assert view.samples_per_second() == 8.0


def recorded_start() -> RunStarted:
    return next(e for e in read_events(RECORDED / "events.jsonl") if isinstance(e, RunStarted))


def as_written_now(recorded: RunStarted) -> RunStarted:
    """The recorded start as the runner writes it now: what the run resolved in fields of its own, from the plan's
    schedule; its config left out, so that nothing can come from there."""
    config = config_from_mapping(recorded.config)
    plan = schedule_of(config, recorded.train_examples, recorded.eval_examples)
    assert plan.total_steps == recorded.total_steps
    return dataclasses.replace(
        recorded, config={}, lr_scheduler_type=config.get("training.lr_scheduler_type"),
        learning_rate=config.get("training.learning_rate"), warmup_steps=plan.warmup_steps,
        eval_steps=plan.eval_steps, early_stopping_patience=config.get("training.early_stopping_patience"),
        effective_batch_size=plan.effective_batch_size, estimated_memory={"weights": 2e6, "activations": 1e6},
        estimated_memory_total=3e6)


def viewing(*events) -> RunView:
    view = RunView()
    for event in events:
        view.apply(event)
    return view


def test_what_the_run_resolved_round_trips_through_events_jsonl() -> None:
    now = as_written_now(recorded_start())
    assert event_from_json(now.to_json()) == now
    recorded = recorded_start()  # a line written before these fields: it loads, with them at their defaults
    assert (recorded.warmup_steps, recorded.eval_steps, recorded.effective_batch_size) == (None, None, None)
    assert recorded.estimated_memory == {} and recorded.estimated_memory_total is None


def test_the_monitor_draws_the_learning_rates_the_plan_computes() -> None:
    """From the fields of a start written now, and from the config of one written before them: the same curve,
    the one plan/schedule.py computes for the recorded run (cosine, 14 warmup steps of 132)."""
    recorded = recorded_start()
    planned = learning_rates("cosine", 0.003, 14, 132, 400)
    for start in (as_written_now(recorded), recorded):
        view = viewing(start)
        assert view.planned_rates() == planned
        assert view.next_eval_step() == 9
        assert view.patience == 3


def test_the_fields_of_the_start_win_over_its_config() -> None:
    start = dataclasses.replace(as_written_now(recorded_start()), config=started().config)
    view = viewing(start)
    assert view.planned_rates() == learning_rates("cosine", 0.003, 14, 132, 400)
    assert view.next_eval_step() == 9, "not the config's eval_steps (10)"


def test_samples_per_second_count_the_effective_batch_and_old_runs_the_average_per_step() -> None:
    now = viewing(dataclasses.replace(started(), effective_batch_size=20))
    steps(now, [1.0] * 10)  # one step per second
    assert now.samples_per_second() == 20.0
    before = viewing(started())  # 160 examples, 10 steps an epoch
    steps(before, [1.0] * 10)
    assert before.samples_per_second() == 16.0


def test_the_memory_estimate_comes_with_the_start_and_old_runs_have_none() -> None:
    now, before = viewing(as_written_now(recorded_start())).started, viewing(recorded_start()).started
    assert now is not None and now.estimated_memory_total == 3e6
    assert before is not None and before.estimated_memory_total is None


def test_the_gpus_of_the_run_are_those_of_its_processes_on_this_host() -> None:
    processes = [{"rank": 0, "host": "here", "pid": 1, "gpu": 2}, {"rank": 1, "host": "here", "pid": 2, "gpu": 3},
                 {"rank": 2, "host": "there", "pid": 3, "gpu": 0}, {"rank": 3, "host": "here", "pid": 4, "gpu": None}]
    view = viewing(dataclasses.replace(started(), processes=processes))
    assert view.ranks_by_gpu("here") == {2: 0, 3: 1}
    assert viewing(started()).ranks_by_gpu("here") == {}
