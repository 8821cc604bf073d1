"""Small modal dialogs: a yes/no question, a path to save to, a number, a choice, where to merge, what to export."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from tuneterm.ui.widgets.paths import PathInput

Answer = TypeVar("Answer")


class Dialog(ModalScreen[Answer]):
    """A dialog whose escape key and Cancel button (id "cancel", where it has one) answer None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancelled(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A question with two answers; escape answers no, and the arrows move between the answers."""

    BINDINGS = [Binding("escape", "answer(False)", "Cancel"),
                Binding("left", "app.focus_previous", show=False), Binding("right", "app.focus_next", show=False)]

    def __init__(self, question: str, yes: str = "Yes", no: str = "Cancel"):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, id="yes", variant="warning")
                yield Button(self.no, id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class AskPath(Dialog["Path | None"]):
    """A file path to write; an existing file is only replaced after asking."""

    def __init__(self, title: str, suggested: Path):
        super().__init__()
        self.title_text, self.suggested = title, suggested

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text)
            yield PathInput(str(self.suggested), id="path")
            yield Static(id="path-problem")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted, "#path")
    @on(Button.Pressed, "#save")
    def _chosen(self) -> None:
        path = Path(self.query_one("#path", Input).value.strip()).expanduser()
        problem = self.query_one("#path-problem", Static)
        if not path.name:
            problem.update("[$error]Give a file name.[/]")
            return
        if path.is_dir():
            problem.update(f"[$error]{path} is a directory; give a file name.[/]")
            return
        if not path.exists():
            self.dismiss(path)
            return

        def replace(answer: bool | None) -> None:
            if answer:
                self.dismiss(path)

        self.app.push_screen(Confirm(f"{path} exists. Replace it?", yes="Replace"), replace)


class AskNumber(Dialog["int | None"]):
    """A positive whole number."""

    def __init__(self, question: str, current: int):
        super().__init__()
        self.question, self.current = question, current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            yield Input(str(self.current), id="number", type="integer")
            yield Static(id="number-problem")

    @on(Input.Submitted, "#number")
    def _chosen(self, event: Input.Submitted) -> None:
        try:
            number = int(event.value)
        except ValueError:
            number = 0
        if number < 1:
            self.query_one("#number-problem", Static).update("[$error]A whole number, 1 or more.[/]")
            return
        self.dismiss(number)


class Choose(Dialog[Any]):
    """One of a few options, or none (escape)."""

    def __init__(self, title: str, options: list[tuple[str, Any]]):
        super().__init__()
        self.title_text, self.options = title, options

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text)
            yield OptionList(*(Option(label, id=str(index)) for index, (label, _) in enumerate(self.options)),
                             id="choices")

    @on(OptionList.OptionSelected, "#choices")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.options[int(event.option.id or 0)][1])


class AskMerge(Dialog["tuple[Path, float] | None"]):
    """Where to write a merged model, and at what strength of the adapter."""

    def __init__(self, suggested: Path, problem_of: Any):
        super().__init__()
        self.suggested = suggested
        self.problem_of = problem_of
        """problem_of(path) -> why the merge cannot write there, or None."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Merge the adapter into the base model, written to a new directory:")
            yield PathInput(str(self.suggested), id="merge-path")
            yield Label("Adapter strength: 1 as trained, 0.5 halves it (for an overfitted one):")
            yield Input("1.0", id="merge-scale", type="number")
            yield Static(id="merge-problem")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Merge", id="merge", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        path = self.query_one("#merge-path", Input)
        path.focus()
        path.cursor_position = len(path.value)

    @on(Input.Submitted)
    @on(Button.Pressed, "#merge")
    def _chosen(self) -> None:
        chosen = _path_and_scale(self, "merge", self.problem_of)
        if chosen is not None:
            self.dismiss(chosen)


def _path_and_scale(dialog: ModalScreen[Any], name: str, problem_of: Any) -> tuple[Path, float] | None:
    """The directory and adapter strength typed in a merge or export dialog, or None after saying what is wrong
    with them in its problem line."""
    path = Path(dialog.query_one(f"#{name}-path", Input).value.strip()).expanduser().absolute()
    problem = dialog.query_one(f"#{name}-problem", Static)
    try:
        scale = float(dialog.query_one(f"#{name}-scale", Input).value)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 2:
        problem.update("[$error]The strength is a number above 0 and at most 2.[/]")
        return None
    why = problem_of(path)
    if why:
        problem.update(f"[$error]{escape(why)}[/]")
        return None
    return path, scale


class AskExport(Dialog["tuple[str, str | None, Path, float] | None"]):
    """What to export (format and GGUF type), where to, and at what strength of the adapter."""

    FORMATS = (("GGUF (llama.cpp, LM Studio)", "gguf"), ("GGUF + Ollama Modelfile", "ollama"),
               ("adapter GGUF (llama.cpp --lora)", "adapter-gguf"), ("merged model (transformers)", "merged"))

    def __init__(self, run_dir: Path, quants: tuple[str, ...], default_quant: str, problem_of: Any):
        super().__init__()
        self.run_dir, self.quants, self.default_quant = run_dir, quants, default_quant
        self.problem_of = problem_of
        """problem_of(path) -> why the export cannot write there, or None."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the tuned model, checked against it before it is written:")
            yield Select(self.FORMATS, value="gguf", allow_blank=False, id="export-format", compact=True)
            yield Label("GGUF type (q8_0: near lossless; q4_k_m: a quarter of the size):")
            yield Select([(q, q) for q in self.quants], value=self.default_quant, allow_blank=False,
                         id="export-quant", compact=True)
            yield Label("Into a new directory:")
            yield Input(str(self._suggested("gguf")), id="export-path", compact=True)
            yield Label("Adapter strength: 1 as trained, 0.5 halves it:")
            yield Input("1.0", id="export-scale", type="number", compact=True)
            yield Static(id="export-problem")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", id="export", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def _suggested(self, format: str) -> Path:
        return self.run_dir.parent / f"{self.run_dir.name}-{format}"

    def on_mount(self) -> None:
        self.query_one("#export-format", Select).focus()

    @on(Select.Changed, "#export-format")
    def _format_changed(self, event: Select.Changed) -> None:
        quant = self.query_one("#export-quant", Select)
        quant.disabled = event.value == "merged"
        if event.value == "adapter-gguf":
            quant.value = "f16"
        path = self.query_one("#export-path", Input)
        if path.value in {str(self._suggested(value)) for _, value in self.FORMATS}:
            path.value = str(self._suggested(str(event.value)))

    @on(Input.Submitted)
    @on(Button.Pressed, "#export")
    def _chosen(self) -> None:
        format = str(self.query_one("#export-format", Select).value)
        quant = None if format == "merged" else str(self.query_one("#export-quant", Select).value)
        chosen = _path_and_scale(self, "export", self.problem_of)
        if chosen is not None:
            self.dismiss((format, quant, *chosen))
