"""Wizard step 2: the data. A file, folder or hub dataset id; what reading it found (format and evidence,
problems with their lines); examples as the model sees them, the trained text highlighted; token lengths and
what the max length cuts; the held-out share or an eval file.

The reading itself runs in a worker of the wizard (with progress and cancel); this step shows its results and
posts what the person changes to the wizard screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, Select, Sparkline, Static

from tuneterm.data.columns import FIELD_HELP
from tuneterm.data.formats import FIELDS, FORMATS, FormatUnknown
from tuneterm.data.inspect import holdings_line, thinking_line
from tuneterm.data.pipeline import Preview
from tuneterm.data.summary import DataView, SourceSummary
from tuneterm.engine.after.report import clock
from tuneterm.errors import Problem, TuneTermError
from tuneterm.ui.state.planning import ColumnMapper
from tuneterm.ui.widgets.fields import parse
from tuneterm.ui.widgets.paths import PathInput, PathSuggester, is_data_file
from tuneterm.ui.widgets.tick import Tick
from tuneterm.work import Progress

UNMAPPED = "(not in the data)"


@dataclass
class DataSettingChanged(Message, bubble=False):
    """data.train, data.eval, data.val_size, data.format, data.strict or data.columns changed."""

    key: str
    value: Any
    """The new value; None: unset, so the default applies."""


@dataclass
class BrowseRequested(Message, bubble=False):
    """The person asked for the file dialog to pick the training data."""


@dataclass
class CancelRequested(Message, bubble=False):
    """The person asked to stop reading the data."""


class PreviewPane(Widget, can_focus=True):
    """One example at a time as the model is trained on it: trained text bold, masked text dim; left and right
    step through the examples, and a max length that cuts the example is marked where it cuts."""

    BINDINGS = [Binding("left", "step(-1)", "Previous example", show=False),
                Binding("right", "step(1)", "Next example", show=False)]

    def __init__(self, id: str | None = None):
        super().__init__(id=id)
        self.previews: list[Preview] = []
        self.index = 0
        self.max_length: int | None = None

    def show(self, previews: list[Preview], max_length: int | None) -> None:
        self.previews, self.max_length = previews, max_length
        self.index = min(self.index, max(len(previews) - 1, 0))
        self.refresh(layout=True)

    def action_step(self, delta: int) -> None:
        if self.previews:
            self.index = (self.index + delta) % len(self.previews)
            self.refresh(layout=True)

    def render(self) -> str:
        if not self.previews:
            return "[$text-muted]Examples appear here once the data is read.[/]"
        preview = self.previews[self.index]
        cut = preview.cut_at(self.max_length) if self.max_length else None
        header = (f"[b]example {self.index + 1} of {len(self.previews)}[/b] ({escape(preview.location.where())}): "
                  f"{preview.trained_tokens} of {preview.total_tokens} tokens trained, [b $success]in bold[/]")
        shown = dict.fromkeys(part for _, _, part in preview.segments if part)
        if shown:
            header += "; " + ", ".join(_style(part, part == "tool result", part) for part in shown)
        if cut is not None:
            header += f"\n[$warning]max length {self.max_length} cuts this example at ✂[/]"
        body, position = [], 0
        for text, trained, part in preview.segments:
            pieces = [text]
            if cut is not None and position <= cut < position + len(text):
                pieces = [text[:cut - position], "\0", text[cut - position:]]
            for piece in pieces:
                if piece == "\0":
                    body.append("[$warning]✂[/]")
                elif piece:
                    body.append(_style(escape(piece), not trained, part))
            position += len(text)
        return header + "\n" + "".join(body)


_PART_STYLES = {"": "$success", "reasoning": "$accent", "tool call": "$primary", "tool result": "$warning"}
"""Answers green, reasoning in the accent colour, tool calls in the primary colour, tool results in warning."""


def _style(markup: str, masked: bool, part: str) -> str:
    """Trained text bold in its part's colour; masked text dim (a tool result also italic, in its colour)."""
    if masked:
        return f"[dim i {_PART_STYLES[part]}]{markup}[/]" if part else f"[dim]{markup}[/]"
    return f"[b {_PART_STYLES[part]}]{markup}[/]"


