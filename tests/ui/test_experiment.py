"""Experiments in the app: launched from the review step (the guides' ranges offered, the plan of every variation
shown), their table filling in as runs end, stopped and resumed from their view; a recorded experiment of the demo
read back (at 100x30 and 80x24), listed on the start screen beside the runs, each of its runs a key away. Runs
started here replay the recorded run (RecordedRunner): nothing trains."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Checkbox, DataTable, Input

from tests.helpers import DATA
from tests.ui.conftest import (
    RecordedRunner,
    assert_snapshot,
    copy_recorded_experiment,
    make_services,
    screen_of,
    text_of,
    wait_for_plan,
    wait_until,
    wait_until_drawn,
)
from tuneterm.engine.after.report import loss_text, report_of
from tuneterm.engine.events import EVENTS_FILE, RunStarted, read_events
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.screens.experiment import ExperimentScreen
from tuneterm.ui.screens.experiment_setup import ExperimentSetup
from tuneterm.ui.screens.start import StartScreen
from tuneterm.ui.screens.summary import SummaryScreen
from tuneterm.ui.state.draft import Draft


async def experiment_dialog(app: App[Any], pilot: Pilot[Any]) -> ExperimentSetup:
    """The experiment's dialog, opened with ctrl+e from the review step once the model and data are read."""
    await wait_for_plan(pilot)
    await pilot.press("ctrl+e")
    await wait_until(pilot, lambda: isinstance(app.screen, ExperimentSetup), what="the experiment's dialog")
    return screen_of(app, ExperimentSetup)


async def test_an_experiment_launched_from_the_review_step_fills_its_table_stops_and_goes_on(
        tiny_model: Path, chat_data: dict, tmp_path: Path) -> None:
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}}
    services = make_services(tmp_path / "runs", train_run=RecordedRunner(seconds_per_step=0.02))
    app = make_app(services, Opening("wizard", Draft.from_mapping(config), "review"))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        setup = await experiment_dialog(app, pilot)
        assert setup.query_one("#values-0", Input).value == "8, 16, 32", "rank, alpha following it"
        assert setup.query_one("#values-1", Input).value == "1e-4, 2e-4, 4e-4", \
            "half and twice the config's rate: the guides' rates are not for a model this small"
        assert "9 of 9 variations" in text_of(setup, "#experiment-plan")
        setup.query_one("#values-0", Input).value = "8, 16"
        setup.query_one("#vary-1", Checkbox).value = False
        await wait_until(pilot, lambda: "2 of 2 variations" in text_of(setup, "#experiment-plan"), what="replanned")
        plan = text_of(setup, "#experiment-plan")
        assert "01-r8-alpha16" in plan and "02-r16-alpha32" in plan
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, ExperimentScreen), what="the experiment's view")
        view = screen_of(app, ExperimentScreen)
        assert view.control is not None, "it runs in this app (not over SSH, not ticked detached)"

        def states() -> list[str]:
            return [row.state for row in view.results.rows] if view.results else []

        await wait_until(pilot, lambda: states() == ["completed", "running"] and view.results is not None
                         and view.results.rows[1].step >= 3, what="the first run ended and the second going")
        await pilot.press("s")
        await wait_until(pilot, lambda: view.results is not None and view.results.status == "stopped",
                         what="the experiment stopped")
        assert states() == ["completed", "stopped"]
        assert view.results is not None
        stopped_at = view.results.rows[1].step
        await wait_until(pilot, lambda: view.check_action("resume", ()), what="resume offered")
        await pilot.press("r")
        assert view.control is not None, "resumed in this app, as it ran"
        await wait_until(pilot, lambda: view.results is not None and view.results.status == "finished",
                         what="the experiment finished")
        assert app.screen is view
        results = view.results
        assert results is not None and states() == ["completed", "completed"]
        second = results.rows[1].run_dir
        resumed = [e.resumed_from for e in read_events(second / EVENTS_FILE) if isinstance(e, RunStarted)]
        assert resumed[-1] is not None and resumed[-1].endswith(f"checkpoint-{stopped_at}")
        table = view.query_one("#experiment-table", DataTable)
        assert table.row_count == 2 and [row.mark for row in results.rows].count("best") == 1
        assert results.rows[0].best_eval_loss == report_of(results.rows[0].run_dir).best_eval_loss
        await pilot.press("enter")  # the run under the cursor: ended, so its summary
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the run's summary")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is view, what="back to the experiment")


