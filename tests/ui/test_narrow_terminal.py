"""At 80x24, the smallest terminal tuneterm is made for: every screen's footer shows its keys whole, help last,
and the summary's long values wrap under themselves, never under their labels. The screens are those with the
most keys at once: the run list with runs marked, the wizard's data step, a run training, a stopped run's summary."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

from textual.app import App
from textual.widgets import Static

from tests.helpers import two_recorded_runs
from tests.ui.conftest import (
    RecordedRunner,
    make_services,
    save_placeholder_checkpoint,
    screen_of,
    wait_until,
    wait_until_drawn,
)
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.screens.monitor import MonitorScreen
from tuneterm.ui.screens.summary import SummaryScreen
from tuneterm.ui.screens.wizard import WizardScreen
from tuneterm.ui.state.draft import Draft

NARROW = (80, 24)


def footer_keys(app: App[Any]) -> str:
    """The footer's line as drawn (each piece of text at its column), without the command palette's corner."""
    screenshot = app.export_screenshot()
    pieces = re.findall(r'x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" clip-path="url\(#terminal-\d*-?line-(\d+)\)">'
                        r"([^<]*)</text>", screenshot)
    last = max(int(line) for _, line, _ in pieces)
    cells: dict[int, str] = {}
    for x, line, text in pieces:
        if int(line) == last:
            for offset, character in enumerate(html.unescape(text).replace("\xa0", " ")):
                cells[round(float(x) / 12.2) + offset] = character
    drawn = "".join(cells.get(column, " ") for column in range(max(cells) + 1))
    return drawn.split("▏")[0].strip()


def assert_footer_whole(app: App[Any], *keys: str) -> None:
    footer = footer_keys(app)
    assert footer.endswith("^q Quit f1 Help"), footer
    for key in keys:
        assert key in footer, (key, footer)


async def test_the_run_list_with_runs_marked(tmp_path: Path) -> None:
    two_recorded_runs(tmp_path / "runs")
    app = make_app(make_services(tmp_path / "runs"), Opening("runs"))
    async with app.run_test(size=NARROW) as pilot:
        await wait_until(pilot, lambda: app.focused is not None and app.focused.id == "runs", what="the run list")
        await pilot.press("space", "down", "space")
        await wait_until_drawn(pilot)
        assert_footer_whole(app, "n New run", "o Open", "d Demo", "space Mark", "C Compare")


async def test_the_wizards_data_step(tmp_path: Path, tiny_model: Path, chat_data: dict) -> None:
    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}})
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, "data"))
    async with app.run_test(size=NARROW) as pilot:
        wizard = screen_of(app, WizardScreen)
        await wait_until(pilot, lambda: wizard.planning.plan is not None, what="the plan")
        await wait_until_drawn(pilot)
        assert_footer_whole(app, "^n Next", "esc Back", "^t Suggestion", "^s Save", "^r Launch")
        assert "Browse (ctrl+o)" in str(wizard.query_one("#browse").render()), "ctrl+o said where it browses"


async def test_a_run_training_and_its_summary_once_stopped(tmp_path: Path, tiny_model: Path, chat_data: dict) -> None:
    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}})
    services = make_services(tmp_path / "runs", train_run=RecordedRunner(steps=2))
    app = make_app(services, Opening("wizard", draft, "review"))
    async with app.run_test(size=NARROW) as pilot:
        wizard = screen_of(app, WizardScreen)
        await wait_until(pilot, lambda: not wizard.planning.why_not_ready(), what="ready to launch")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view.step >= 2,
                         what="the run training")
        await wait_until_drawn(pilot)
        assert_footer_whole(app, "s Stop", "c Save", "e Eval", "p Patience", "Chart", "esc Back")
        await pilot.press("s")
        monitor = screen_of(app, MonitorScreen)
        await wait_until(pilot, lambda: monitor.view.result is not None, what="the stop")
        (monitor.run_dir / "adapter_model.safetensors").write_bytes(b"an adapter, as a stopped run saves one")
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        await wait_until_drawn(pilot)
        assert_footer_whole(app, "c Chat", "k Stop check", "e Export", "r Resume", "esc Back")


async def test_a_summary_wraps_long_values_under_themselves(tmp_path: Path) -> None:
    run = tmp_path / "runs" / ("a-run-directory-whose-name-is-long-enough-to-wrap-at-eighty-columns" + "-x" * 8)
    shutil.copytree(Path(__file__).parents[1] / "data" / "recorded-run", run)
    (run / "adapter_model.safetensors").write_bytes(b"an adapter")
    save_placeholder_checkpoint(run / "checkpoint-132", 132)
    events = (run / "events.jsonl").read_text().splitlines()
    finished = json.loads(events[-1])
    events[-1] = json.dumps({**finished, "status": "stopped"})
    (run / "events.jsonl").write_text("\n".join(events) + "\n")
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=run))
    async with app.run_test(size=NARROW) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        await wait_until_drawn(pilot)
        summary = screen_of(app, SummaryScreen)
        values = list(summary.query("#summary-rows .summary-value").results(Static))
        assert len({value.region.x for value in values}) == 1, "one column of values"
        labels = list(summary.query("#summary-rows .summary-label").results(Static))
        assert all(label.region.right <= values[0].region.x for label in labels)
        adapter = next(value for value in values if str(run) in str(value.render()))
        assert adapter.region.height > 1, "the path wraps, in its own column"
        assert_footer_whole(app, "c Chat", "k Stop check", "e Export", "r Resume", "esc Back")