HELD_OUT_PLACEHOLDER = "0.1 (default: 10% for the eval loss)"


def progress_text(progress: Progress) -> str:
    """"reading train.jsonl: 12,288 records, 2,310/s, 0:00:08 left" (the pace once it can be told)."""
    text = f"{progress.stage}: {progress.done:,} records"
    if progress.rate is not None:
        text += f", {progress.rate:,.0f}/s"
    if progress.seconds_left is not None:
        text += f", {clock(progress.seconds_left)} left"
    return text


class DataStep(VerticalScroll):
    def __init__(self, id: str | None = None):
        super().__init__(id=id)
        self.mapper: ColumnMapper | None = None
        """What the column mapper shows (None: it is hidden)."""

    def compose(self) -> ComposeResult:
        yield Static("Training data: a .jsonl / .json / .csv / .parquet file, a folder, or a hub dataset id")
        with Horizontal(classes="path-row"):
            yield PathInput(placeholder="e.g. data/train.jsonl or org/dataset:train", id="data-path",
                        suggester=PathSuggester(accept=is_data_file))
            yield Button("Browse (ctrl+o)", id="browse", compact=True)
        with Horizontal(classes="setting-row"):
            yield Label("eval file", classes="setting-label")
            yield PathInput(placeholder="none: hold out part of the training data", id="eval-path", compact=True,
                        suggester=PathSuggester(accept=is_data_file))
        with Horizontal(classes="setting-row"):
            yield Label("held out", classes="setting-label")
            yield Input(placeholder=HELD_OUT_PLACEHOLDER, id="val-size", compact=True)
        with Horizontal(classes="setting-row"):
            yield Label("format", classes="setting-label")
            yield Select([(f, f) for f in ("auto", *FORMATS)], value="auto", allow_blank=False, id="format",
                         compact=True)
        with Horizontal(classes="setting-row"):
            yield Label("invalid records", classes="setting-label")
            yield Tick("skip them, say which", id="leave-out-invalid", compact=True,
                           tooltip="data.strict: false. Train on the valid records and name each one left out, "
                                   "instead of stopping")
        with Horizontal(classes="setting-row", id="reasoning-row"):
            yield Label("reasoning", classes="setting-label")
            yield Select([("auto: as each example holds it", "auto"), ("keep: train every reply thinking", "keep"),
                          ("drop: train without reasoning", "drop")], value="auto", allow_blank=False,
                         id="reasoning", compact=True,
                         tooltip="data.reasoning. The preview below shows what the choice renders")
        with Vertical(id="reading"):
            with Horizontal(id="reading-bar"):
                yield ProgressBar(id="data-progress", show_eta=False)
                yield Button("Cancel", id="cancel-data", compact=True)
            yield Static(id="data-progress-text")
        yield Static(id="data-report")
        with Vertical(id="column-mapper"):
            yield Static("Columns: which of your columns holds what", classes="group-title")
            yield Static(id="mapper-format")
            for name in dict.fromkeys(name for fields in FIELDS.values() for name in fields):
                with Horizontal(classes="setting-row mapper-row", id=f"map-row-{name}"):
                    optional = "" if FIELD_HELP[name][1] else " (optional)"
                    yield Label(f"{name}{optional}", classes="setting-label")
                    yield Select([(UNMAPPED, UNMAPPED)], value=UNMAPPED, allow_blank=False, id=f"map-{name}",
                                 compact=True, classes="column-select", tooltip=FIELD_HELP[name][0])
            yield Static(id="mapper-result")
        yield Static("Examples as trained (← → when focused)", classes="group-title")
        yield PreviewPane(id="preview")
        yield Static("Token lengths", classes="group-title")
        yield Sparkline([], id="histogram")
        yield Static(id="lengths")

    def on_mount(self) -> None:
        self.query_one("#reading").display = False
        self.query_one("#column-mapper").display = False
        self.query_one("#reasoning-row").display = False

    def show_values(self, train: str | None, evaluation: str | None, val_size: Any, fmt: str,
                    leave_out_invalid: bool, reasoning: str) -> None:
        for selector, value in (("#data-path", train), ("#eval-path", evaluation),
                                ("#val-size", None if val_size is None else str(val_size))):
            field = self.query_one(selector, Input)
            if not field.has_focus and field.value != (value or ""):
                with field.prevent(Input.Changed):
                    field.value = value or ""
        self.query_one("#val-size", Input).placeholder = ("0: the eval file is used" if evaluation else
                                                          HELD_OUT_PLACEHOLDER)
        select = self.query_one("#format", Select)
        with select.prevent(Select.Changed):
            select.value = fmt or "auto"
        leave_out = self.query_one("#leave-out-invalid", Checkbox)
        with leave_out.prevent(Checkbox.Changed):
            leave_out.value = leave_out_invalid
        choice = self.query_one("#reasoning", Select)
        with choice.prevent(Select.Changed):
            choice.value = reasoning

    def show_progress(self, progress: Progress | None) -> None:
        self.query_one("#reading").display = progress is not None
        if progress is None:
            return
        bar = self.query_one("#data-progress", ProgressBar)
        share = progress.share
        bar.update(total=100 if share is not None else None, progress=round(100 * share) if share else 0)
        self.query_one("#data-progress-text", Static).update(progress_text(progress))

    def show_mapper(self, mapper: ColumnMapper | None) -> None:
        """The column mapper, while the data's format is not told by its column names: a column for each field of
        the format mapped, and the config and command that read the data so."""
        if mapper == self.mapper:
            return
        self.mapper = mapper
        self.query_one("#column-mapper").display = mapper is not None
        if mapper is None:
            return
        needed = [f"{name} ({FIELD_HELP[name][0]})" for name in mapper.chosen if FIELD_HELP[name][1]]
        optional = [name for name in mapper.chosen if not FIELD_HELP[name][1]]
        self.query_one("#mapper-format", Static).update(
            f"Read as [b]{mapper.format}[/b] data (the format above changes it): " + ", ".join(needed)
            + (f"; optional: {', '.join(optional)}" if optional else ""))
        options = [(UNMAPPED, UNMAPPED), *((f"{column} ({count})", column) for column, count in mapper.found.items())]
        for row in self.query(".mapper-row"):
            row.display = row.id is not None and row.id.removeprefix("map-row-") in mapper.chosen
        for name, column in mapper.chosen.items():
            select = self.query_one(f"#map-{name}", Select)
            with select.prevent(Select.Changed):
                select.set_options(options)
                select.value = column if column in mapper.found else UNMAPPED
        guessed = " [$text-muted](guessed from the column names: change any of them)[/]" if mapper.guessed else ""
        self.query_one("#mapper-result", Static).update(
            f"[b]{escape(mapper.config)}[/b]{guessed}\n[$text-muted]The same from a shell:[/] {escape(mapper.command)}")

    def show_read(self, error: TuneTermError | None = None) -> None:
        """A read ended: its summary follows, or why the data cannot be used (in short when the column mapper below
        is what to do about it)."""
        self.show_progress(None)
        if isinstance(error, FormatUnknown):
            self.show_failure(f"The column names ({', '.join(error.columns)}) do not tell the data format: choose "
                              "the format above and which column holds what below.", [])
        elif error is not None:
            self.show_failure(error.summary, error.problems)

    def show_cancelled(self) -> None:
        self.show_progress(None)
        self.show_failure("Reading the data was cancelled. Press enter in the path to read it again.", [])

    def show_failure(self, message: str, problems: list[Problem]) -> None:
        lines = [f"[$error]✗ {escape(message)}[/]"] + [f"  {escape(str(p))}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"  ... and {len(problems) - 20} more")
        self.query_one("#data-report", Static).update("\n".join(lines))
        self.query_one("#lengths", Static).update("")
        self.query_one("#histogram", Sparkline).data = []
        self.query_one(PreviewPane).show([], None)

    def show_summary(self, train: SourceSummary, evaluation: SourceSummary | None, view: DataView | None,
                     findings: list[Problem]) -> None:
        lines = [f"[b]{train.detection.format}[/b] ({escape(train.detection.evidence)})",
                 f"{train.read.records:,} records read, [b]{train.examples:,}[/b] usable, {train.invalid.count:,} "
                 f"invalid, {train.duplicates.count:,} duplicates"]
        if evaluation is not None:
            lines.append(f"eval file: {evaluation.examples:,} usable of {evaluation.read.records:,} records")
        held, thinking = holdings_line(train), thinking_line(train)
        lines += [escape(line) for line in (held, thinking) if line]
        self.query_one("#reasoning-row").display = bool(thinking or train.encode.holding["reasoning"])
        for problem in findings:
            colour = "$error" if problem.level == "error" else "$warning"
            lines.append(f"[{colour}]{'✗' if problem.level == 'error' else '●'} {escape(str(problem))}[/]")
            lines += [f"    {escape(str(detail))}" for detail in problem.details[:10]]
            if len(problem.details) > 10:
                lines.append(f"    ... and {len(problem.details) - 10} more")
        self.query_one("#data-report", Static).update("\n".join(lines))
        if view is None:
            return
        self.query_one("#histogram", Sparkline).data = [bucket["count"] for bucket in view.histogram]
        t, cut = view.lengths, view.truncation
        low, high = view.histogram[0]["start"], view.histogram[-1]["end"]
        lines = [f"[$text-muted]{low:,} … {high:,} tokens[/]",
                 f"p50 [b]{t['p50']:,}[/b]  p95 [b]{t['p95']:,}[/b]  p99 [b]{t['p99']:,}[/b]  max [b]{t['max']:,}[/b]",
                 f"at max length [b]{cut.max_length}[/b] ({escape(view.max_length_why)}): "
                 f"{cut.truncated_examples:,} examples cut, {cut.response_tokens_lost:,} response tokens lost"]
        if view.max_length != view.suggested_max_length:
            lines.append(f"[$accent]suggested {view.suggested_max_length}[/] ({escape(view.suggestion_why)}) "
                         "[$text-muted]ctrl+t accepts it[/]")
        self.query_one("#lengths", Static).update("\n".join(lines))
        self.query_one(PreviewPane).show(train.previews, view.max_length)

    @on(Input.Submitted, "#data-path")
    def _train(self, event: Input.Submitted) -> None:
        event.stop()
        self.screen.post_message(DataSettingChanged("data.train", event.value.strip() or None))

    @on(Input.Submitted, "#eval-path")
    def _eval(self, event: Input.Submitted) -> None:
        event.stop()
        self.screen.post_message(DataSettingChanged("data.eval", event.value.strip() or None))

    @on(Input.Changed, "#val-size")
    def _val_size(self, event: Input.Changed) -> None:
        event.stop()
        self.screen.post_message(DataSettingChanged("data.val_size", parse(event.value)))

    @on(Select.Changed, "#format")
    def _format(self, event: Select.Changed) -> None:
        event.stop()
        self.screen.post_message(DataSettingChanged("data.format", None if event.value == "auto" else event.value))

    @on(Checkbox.Changed, "#leave-out-invalid")
    def _leave_out_invalid(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.screen.post_message(DataSettingChanged("data.strict", False if event.value else None))

    @on(Select.Changed, "#reasoning")
    def _reasoning(self, event: Select.Changed) -> None:
        event.stop()
        self.screen.post_message(DataSettingChanged("data.reasoning", None if event.value == "auto" else event.value))

    @on(Select.Changed, ".column-select")
    def _column(self, event: Select.Changed) -> None:
        event.stop()
        if self.mapper is None:
            return
        mapping = {}
        for name in self.mapper.chosen:
            column = self.query_one(f"#map-{name}", Select).value
            if column not in (UNMAPPED, Select.NULL, name):
                mapping[name] = column
        self.screen.post_message(DataSettingChanged("data.columns", mapping or None))

    @on(Button.Pressed, "#browse")
    def _browse(self, event: Button.Pressed) -> None:
        event.stop()
        self.screen.post_message(BrowseRequested())

    @on(Button.Pressed, "#cancel-data")
    def _cancel(self, event: Button.Pressed) -> None:
        event.stop()
        self.screen.post_message(CancelRequested())
