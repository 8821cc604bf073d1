"""The app's checkboxes say whether they are ticked without colour: the X is drawn only when ticked."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.content import Content

from tuneterm.ui.widgets.tick import Tick


class OneTick(App[None]):
    def compose(self) -> ComposeResult:
        yield Tick("allow it", compact=True)


def drawn(tick: Tick) -> str:
    rendered = tick.render()
    assert isinstance(rendered, Content)
    return rendered.plain


async def test_a_tick_draws_its_x_only_when_ticked() -> None:
    app = OneTick()
    async with app.run_test(size=(40, 3)) as pilot:
        tick = app.query_one(Tick)
        assert drawn(tick).startswith("▐ ▌ allow it")
        await pilot.click(Tick)
        assert tick.value
        assert drawn(tick).startswith("▐X▌ allow it")
        await pilot.click(Tick)
        assert not tick.value and drawn(tick).startswith("▐ ▌")
