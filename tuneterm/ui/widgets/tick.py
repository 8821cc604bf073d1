"""A checkbox whose mark says whether it is ticked without colour.

Textual's Checkbox draws ▐X▌ ticked or not and tells the two apart by colour alone, which a monochrome terminal, a
terminal whose theme makes the two colours close, or a screen copied as text loses. This one draws its X only when
ticked: ▐X▌ on, ▐ ▌ off.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox


class Tick(Checkbox):
    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "X" if self.value else " "
        return super()._button
