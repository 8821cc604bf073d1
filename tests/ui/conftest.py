"""The app under test: a fixed GPU, a fixed clock, a temporary runs directory, nothing read from this machine's
caches; and helpers to wait for the app's workers and compare screenshots."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tuneterm.hardware import GpuReading, GpuSurvey, HostReading
from tuneterm.ui.services import Services

SNAPSHOTS = Path(__file__).parent / "snapshots"
NOW = 1_795_000_000.0  # a fixed "now" for ages shown on screen

FAKE_GPU = GpuSurvey((GpuReading(index=0, name="NVIDIA RTX 4090", memory_total=24_000_000_000,
                                 memory_used=1_000_000_000, memory_free=23_000_000_000, utilization=0,
                                 temperature=35, power_watts=30.0, power_limit_watts=450.0,
                                 compute_capability=(8, 9)),), driver="580.1")
FAKE_HOST = HostReading(cpu_count=16, cpu_percent=3.0, memory_total=64_000_000_000, memory_available=60_000_000_000)


def make_services(runs_dir: Path, **changes: object) -> Services:
    services = Services(runs_dir=runs_dir, read_gpus=lambda: FAKE_GPU, read_host=lambda: FAKE_HOST,
                        cached_models=list, model_roots=(), built_demo=lambda: None, now=lambda: NOW,
                        over_ssh=False)
    for name, value in changes.items():
        setattr(services, name, value)
    return services


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return make_services(tmp_path / "runs")


async def wait_until(pilot, condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Let the app run (workers included) until `condition` holds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


def _steady(svg: str) -> str:
    """Textual names the SVG's CSS classes after a hash of the whole screenshot; the rest is the screen."""
    return re.sub(r"terminal-\d+", "terminal", svg)


def assert_snapshot(app, name: str) -> None:
    """The app's screen equals tests/ui/snapshots/NAME.svg. TUNETERM_UPDATE_SNAPSHOTS=1 writes it instead; a
    difference writes the new screen next to it as NAME.new.svg (open both in a browser to compare)."""
    from textual.widgets import Input

    for field in app.screen.query(Input):
        field.cursor_blink = False
    actual = _steady(app.export_screenshot(title=name))
    expected_path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("TUNETERM_UPDATE_SNAPSHOTS") == "1" or not expected_path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        expected_path.write_text(actual, encoding="utf-8")
        if os.environ.get("TUNETERM_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"no snapshot {expected_path} yet: written now; look at it and run again")
        return
    if _steady(expected_path.read_text(encoding="utf-8")) != actual:
        new = SNAPSHOTS / f"{name}.new.svg"
        new.write_text(actual, encoding="utf-8")
        pytest.fail(f"the screen differs from {expected_path}; the new one is {new}")