async def test_the_experiment_dialogs_plan_keeps_a_line_a_variation_and_scrolls_sideways_at_80x24(
        tiny_model: Path, chat_data: dict, tmp_path: Path) -> None:
    config = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}}
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", Draft.from_mapping(config), "review"))
    async with app.run_test(size=(80, 24)) as pilot:
        setup = await experiment_dialog(app, pilot)
        setup.query_one("#vary-2", Checkbox).value = True
        await wait_until(pilot, lambda: "27 of 27 variations" in text_of(setup, "#experiment-plan"), what="the plan")
        await wait_until_drawn(pilot)
        rows = text_of(setup, "#experiment-plan-table").splitlines()
        assert rows[0].split() == ["variation", "r", "alpha", "lr", "epochs", "steps", "memory", "time"]
        assert len(rows) == 1 + 27 + 1, "the header, the variations and the total"
        table = setup.query_one("#experiment-plan-table")
        assert max(len(row) for row in rows) > setup.query_one("#experiment-plan").size.width, "wider than the dialog"
        assert table.size.height == len(rows), "a line a variation: no row wraps"
        assert table.size.width >= max(len(row) for row in rows), "no row is cut: the table scrolls sideways"


async def test_a_recorded_experiment_at_100x30(tmp_path: Path) -> None:
    directory = copy_recorded_experiment(tmp_path / "runs" / "recorded-experiment")
    app = make_app(make_services(tmp_path / "runs"), Opening("experiment", run_dir=directory))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ExperimentScreen) and app.screen.results is not None)
        view = screen_of(app, ExperimentScreen)
        results = view.results
        assert results is not None and results.status == "finished"
        assert [row.mark for row in results.rows] == ["", "", "", "best"]
        for row in results.rows:  # each run's own eval losses
            assert loss_text(row.best_eval_loss) == loss_text(report_of(row.run_dir).best_eval_loss)
        status = text_of(view, "#experiment-status")
        assert "finished, 4 of 4 variations done, best 04-r16-alpha32-lr0.003 (1.6485)" in status
        findings = text_of(view, "#experiment-findings")
        assert "lora.r (with lora.lora_alpha): 8 → 16 -0.1359 (better) at learning_rate 0.0015" in findings
        await wait_until_drawn(pilot)
        assert_snapshot(app, "experiment_100x30")
        await pilot.press("e")  # the train loss instead
        assert view.show_train


async def test_a_recorded_experiment_at_80x24(tmp_path: Path) -> None:
    directory = copy_recorded_experiment(tmp_path / "runs" / "recorded-experiment")
    app = make_app(make_services(tmp_path / "runs"), Opening("experiment", run_dir=directory))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ExperimentScreen) and app.screen.results is not None)
        await wait_until_drawn(pilot)
        assert_snapshot(app, "experiment_80x24")


async def test_the_start_screen_lists_experiments_beside_runs_and_opens_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    copy_recorded_experiment(runs / "recorded-experiment")
    shutil.copytree(DATA / "recorded-run", runs / "recorded-run")
    app = make_app(make_services(runs), Opening("runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        start = screen_of(app, StartScreen)
        table = start.query_one("#runs", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2, what="the run and the experiment")
        row = table.get_row(str(runs / "recorded-experiment"))
        assert [str(cell) for cell in row[1:6]] == ["finished", "experiment", "model", "4/4 runs", "1.6485"]
        table.move_cursor(row=table.get_row_index(str(runs / "recorded-experiment")))
        await pilot.press("space")  # an experiment is not marked for comparing: its own view compares its runs
        assert not start.marked
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ExperimentScreen) and app.screen.results is not None,
                         what="the experiment's view")
        view = screen_of(app, ExperimentScreen)
        assert view.results is not None
        await pilot.press("down", "down", "down", "v")
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the fourth run's summary")
        assert screen_of(app, SummaryScreen).run_dir == view.results.rows[3].run_dir
