"""After the run in the app: the summary a finished run opens on, the chat pane, and runs compared."""

from __future__ import annotations

import shutil
from pathlib import Path

from textual.widgets import DataTable, Input, Static

from tests.helpers import DATA
from tests.ui.conftest import assert_snapshot, make_services, screen_of, text_of, wait_until, wait_until_drawn
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.screens.chat import ChatScreen
from tuneterm.ui.screens.compare import CompareScreen
from tuneterm.ui.screens.dialogs import Choose
from tuneterm.ui.screens.summary import SummaryScreen
from tuneterm.ui.widgets.chart import LineChart


def _runs_with(finished_run, tmp_path: Path) -> tuple[Path, Path]:
    runs = tmp_path / "runs"
    runs.mkdir()
    tuned = runs / finished_run.run_dir.name
    shutil.copytree(finished_run.run_dir, tuned)
    recorded = runs / "recorded-run"
    shutil.copytree(DATA / "recorded-run", recorded)
    return tuned, recorded


async def test_a_finished_run_opens_on_its_summary_and_chat_answers_with_both_models(finished_run,
                                                                                    tmp_path: Path) -> None:
    tuned, _ = _runs_with(finished_run, tmp_path)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=tuned))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        text = text_of(app.screen, "#summary-body")
        assert "best" in text and "perplexity" in text and "its weights all changed" in text
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.model is not None,
                         timeout=120, what="the chat's model")
        chat = screen_of(app, ChatScreen)
        assert chat.samples  # the eval prompts the run kept
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, Choose), what="the eval prompts to choose from")
        await pilot.wait_for_scheduled_animations()
        await pilot.press("enter")  # the first eval prompt
        await wait_until(pilot, lambda: not chat.generating and chat.answers.get("base"), timeout=120,
                         what="both answers")
        assert chat.query_one("#pane-reference").display
        assert chat.answers["tuned"] != chat.answers["base"]
        assert "ended by itself" in str(chat.query_one("#title-tuned", Static).render()) or \
            "without ending" in str(chat.query_one("#title-tuned", Static).render())
        prompt = chat.query_one("#chat-prompt", Input)
        prompt.value = "What is 3 plus 3?"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and chat.answers.get("base") is not None, timeout=120)
        assert not chat.query_one("#pane-reference").display  # a typed prompt has no reference


async def test_two_marked_runs_are_compared_with_their_differing_settings(finished_run, tmp_path: Path) -> None:
    tuned, recorded = _runs_with(finished_run, tmp_path)
    app = make_app(make_services(tmp_path / "runs"), Opening("runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.focused is not None and app.focused.id == "runs", what="the run list")
        await pilot.press("space", "down", "space", "C")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.curves,
                         what="the comparison")
        screen = screen_of(app, CompareScreen)
        assert {run.run_dir for run in screen.curves} == {tuned, recorded}
        assert len(screen.query_one("#compare-chart", LineChart).figure.series) == 2
        assert screen.query_one("#compare-table", DataTable).row_count > 0
        await pilot.press("t")  # by tokens seen: the recorded run kept no token counts, and says so
        await wait_until(pilot, lambda: any("no token counts" in n.message for n in app._notifications),
                         what="the reason tokens cannot align these runs")
        await wait_until(pilot, lambda: screen.axis == "step", what="back to steps")


async def test_runs_compared_at_80x24_are_named_whole_and_differ_only_in_what_they_were_given(tmp_path: Path) -> None:
    from tests.helpers import two_recorded_runs

    first, second = two_recorded_runs(tmp_path / "runs")
    app = make_app(make_services(tmp_path / "runs"), Opening("runs"))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await wait_until(pilot, lambda: app.focused is not None and app.focused.id == "runs", what="the run list")
        title = app.screen.query_one("#runs-title", Static)
        await pilot.press("space")
        assert str(title.render()).endswith(": 1 marked, mark another to compare them")
        await pilot.press("down", "space")
        assert str(title.render()).endswith(": 2 marked, C compares them")
        await pilot.pause()
        assert not app._notifications, "the hint is in the title, never over the list"
        await pilot.press("C")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.curves,
                         what="the comparison")
        screen = screen_of(app, CompareScreen)
        table = screen.query_one("#compare-table", DataTable)
        assert [str(column.label) for column in table.columns.values()] == ["setting", "223015", "221907"]
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == [
            "training.learning_rate", "training.per_device_train_batch_size"]
        legend = str(screen.query_one("#compare-legend", Static).render())
        assert f"223015  {second.name}" in legend and f"221907  {first.name}" in legend
        await wait_until_drawn(pilot)
        assert_snapshot(app, "compare_80x24")


async def test_summary_of_a_recorded_run_at_80x24(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "recorded-run"
    shutil.copytree(DATA / "recorded-run", run)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=run))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None)
        await wait_until_drawn(pilot)
        assert not app.screen.check_action("chat", ())  # it saved no adapter: nothing to chat with or merge
        assert_snapshot(app, "summary_80x24")
