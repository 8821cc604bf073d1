"""The dialogs: escape answers None, and so does the Cancel button of those that have one (both from the Dialog
they share), while a dialog's own answer still comes back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import Input

from tests.ui.conftest import wait_until
from tuneterm.ui.screens.dialogs import AskExport, AskMerge, AskNumber, AskPath, Choose, Dialog


def no_problem(path: Path) -> None:
    return None


DIALOGS: dict[str, Callable[[Path], Dialog[Any]]] = {
    "path": lambda folder: AskPath("Save the config to", folder / "run.yaml"),
    "number": lambda folder: AskNumber("Patience", 3),
    "choice": lambda folder: Choose("Which run?", [("the first", 1), ("the second", 2)]),
    "merge": lambda folder: AskMerge(folder / "merged", no_problem),
    "export": lambda folder: AskExport(folder / "run", ("q8_0", "f16"), "q8_0", no_problem),
}


class Asking(App[None]):
    def __init__(self, dialog: Dialog[Any]):
        super().__init__()
        self.dialog = dialog
        self.answers: list[Any] = []

    def on_mount(self) -> None:
        self.push_screen(self.dialog, self.answers.append)


@pytest.mark.parametrize(("kind", "how"), [*((kind, "escape") for kind in DIALOGS),
                                           *((kind, "the Cancel button") for kind in ("path", "merge", "export"))])
async def test_escape_and_the_cancel_button_answer_none(kind: str, how: str, tmp_path: Path) -> None:
    app = Asking(DIALOGS[kind](tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen is app.dialog, what="the dialog")
        if how == "escape":
            await pilot.press("escape")
        else:
            await pilot.click("#cancel")
        await wait_until(pilot, lambda: app.answers == [None], what="the answer")
        assert app.screen is not app.dialog


async def test_a_dialogs_own_answer_comes_back(tmp_path: Path) -> None:
    app = Asking(AskNumber("Patience", 3))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen is app.dialog, what="the dialog")
        app.dialog.query_one("#number", Input).value = "5"
        app.dialog.query_one("#number", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.answers == [5], what="the answer")
