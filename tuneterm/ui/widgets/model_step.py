"""Wizard step 1: the model. A path or hub id typed with completion, or one picked from those at hand (the
Hugging Face cache, local directories with a config.json, the demo), and what the chosen one is."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.widgets import Checkbox, DataTable, Input, Static

from tuneterm.plan.catalog import ModelDescription, ModelEntry
from tuneterm.plan.memory import size
from tuneterm.plan.model import ModelFacts, count
from tuneterm.ui.widgets.paths import PathInput, PathSuggester
from tuneterm.ui.widgets.tick import Tick

NO_TEMPLATE = ("no chat template: tuneterm renders conversations with its default instruction template "
               "(### Instruction / ### Response), each reply ended by the EOS token, so the model learns to stop")
REMOTE_CODE = ("this model's architecture is defined by Python code in its repository (auto_map): loading it runs "
               "that code on this machine. Allow it only for repositories you trust.")


@dataclass
class ModelPicked(Message, bubble=False):
    """A model was typed or picked from the list."""

    path: str
    """A local directory or a hub id, as typed or listed."""


@dataclass
class RemoteCodeAllowed(Message, bubble=False):
    """The person allowed (or no longer allows) the model's own code to run."""

    allowed: bool


def _when(seconds: float | None, now: float) -> str:
    if not seconds:
        return ""
    days = (now - seconds) / 86400
    return "today" if days < 1 else f"{days:.0f} days ago" if days < 60 else time.strftime("%Y-%m-%d",
                                                                                            time.localtime(seconds))


class ModelStep(VerticalScroll):
    def __init__(self, id: str | None = None):
        super().__init__(id=id)
        self.entries: list[ModelEntry] = []

    def compose(self) -> ComposeResult:
        yield Static("Model: a local directory or a Hugging Face hub id (enter to choose)")
        yield PathInput(placeholder="e.g. Qwen/Qwen3-0.6B or ./models/my-model", id="model-path",
                    suggester=PathSuggester(lambda: [e.path for e in self.entries]))
        yield Static(id="model-details")
        with Horizontal(id="remote-code-row"):
            yield Tick("allow it", id="remote-code", compact=True)
            yield Static(REMOTE_CODE, id="remote-code-why")
        yield Static("Models at hand (enter to choose)", classes="group-title")
        table: DataTable[str] = DataTable(id="model-list", cursor_type="row", zebra_stripes=True)
        table.add_columns("model", "from", "architecture", "size", "used")
        yield table

    def on_mount(self) -> None:
        self.query_one("#remote-code-row").display = False

    def list_models(self, entries: list[ModelEntry], now: float) -> None:
        self.entries = entries
        table = self.query_one("#model-list", DataTable)
        table.clear()
        for entry in entries:
            table.add_row(Text(entry.name), entry.source, Text(entry.architecture or "?"),
                          size(entry.size_bytes) if entry.size_bytes else "", _when(entry.last_used, now),
                          key=entry.path)
        if not entries:
            table.add_row("(none found: type a path or a hub id above)", "", "", "", "")

    def show_path(self, path: str | None) -> None:
        field = self.query_one("#model-path", Input)
        if path and field.value != path and not field.has_focus:
            field.value = path

    def show_description(self, description: ModelDescription | None, facts: ModelFacts | None,
                         trainable: tuple[int, int] | None, remote_code_allowed: bool, working: str = "") -> None:
        details = self.query_one("#model-details", Static)
        self.query_one("#remote-code-row").display = bool(description and description.needs_remote_code)
        allow = self.query_one("#remote-code", Checkbox)
        with allow.prevent(Checkbox.Changed):
            allow.value = remote_code_allowed
        if description is None:
            details.update(f"[$text-muted]{escape(working or 'No model chosen yet.')}[/]")
            return
        d = description
        lines = []
        if d.architecture:
            shape = " · ".join(part for part in (
                f"{d.layers} layers" if d.layers else "", f"hidden {d.hidden_size:,}" if d.hidden_size else "",
                f"vocabulary {d.vocab_size:,}" if d.vocab_size else "",
                f"context {d.context_length:,}" if d.context_length else "", d.dtype or "") if part)
            lines.append(f"[b]{escape(d.architecture)}[/b] ({escape(str(d.model_type))}) · {escape(shape)}")
        if facts is not None and trainable is not None:
            lines.append(f"{count(facts.total_params)} parameters; the adapter trains {count(trainable[0])} "
                         f"({trainable[0] / max(trainable[1], 1):.2%})")
        elif working:
            lines.append(f"[$text-muted]{escape(working)}[/]")
        if d.architecture:
            lines.append("chat template: the model's own" if d.has_chat_template else f"[$warning]{NO_TEMPLATE}[/]")
        if d.hub is not None and d.hub.gated and not d.problems:
            lines.append("[$text-muted]gated on the hub: this machine's login has access (tuneterm never stores "
                         "tokens)[/]")
        lines += [f"[$error]✗ {escape(problem)}[/]" for problem in d.problems]
        details.update("\n".join(lines))

    @on(Input.Submitted, "#model-path")
    @on(Input.Blurred, "#model-path")
    def _typed(self, event: Input.Submitted | Input.Blurred) -> None:
        """Enter, or leaving the field, applies what it shows: the draft never keeps a model the field no longer
        names (an unchanged path changes nothing)."""
        event.stop()
        if event.value.strip():
            self.screen.post_message(ModelPicked(event.value.strip()))

    @on(DataTable.RowSelected, "#model-list")
    def _picked(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value:
            self.query_one("#model-path", Input).value = event.row_key.value
            self.screen.post_message(ModelPicked(event.row_key.value))

    @on(Checkbox.Changed, "#remote-code")
    def _remote_code(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.screen.post_message(RemoteCodeAllowed(event.value))
