"""Paths typed or picked: an input that shows the end of a path, completion for paths and hub ids typed into it
(the next directory entry, or a known name), and the file picker for a data file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import events
from textual.suggester import Suggester
from textual.widgets import Input

from tuneterm.data.records import FILE_SUFFIXES

if TYPE_CHECKING:
    from textual_fspicker import FileOpen


def is_data_file(path: Path) -> bool:
    """Whether tuneterm reads the file as data (JSON lines, JSON, CSV, Parquet)."""
    return path.suffix in FILE_SUFFIXES


def data_file_picker(current: str | None) -> FileOpen:
    """A file dialog for the training data, opened where the current data file is (else here)."""
    from textual_fspicker import FileOpen, Filters

    start = Path(current).parent if current and Path(current).exists() else Path.cwd()
    return FileOpen(start, filters=Filters(("Datasets", is_data_file), ("Any", lambda path: True)))


class PathSuggester(Suggester):
    """Completes a known name (hub ids of cached models), else the next matching entry of the typed directory;
    `accept` filters files (directories are always offered)."""

    def __init__(self, names: Callable[[], list[str]] = list, accept: Callable[[Path], bool] = lambda path: True):
        super().__init__(use_cache=False, case_sensitive=True)
        self.names, self.accept = names, accept

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        for name in self.names():
            if name.startswith(value) and name != value:
                return name
        typed = Path(value).expanduser()
        parent, prefix = (typed, "") if value.endswith("/") else (typed.parent, typed.name)
        try:
            entries = sorted(parent.iterdir())
        except OSError:
            return None
        for entry in entries:
            if entry.name.startswith(prefix) and not entry.name.startswith(".") and (entry.is_dir() or
                                                                                     self.accept(entry)):
                return value + entry.name[len(prefix):] + ("/" if entry.is_dir() else "")
        return None


class PathInput(Input):
    """An input for a path or a hub id. It shows the end of what it holds (the file name, the last directory) whole
    while the cursor is at the end or elsewhere on the screen, however its width changes: a long path is cut at its
    start, never at its end."""

    def show_end(self) -> None:
        if not self.has_focus:
            self.cursor_position = len(self.value)
        if self.cursor_at_end:  # (the cursor's cell past the end, too)
            self.scroll_to(x=self.max_scroll_x, animate=False, immediate=True)

    def watch_value(self) -> None:
        self.call_after_refresh(self.show_end)

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.show_end)

    def on_blur(self, event: events.Blur) -> None:
        self.call_after_refresh(self.show_end)
