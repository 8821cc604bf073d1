"""The monitor, driven as a person would: a real tiny run launched from the wizard, its controls, recorded runs
shown the same at 100x30 and 80x24."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import DATA, noise_chat
from tests.ui.conftest import assert_snapshot, make_services, wait_until
from tuneterm.engine.events import EvalFinished, RunFinished
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.draft import Draft
from tuneterm.ui.screens.monitor import MonitorScreen
from tuneterm.ui.screens.summary import SummaryScreen


def noise_run(tiny_model: Path, tmp_path: Path) -> dict:
    """Random answers cannot generalise: the eval loss turns up and early stopping fires in seconds."""
    return {"model": {"path": str(tiny_model)}, "data": noise_chat(tmp_path), "lora": {"r": 32, "lora_alpha": 64},
            "training": {"learning_rate": 2e-2, "num_train_epochs": 40, "per_device_train_batch_size": 4,
                         "gradient_accumulation_steps": 1, "eval_steps": 2, "early_stopping_patience": 2,
                         "warmup_steps": 0, "lr_scheduler_type": "constant", "gradient_checkpointing": False}}


async def launch(pilot, draft: Draft) -> MonitorScreen:
    app = pilot.app
    await wait_until(pilot, lambda: app.screen.plan is not None and app.screen.plan.data is not None,
                     what="the plan")
    await pilot.press("ctrl+r")
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
    return app.screen


async def test_a_run_launched_from_the_wizard_fills_the_monitor_until_early_stopping(tiny_model: Path,
                                                                                    tmp_path: Path) -> None:
    draft = Draft.from_mapping(noise_run(tiny_model, tmp_path))
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, "review"))
    async with app.run_test(size=(100, 30)) as pilot:
        monitor = await launch(pilot, draft)
        await wait_until(pilot, lambda: monitor.view.result is not None, timeout=180, what="the end of the run")
        await pilot.pause(0.6)
        result = monitor.view.result
        assert isinstance(result, RunFinished) and result.status == "early_stopped", result
        chart = monitor.query_one("#loss-chart").figure
        assert len(chart.series["train"].ys) == result.global_step
        assert len(chart.series["eval"].ys) == len(monitor.view.evals)
        assert chart.vertical["best"][0] == monitor.view.best.step
        status = str(monitor.query_one("#run-status").render())
        assert "early stopped" in status and "best eval loss" in status
        panel = str(monitor.query_one("#early-stopping").render())
        assert f"best  {monitor.view.best.eval_loss:.4f} at step {monitor.view.best.step}" in panel
        assert "loads at the end: checkpoint-" in panel
        assert monitor.query_one("#rate-chart").figure.series["planned"].ys
        assert (Path(result.run_dir) / "adapter_model.safetensors").is_file()
        await pilot.press("v")  # its summary, and l back to the same monitor
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the summary")
        await pilot.press("l")
        await wait_until(pilot, lambda: app.screen is monitor, what="back to the monitor")


async def test_evaluate_now_and_stop_from_the_monitor(tiny_model: Path, chat_data: dict, tmp_path: Path) -> None:
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])},
              "training": {"learning_rate": 3e-3, "num_train_epochs": 30, "per_device_train_batch_size": 4,
                           "gradient_accumulation_steps": 1, "eval_steps": 50, "gradient_checkpointing": False}}
    draft = Draft.from_mapping(config)
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, "review"))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        monitor = await launch(pilot, draft)
        await wait_until(pilot, lambda: monitor.view.step >= 3, timeout=120, what="three steps")
        await pilot.press("e")
        await wait_until(pilot, lambda: any(e.step % 50 for e in monitor.view.evals if e.step), timeout=120,
                         what="an evaluation between the scheduled ones")
        await pilot.press("s")
        await wait_until(pilot, lambda: monitor.view.result is not None, timeout=120, what="the stop")
        result = monitor.view.result
        assert isinstance(result, RunFinished) and result.status == "stopped"
        assert (Path(result.run_dir) / f"checkpoint-{result.global_step}" / "tuneterm-complete.json").is_file()
        assert any("Stopping after the current step" in n.message for n in app._notifications)
        assert not monitor.check_action("stop", ()), "a finished run cannot be stopped again"
        await pilot.press("r")
        await wait_until(pilot, lambda: app.screen is not monitor and app.screen.view.started is not None
                         and app.screen.view.step > result.global_step, timeout=120, what="the resumed run")
        resumed = app.screen
        assert resumed.run_dir == monitor.run_dir and resumed.view.started.resumed_from
        assert resumed.view.steps[0] == 1, "the resumed run's monitor shows the run from its first step"
        await pilot.press("s")
        await wait_until(pilot, lambda: resumed.view.result is not None, timeout=120, what="the second stop")
        assert resumed.view.result.status == "stopped" and resumed.view.result.global_step > result.global_step
        await pilot.press("v")  # its summary says what stopped it, and resumes it too
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        text = str(app.screen.query_one("#summary").render())
        assert "Stopped by the monitor's stop key, with a checkpoint to resume from" in text
        assert f"tuneterm train --resume {resumed.run_dir}" in text
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view.started is not None
                         and app.screen.view.step > resumed.view.result.global_step, timeout=120,
                         what="the run resumed from its summary")
        again = app.screen
        await pilot.press("s")
        await wait_until(pilot, lambda: again.view.result is not None, timeout=120, what="the third stop")


async def test_quitting_during_an_in_app_run_stops_it_with_a_checkpoint(tiny_model: Path, chat_data: dict,
                                                                        tmp_path: Path) -> None:
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])},
              "training": {"num_train_epochs": 30, "per_device_train_batch_size": 4, "gradient_checkpointing": False,
                           "gradient_accumulation_steps": 1}}
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", Draft.from_mapping(config), "review"))
    async with app.run_test(size=(100, 30)) as pilot:
        monitor = await launch(pilot, Draft())
        await wait_until(pilot, lambda: monitor.view.step >= 2, timeout=120, what="two steps")
        run_dir = monitor.run_dir
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.click("#yes")
        await wait_until(pilot, lambda: not app.is_running or app._exit, timeout=120, what="the app to quit")
    from tuneterm.engine.rundir.runs import summarise_run

    summary = summarise_run(run_dir)
    assert summary.status == "stopped"
    assert (run_dir / f"checkpoint-{summary.step}" / "tuneterm-complete.json").is_file()


async def _recorded(tmp_path: Path, size: tuple[int, int], name: str, tab: str = "overview") -> None:
    run = tmp_path / "runs" / "recorded-run"
    shutil.copytree(DATA / "recorded-run", run)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=run))
    async with app.run_test(size=size) as pilot:
        await curves_of_a_finished_run(app, pilot)
        app.screen.action_tab(tab)
        await pilot.pause(1.2)  # the panes redraw on a timer
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
        monitor = app.screen
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
        assert app.screen.run_dir == run
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="back to the summary")
