"""The monitor, driven as a person would: a real tiny run launched from the wizard until early stopping; its
controls and quitting during a run on the recorded run replayed; recorded runs shown the same at 100x30 and
80x24."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.helpers import DATA, noise_chat
from tests.ui.conftest import (
    RecordedRunner,
    assert_snapshot,
    make_services,
    recorded_events,
    screen_of,
    text_of,
    wait_for_plan,
    wait_until,
    wait_until_drawn,
)
from tuneterm.engine.events import CheckpointSaved, EvalFinished, RunFinished, read_events
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.screens.dialogs import AskNumber
from tuneterm.ui.screens.monitor import MonitorScreen
from tuneterm.ui.screens.summary import SummaryScreen
from tuneterm.ui.state.draft import Draft
from tuneterm.ui.widgets.chart import LineChart


def noise_run(tiny_model: Path, tmp_path: Path) -> dict:
    """Random answers cannot generalise: the eval loss turns up and early stopping fires in seconds."""
    return {"model": {"path": str(tiny_model)}, "data": noise_chat(tmp_path), "lora": {"r": 32, "lora_alpha": 64},
            "training": {"learning_rate": 2e-2, "num_train_epochs": 40, "per_device_train_batch_size": 4,
                         "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 2,
                         "warmup_steps": 0, "lr_scheduler_type": "constant", "gradient_checkpointing": False}}


async def launch(pilot: Pilot[None]) -> MonitorScreen:
    """From the wizard's review step: launched in the app once the plan is ready; its monitor."""
    app = pilot.app
    await wait_for_plan(pilot)
    await pilot.press("ctrl+r")
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
    return screen_of(app, MonitorScreen)


async def test_a_run_launched_from_the_wizard_fills_the_monitor_until_early_stopping(tiny_model: Path,
                                                                                    tmp_path: Path) -> None:
    draft = Draft.from_mapping(noise_run(tiny_model, tmp_path))
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, "review"))
    async with app.run_test(size=(100, 30)) as pilot:
        monitor = await launch(pilot)
        await wait_until(pilot, lambda: monitor.view.result is not None, timeout=180, what="the end of the run")
        await wait_until(pilot, lambda: monitor.drawn_version == monitor.view.version, what="the end drawn")
        result, best = monitor.view.result, monitor.view.best
        assert isinstance(result, RunFinished) and result.status == "early_stopped", result
        assert best is not None
        chart = monitor.query_one("#loss-chart", LineChart).figure
        assert len(chart.series["train"].ys) == result.global_step
        assert len(chart.series["eval"].ys) == len(monitor.view.evals)
        assert chart.vertical["best"][0] == best.step
        status = str(monitor.query_one("#run-status").render())
        assert "early stopped" in status and "best eval loss" in status
        panel = str(monitor.query_one("#early-stopping").render())
        assert f"best  {best.eval_loss:.4f} at step {best.step}" in panel
        assert "loads at the end: checkpoint-" in panel
        assert monitor.query_one("#rate-chart", LineChart).figure.series["planned"].ys
        assert (Path(result.run_dir) / "adapter_model.safetensors").is_file()
        await pilot.press("v")  # its summary, and l back to the same monitor
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the summary")
        await pilot.press("l")
        await wait_until(pilot, lambda: app.screen is monitor, what="back to the monitor")


