"""Command palette providers: a screen's actions by name, searched with the palette's fuzzy matcher."""

from __future__ import annotations

from functools import partial

from textual.command import Hit, Hits, Provider


class ActionCommands(Provider):
    """Commands from a table of (name, action, help); actions run against the screen the palette opened on."""

    COMMANDS: tuple[tuple[str, str, str], ...] = ()

    async def discover(self) -> Hits:
        for name, action, help_text in self.COMMANDS:
            yield Hit(1.0, name, partial(self.app.run_action, action, self.screen), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in self.COMMANDS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self.app.run_action, action, self.screen),
                          help=help_text)
