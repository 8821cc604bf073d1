"""The monitor's panes on what a run's start now carries: the memory estimate beside the GPU the run trains on,
the eval cadence; and a run recorded before its start carried them, shown without an estimate."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from pathlib import Path

from tests.helpers import DATA
from tests.ui.conftest import make_services, screen_of, wait_until
from tuneterm.engine.events import RunStarted, event_from_json
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.screens.monitor import MonitorScreen
from tuneterm.ui.screens.summary import SummaryScreen

ESTIMATE = 7.5e9


def recorded_run(runs: Path, resolved: bool) -> Path:
    """The recorded run; `resolved`: its start rewritten as the runner writes one now, on GPU 0 of this host."""
    run = runs / "recorded-run"
    shutil.copytree(DATA / "recorded-run", run)
    if resolved:
        path = run / "events.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if json.loads(line)["event"] == "RunStarted":
                started = event_from_json(line)
                assert isinstance(started, RunStarted)
                lines[index] = dataclasses.replace(
                    started, lr_scheduler_type="cosine", learning_rate=0.003, warmup_steps=14, eval_steps=9,
                    early_stopping_patience=3, effective_batch_size=16, estimated_memory={"weights": ESTIMATE},
                    estimated_memory_total=ESTIMATE,
                    processes=[{"rank": 0, "host": socket.gethostname(), "pid": 1, "gpu": 0}]).to_json()
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


async def system_tab(tmp_path: Path, resolved: bool) -> str:
    run = recorded_run(tmp_path / "runs", resolved)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=run))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view.result is not None,
                         what="the monitor")
        monitor = screen_of(app, MonitorScreen)
        assert monitor.view.started is not None
        assert monitor.view.started.eval_steps == 9 and monitor.view.patience == 3
        monitor.read_system()
        return str(monitor.query_one("#system-detail").render())


async def test_the_memory_estimate_of_the_start_shows_beside_the_gpu_the_run_trains_on(tmp_path: Path) -> None:
    detail = await system_tab(tmp_path, resolved=True)
    assert "GPU 0 NVIDIA RTX 4090 rank 0:" in detail
    assert "peak used 1.0 GB; the plan estimated 7.5 GB" in detail


async def test_a_run_recorded_before_its_start_carried_an_estimate_shows_none(tmp_path: Path) -> None:
    detail = await system_tab(tmp_path, resolved=False)
    assert "GPU 0 NVIDIA RTX 4090:" in detail and "peak used 1.0 GB" in detail
    assert "estimated" not in detail