async def test_a_run_launched_from_the_wizard_trains_on_the_data_the_wizard_prepared(
        tiny_model: Path, chat_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data step's pass is the run's: the run renders no conversation again (it is stopped once its data is
    prepared: training itself is the test above)."""
    from tuneterm.data import chat, template
    from tuneterm.engine.events import RunFailed
    from tuneterm.engine.run import runner

    rendered: list[int] = []
    render = template.render

    def counted(*args: Any, **kwargs: Any) -> str:
        rendered.append(1)
        return render(*args, **kwargs)

    prepared_when_the_model_loads: list[int] = []

    def load_model(*args: Any, **kwargs: Any) -> None:
        prepared_when_the_model_loads.append(len(rendered))
        raise RuntimeError("stopped once the data is prepared")

    monkeypatch.setattr(chat, "render", counted)
    monkeypatch.setattr(runner, "load_model", load_model)
    train = shutil.copy(chat_data["train"], tmp_path / "train.jsonl")  # a file no earlier pass prepared
    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(train)}})
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, "review"))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await wait_for_plan(pilot)
        assert wizard.planning.summary is not None
        by_the_wizard = len(rendered)
        assert by_the_wizard >= wizard.planning.summary.train.examples > 100
        monitor = await launch(pilot)
        await wait_until(pilot, lambda: monitor.view.result is not None, timeout=120, what="the run's end")
        result = monitor.view.result
        assert isinstance(result, RunFailed) and "stopped once the data is prepared" in result.reason, result
    assert prepared_when_the_model_loads == [by_the_wizard], "the run prepared its data again"


async def test_evaluate_now_and_stop_from_the_monitor(tiny_model: Path, chat_data: dict, tmp_path: Path) -> None:
    """On the recorded run replayed: what a stop leaves on disk is the quitting test's, on a real run."""
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}}
    scheduled = {event.step for event in recorded_events(tmp_path) if isinstance(event, EvalFinished)}
    runner = RecordedRunner(steps=3)
    services = make_services(tmp_path / "runs", train_run=runner)
    app = make_app(services, Opening("wizard", Draft.from_mapping(config), "review"))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        monitor = await launch(pilot)
        await wait_until(pilot, lambda: monitor.view.step >= 3, what="three steps")
        await pilot.press("e")
        runner.allow()  # the step in progress ends

        def evaluated_on_request() -> bool:
            """One more evaluation than the recorded run's: at a step of its own, or at a scheduled step (where the
            request lands when it is taken after that step), where the monitor shows the later one."""
            steps = [e.step for e in read_events(monitor.run_dir / "events.jsonl") if isinstance(e, EvalFinished)]
            return len(steps) > len(set(steps)) or any(step not in scheduled for step in steps)

        await wait_until(pilot, evaluated_on_request, what="an evaluation between the scheduled ones")
        await pilot.press("s")
        await wait_until(pilot, lambda: monitor.view.result is not None, what="the stop")
        result = monitor.view.result
        assert isinstance(result, RunFinished) and result.status == "stopped"
        assert any("Stopping after the current step" in n.message for n in app._notifications)
        assert not monitor.check_action("stop", ()), "a finished run cannot be stopped again"
        runner.allow()
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen is not monitor
                         and app.screen.view.started is not None and app.screen.view.step > result.global_step,
                         what="the resumed run")
        resumed = screen_of(app, MonitorScreen)
        assert resumed.run_dir == monitor.run_dir
        assert resumed.view.started is not None and resumed.view.started.resumed_from
        assert resumed.view.steps[0] == 1, "the resumed run's monitor shows the run from its first step"
        await pilot.press("s")
        await wait_until(pilot, lambda: resumed.view.result is not None, what="the second stop")
        second = resumed.view.result
        assert isinstance(second, RunFinished)
        assert second.status == "stopped" and second.global_step > result.global_step
        await pilot.press("v")  # its summary says what stopped it, and resumes it too
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        text = text_of(app.screen, "#summary-body")
        assert "Stopped by the monitor's stop key, with a checkpoint to resume from" in text
        assert f"tuneterm train --resume {resumed.run_dir}" in text
        runner.allow()
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view.started is not None
                         and app.screen.view.step > second.global_step, what="the run resumed from its summary")
        again = screen_of(app, MonitorScreen)
        await pilot.press("s")
        await wait_until(pilot, lambda: again.view.result is not None, what="the third stop")


async def test_quitting_during_an_in_app_run_stops_it_with_a_checkpoint(tiny_model: Path, chat_data: dict,
                                                                        tmp_path: Path) -> None:
    """Quitting asks the run of the app to stop and waits for it: it ends with a complete checkpoint to resume
    from (a real run's stop: tests/e2e/test_runs_outlive_the_terminal.py, whose terminal hangs up)."""
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}}
    services = make_services(tmp_path / "runs", train_run=RecordedRunner(steps=2))
    app = make_app(services, Opening("wizard", Draft.from_mapping(config), "review"))
    async with app.run_test(size=(100, 30)) as pilot:
        monitor = await launch(pilot)
        await wait_until(pilot, lambda: monitor.view.step >= 2, what="two steps")
        run_dir = monitor.run_dir
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.click("#yes")
        await wait_until(pilot, lambda: not app.is_running or app._exit, timeout=120, what="the app to quit")
    from tuneterm.engine.rundir.runs import summarise_run

    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "stopped"
    assert (run_dir / f"checkpoint-{summary.step}" / "tuneterm-complete.json").is_file()


async def _recorded(tmp_path: Path, size: tuple[int, int], name: str, tab: str = "overview") -> None:
    run = tmp_path / "runs" / "recorded-run"
    shutil.copytree(DATA / "recorded-run", run)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=run))
    async with app.run_test(size=size) as pilot:
        await curves_of_a_finished_run(app, pilot)
        monitor = screen_of(app, MonitorScreen)
        monitor.action_tab(tab)
        await wait_until(pilot, lambda: monitor.drawn_version == monitor.view.version, what="the panes drawn")
        await wait_until_drawn(pilot)
        assert_snapshot(app, name)


