"""Screenshots of every wizard step at 100x30, the settings step at 80x24, and the start screen: compared with
the SVG files in tests/ui/snapshots (TUNETERM_UPDATE_SNAPSHOTS=1 rewrites them after a deliberate change).

Deterministic: the model and data are built from fixed seeds at a fixed path (paths are on screen), the GPU and
the clock are fake, and the cursor does not blink.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tests.helpers import built_once, write_jsonl
from tests.ui.conftest import NOW, assert_snapshot, make_services, wait_for_plan, wait_until, wait_until_drawn
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.state.draft import Draft

FIXED = Path("/tmp/tuneterm-ui-snapshots-v1")


@pytest.fixture(scope="session")
def fixed_files() -> Path:
    """A tiny model and chat data at a fixed path, built once per machine."""
    def build(directory: Path) -> None:
        from tuneterm.demo import CHAT_TEMPLATE, build_model, build_tokenizer, conversations

        train, _ = conversations(random.Random(11))
        rows = [{"messages": messages} for messages in train[:120]]
        write_jsonl(directory / "data" / "train.jsonl", rows)
        corpus = [m["content"] for row in rows for m in row["messages"]]
        build_model(build_tokenizer(corpus, CHAT_TEMPLATE, vocab_size=300), corpus, directory / "model",
                    hidden_size=32, layers=1, steps=5)

    return built_once(FIXED, build)


def _finished_run(runs: Path, name: str, status: str, best: float | None, step: int) -> None:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"method: lora\nmodel:\n  path: {FIXED / 'model'}\n")
    events = [{"event": "PhaseStarted", "time": NOW - 7200, "phase": "loading tokenizer", "detail": ""},
              {"event": "RunFinished", "time": NOW - 3600, "status": status, "run_dir": str(run),
               "global_step": step, "best_eval_loss": best}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


async def test_start_screen(fixed_files: Path) -> None:
    runs = fixed_files / "runs"  # its path is on screen
    shutil.rmtree(runs, ignore_errors=True)
    _finished_run(runs, "20261122-101500-model-lora", "completed", 1.4213, 132)
    _finished_run(runs, "20261122-111500-model-lora", "stopped", None, 40)
    app = make_app(make_services(runs))
    async with app.run_test(size=(100, 30)) as pilot:
        # Drawn, not only listed: the footer comes a few frames after the rows.
        await wait_until(pilot, lambda: all(text in app.export_screenshot() for text in
                                            ("20261122-111500-model-lora", "Help")), what="the runs drawn")
        assert_snapshot(app, "start_100x30")


async def _wizard_at(fixed_files: Path, tmp_path: Path, step: str, size: tuple[int, int], name: str) -> None:
    draft = Draft.from_mapping({"model": {"path": str(fixed_files / "model")},
                                "data": {"train": str(fixed_files / "data" / "train.jsonl")},
                                "training": {"learning_rate": 1e-3}})
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, step))
    async with app.run_test(size=size) as pilot:
        await wait_for_plan(pilot)
        await wait_until_drawn(pilot)
        assert_snapshot(app, name)


@pytest.mark.parametrize("step", ["model", "data", "settings", "review"])
async def test_wizard_steps_at_100x30(fixed_files: Path, tmp_path: Path, step: str) -> None:
    await _wizard_at(fixed_files, tmp_path, step, (100, 30), f"wizard_{step}_100x30")


async def test_settings_at_80x24(fixed_files: Path, tmp_path: Path) -> None:
    await _wizard_at(fixed_files, tmp_path, "settings", (80, 24), "wizard_settings_80x24")