async def test_recorded_run_at_100x30(tmp_path: Path) -> None:
    await _recorded(tmp_path, (100, 30), "monitor_100x30")


async def test_recorded_run_at_80x24(tmp_path: Path) -> None:
    await _recorded(tmp_path, (80, 24), "monitor_80x24")


async def test_recorded_run_learning_rate_and_system_tabs(tmp_path: Path) -> None:
    await _recorded(tmp_path, (100, 30), "monitor_rate_100x30", "rate")


async def test_a_replayed_run_shows_every_evaluation(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "recorded-run"
    shutil.copytree(DATA / "recorded-run", run)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=run))
    async with app.run_test(size=(100, 30)) as pilot:
        await curves_of_a_finished_run(app, pilot)
        monitor = screen_of(app, MonitorScreen)
        recorded = [line for line in (run / "events.jsonl").read_text().splitlines() if "EvalFinished" in line]
        assert len(monitor.view.evals) == len(recorded)
        assert all(isinstance(e, EvalFinished) for e in monitor.view.evals)
        assert not monitor.check_action("stop", ())


async def curves_of_a_finished_run(app, pilot) -> None:
    """A finished run opens on its summary; l shows its curves in the monitor."""
    await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                     what="the summary")
    await pilot.press("l")
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view.result is not None,
                     what="the monitor")


async def test_tuneterm_runs_opens_with_the_cursor_on_the_runs_and_enter_opens_the_summary(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "recorded-run"
    shutil.copytree(DATA / "recorded-run", run)
    app = make_app(make_services(tmp_path / "runs"), Opening("runs"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.focused is not None and app.focused.id == "runs", what="the run list")
        await pilot.press("enter")
        await curves_of_a_finished_run(app, pilot)
        assert screen_of(app, MonitorScreen).run_dir == run
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="back to the summary")


async def test_save_now_and_patience_from_the_monitor(tiny_model: Path, chat_data: dict, tmp_path: Path) -> None:
    """`c` names the step its checkpoint is written at, `p` takes the patience typed while the run trains, and a
    patience dialog left open goes away when the run ends (the engine's side of both: tests/e2e/test_engine.py)."""
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}}
    runner = RecordedRunner(steps=2)
    services = make_services(tmp_path / "runs", train_run=runner)
    app = make_app(services, Opening("wizard", Draft.from_mapping(config), "review"))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        monitor = await launch(pilot)
        await wait_until(pilot, lambda: monitor.view.step >= 2, what="two steps")
        await pilot.press("c")
        named = [int(m.group(1)) for n in app._notifications
                 if (m := re.match(r"checkpoint-(\d+) is saved at the end of step \1\b", n.message))]
        assert named, [n.message for n in app._notifications]
        runner.allow()  # the step in progress ends
        await wait_until(pilot, lambda: any(c.step == named[0] for c in monitor.view.checkpoints),
                         what="the checkpoint named")
        await pilot.press("p")
        # The dialog selects its number when its field takes the focus: typed before that, the 7 would be added.
        await wait_until(pilot, lambda: isinstance(app.screen, AskNumber) and isinstance(app.focused, Input)
                         and app.focused.selected_text == app.focused.value, what="the patience dialog")
        await pilot.press("7", "enter")
        await wait_until(pilot, lambda: any(n.message.startswith("Patience 7 from the next step")
                                            for n in app._notifications), what="the patience typed, said")
        runner.allow()  # the next step, from which it counts
        await wait_until(pilot, lambda: monitor.view.patience == 7, what="the patience typed, applied")
        await pilot.press("p")
        await wait_until(pilot, lambda: isinstance(app.screen, AskNumber), what="the patience dialog again")
        monitor.handle.stop("the test")  # the run ends while the dialog is open
        await wait_until(pilot, lambda: monitor.view.result is not None, what="the end of the run")
        await wait_until(pilot, lambda: app.screen is monitor and any("The run has ended" in n.message
                                                                   for n in app._notifications),
                         what="the dialog closed with the run, saying so")
        run_dir = monitor.run_dir
    saved = [e.step for e in read_events(run_dir / "events.jsonl") if isinstance(e, CheckpointSaved)]
    assert named[0] in saved and (run_dir / f"checkpoint-{named[0]}").is_dir(), (named, saved)
