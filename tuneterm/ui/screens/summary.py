"""After the run: did it work? Why it ended, what it reached, where its files are, and what to do next.

The screen a finished run opens on (from the run list, `tuneterm monitor`, or the monitor when a run ends). It
reads the run's report (engine/after/report.py) in a worker and offers what comes after a fine-tune: chat with the
tuned model next to its base, the stop check, a merge into a standalone model, an export (GGUF, Ollama, merged;
with its progress, and cancelled with x), and the loss curves (the run's monitor, which the app opens when this
screen asks for it with a message).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from tuneterm.engine.after.report import RunReport, clock, loss_text, perplexity, report_of
from tuneterm.errors import TuneTermError
from tuneterm.ui.commands import ActionCommands
from tuneterm.ui.messages import LeaveRequested, RunViewRequested
from tuneterm.ui.services import Services

OUTCOME_TEXT = {"improved": "[$success]the eval loss improved on the loss before training[/]",
                "worse_than_baseline": "[$warning]no evaluation beat the loss before training: nothing is called "
                                       "best[/]",
                "not_evaluated": "[$text-muted]no evaluation after training began: whether it generalises is "
                                 "unknown[/]"}


class ReportRead(Message):
    def __init__(self, report: RunReport | None, error: str = ""):
        super().__init__()
        self.report, self.error = report, error


class StepDone(Message):
    """A long action of this screen (stop check, merge) ended: its one-line result, and whether it went well."""

    def __init__(self, title: str, text: str, ok: bool):
        super().__init__()
        self.title, self.text, self.ok = title, text, ok


class ExportProgressed(Message):
    """How far the export got: what it is doing now."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text


class SummaryCommands(ActionCommands):
    COMMANDS = (("Chat with the tuned model", "screen.chat", "Next to the base model, on eval prompts or yours"),
                ("Stop check", "screen.stop_check", "Do its answers end? Generates for eval prompts"),
                ("Merge the adapter", "screen.merge", "A standalone model in a new directory"),
                ("Export the model", "screen.export", "GGUF, Ollama or merged, checked against the trained model"),
                ("Loss curves", "screen.curves", "The monitor's charts and log of this run"))


Rows = list[tuple[str, str]]
"""(label, value as markup): a label of "" continues the row above; ("", "") is a gap."""


def report_rows(report: RunReport) -> tuple[str, Rows, Rows, list[str]]:
    """The summary, most important first: why the run ended, its results as labelled rows, its notable settings
    as rows, and the last warnings of the run. In rows, a long value (a path) wraps under itself, never under
    the label."""
    headline = escape(report.why_it_ended[0].upper() + report.why_it_ended[1:])
    total = f" of {report.total_steps:,}" if report.total_steps else ""
    epochs = f", {report.epochs:.2f} epochs" if report.epochs is not None else ""
    tokens = f", {report.tokens_seen:,} tokens seen" if report.tokens_seen is not None else ""
    rows: Rows = [("steps", f"{report.steps:,}{total}{epochs}{tokens}, trained for {clock(report.training_seconds)}"),
                  ("train loss", f"{loss_text(report.train_loss_first)} → {loss_text(report.train_loss_last)}")]
    if report.baseline_eval_loss is not None or report.final_eval_loss is not None:
        best = (f"; best [b]{loss_text(report.best_eval_loss)}[/b] (perplexity {perplexity(report.best_eval_loss)}) "
                f"at step {report.best_step:,}" if report.best_step is not None else "")
        rows.append(("eval loss", f"before {loss_text(report.baseline_eval_loss)}{best}"))
        rows.append(("", f"final {loss_text(report.final_eval_loss)} (perplexity "
                         f"{perplexity(report.final_eval_loss)})"))
    if report.outcome:
        rows.append(("", OUTCOME_TEXT.get(report.outcome, "")))
    if report.final_eval_loss is not None and not math.isfinite(report.final_eval_loss):
        rows.append(("", "[$error]the last eval loss is not a number: the run diverged[/]"))
    rows.append(("", ""))
    if report.adapter_dir is not None:
        changed = {True: "[$success]its weights all changed in training[/]",
                   False: "[$error]its weights did NOT all change, or are not finite (adapter_check.json)[/]",
                   None: "[$text-muted]not checked[/]"}[report.adapter_changed]
        rows.append(("adapter", f"{escape(str(report.adapter_dir))}: {changed}"))
    else:
        rows.append(("adapter", "[$warning]none saved[/]" + (f"; {len(report.checkpoints)} checkpoints to resume "
                                                             "from" if report.checkpoints else "")))
    if report.resumable:
        rows.append(("resume", f"r here, or: tuneterm train --resume {escape(str(report.run_dir))}"))
    stop = report.stop_check
    if stop is not None and stop.get("checked"):
        rows.append(("stop check", f"[$success]every answer ended by itself[/] ({stop['checked']} eval prompts)"
                     if stop.get("passed") else
                     f"[$error]{len(stop['runaway'])} of {stop['checked']} answers never ended[/]: "
                     f"{escape(stop['causes'][0] if stop.get('causes') else '')}"))
    elif report.adapter_dir is not None:
        rows.append(("stop check", "[$text-muted]not run: k checks that its answers end[/]"))
    for index, export in enumerate(report.exports[-3:]):
        check = export.get("round_trip")
        kind = f"{export.get('format')}{' ' + str(export['quant']) if export.get('quant') else ''}"
        verdict = ("" if check is None else f": round trip [$success]passed[/] (KL {check.get('mean_kl', 0):.2g})"
                   if check.get("passed") else f": round trip [$error]FAILED[/], left in "
                   f"{escape(str(export.get('staging')))}")
        rows.append(("export" if index == 0 else "",
                     f"{escape(kind)} → {escape(str(export.get('out_dir')))}{verdict}"))
    if not report.exports and report.adapter_dir is not None:
        rows.append(("export", "[$text-muted]e writes a GGUF (llama.cpp, Ollama) or the merged model (M, at once)[/]"))
    rows.append(("curves", "[$text-muted]l shows them in the monitor[/]"))
    rows += [("", escape(str(plot))) for plot in report.plots]
    settings = [(escape(key), escape(str(value))) for key, value in report.settings.items()]
    return headline, rows, settings, [escape(w) for w in report.warnings[-5:]]


class SummaryScreen(Screen[None]):
    COMMANDS = {SummaryCommands}
    BINDINGS = [
        Binding("c", "chat", "Chat", id="chat", tooltip="The tuned model next to its base"),
        Binding("k", "stop_check", "Stop check", id="stop_check", tooltip="Do its answers end?"),
        Binding("M", "merge", "Merge", id="merge", show=False,  # a format of export, which the footer shows
                tooltip="A standalone model in a new directory"),
        Binding("e", "export", "Export", id="export", tooltip="GGUF, Ollama or merged, checked in llama.cpp"),
        Binding("x", "cancel_export", "Cancel export", id="cancel_export"),
        Binding("l", "curves", "Curves", id="curves", show=False,  # said in the summary, beside the curves' files
                tooltip="The monitor: loss, learning rate, log"),
        Binding("r", "resume", "Resume", id="resume", tooltip="Continue from the last complete checkpoint"),
        Binding("escape", "leave", "Back", id="leave"),
    ]

    def __init__(self, services: Services, run_dir: Path,
                 again: Callable[[Path, dict[str, Any], bool], None] | None = None):
        super().__init__()
        self.services, self.run_dir = services, run_dir
        self.again = again
        """again(run_dir, settings, resume): the run again, as the monitor starts it; here it is only resumed."""
        self.report: RunReport | None = None
        self.busy = ""
        """The long action under way (stop check, merge, export), or ""."""
        self.export_cancel: threading.Event | None = None
        """Set to stop the export under way (None when none is)."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary-status")
        with VerticalScroll(id="summary-body"):
            yield Static("Reading the run...", id="summary")
            yield Grid(id="summary-rows", classes="summary-grid")
            yield Static("Settings", classes="group-title summary-part")
            yield Grid(id="summary-settings", classes="summary-grid")
            yield Static("Warnings during the run", classes="group-title summary-part summary-warnings")
            yield Static(id="summary-warnings", classes="summary-warnings")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = self.run_dir.name
        self.query_one("#summary-status", Static).display = False
        self.query(".summary-part, .summary-warnings").set(display=False)
        self.read_report()

    def on_screen_resume(self) -> None:
        self.read_report()

    @work(thread=True, exclusive=True, group="report", exit_on_error=False)
    def read_report(self) -> None:
        try:
            self.post_message(ReportRead(report_of(self.run_dir)))
        except (TuneTermError, OSError) as exc:
            self.post_message(ReportRead(None, str(exc)))

    @on(ReportRead)
    async def _report(self, message: ReportRead) -> None:
        """The report drawn (its rows mounted again only when they changed); `self.report` is set once it is."""
        if message.report is None:
            self.report = None
            self.query_one("#summary", Static).update(f"[$error]{escape(message.error)}[/]")
            self.refresh_bindings()
            return
        headline, rows, settings, warnings = report_rows(message.report)
        self.query_one("#summary", Static).update(f"[b]{headline}[/b]")
        for grid_id, shown in (("#summary-rows", rows), ("#summary-settings", settings)):
            grid = self.query_one(grid_id, Grid)
            cells = [(text, style) for label, value in shown
                     for text, style in ((label, "summary-label"), (value, "summary-value"))]
            if [(str(cell.content), cell.classes) for cell in grid.query(Static)] != [
                    (text, frozenset({style})) for text, style in cells]:
                await grid.remove_children()
                await grid.mount_all(Static(text, classes=style) for text, style in cells)
        self.query(".summary-part").set(display=True)
        self.query(".summary-warnings").set(display=bool(warnings))
        self.query_one("#summary-warnings", Static).update("\n".join(f"[$warning]▲[/] {w}" for w in warnings))
        self.report = message.report
        self.refresh_bindings()

    def say(self, text: str) -> None:
        status = self.query_one("#summary-status", Static)
        status.display = bool(text)
        status.update(text)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("chat", "stop_check"):
            return self.report is not None and self.report.has_adapter
        if action == "merge":
            return (self.report is not None and self.report.has_adapter
                    and self.report.settings.get("method") != "full")
        if action == "export":
            return self.report is not None and self.report.has_adapter
        if action == "cancel_export":
            return self.export_cancel is not None
        if action == "resume":
            return self.report is not None and self.report.resumable and self.again is not None
        return True

    def action_resume(self) -> None:
        if self.again is not None:
            self.again(self.run_dir, {}, True)

    def action_chat(self) -> None:
        from tuneterm.ui.screens.chat import ChatScreen

        self.app.push_screen(ChatScreen(self.run_dir))

    def action_stop_check(self) -> None:
        if self.busy:
            self.notify(f"Busy: {self.busy}.", title="Stop check")
            return
        self.busy = "checking that answers end"
        self.say("[$accent]Stop check: loading the model and generating for eval prompts...[/]")
        self.stop_check()

    @work(thread=True, exclusive=True, group="after", exit_on_error=False)
    def stop_check(self) -> None:
        from tuneterm.engine.after.card import write_card
        from tuneterm.engine.after.generate import TunedModel
        from tuneterm.engine.after.stopcheck import check_stopping, save_stop_check

        try:
            model = TunedModel.load(self.run_dir)
            check = check_stopping(model, model.eval_samples())
            save_stop_check(check, self.run_dir)
            write_card(report_of(self.run_dir))
        except (TuneTermError, OSError) as exc:
            self.post_message(StepDone("Stop check", str(exc), False))
            return
        self.post_message(StepDone("Stop check", check.summary(), check.passed))

    def action_merge(self) -> None:
        from tuneterm.engine.after.merge import output_dir_problem
        from tuneterm.ui.screens.dialogs import AskMerge

        if self.busy:
            self.notify(f"Busy: {self.busy}.", title="Merge")
            return

        def chosen(answer: tuple[Path, float] | None) -> None:
            if answer is not None:
                self.busy = "merging"
                self.say(f"[$accent]Merging into {escape(str(answer[0]))}...[/]")
                self.merge(*answer)

        suggested = self.run_dir.parent / f"{self.run_dir.name}-merged"
        self.app.push_screen(AskMerge(suggested, output_dir_problem), chosen)

    @work(thread=True, exclusive=True, group="after", exit_on_error=False)
    def merge(self, out_dir: Path, scale: float) -> None:
        from tuneterm.engine.after.merge import merge

        def phase(text: str) -> None:
            self.app.call_from_thread(self.say, f"[$accent]Merge: {escape(text)}...[/]")

        try:
            result = merge(self.run_dir, out_dir, scale, phase)
        except (TuneTermError, OSError) as exc:
            self.post_message(StepDone("Merge", str(exc), False))
            return
        notes = "".join(f" {note}." for note in result.notes)
        self.post_message(StepDone("Merge", f"Written to {result.out_dir} ({result.dtype}); its logits equal base + "
                                            f"adapter within {result.max_logit_difference:.2g}.{notes}", True))

    def action_export(self) -> None:
        from tuneterm.engine.after.export import DEFAULT_QUANT, QUANTS
        from tuneterm.engine.after.merge import output_dir_problem
        from tuneterm.ui.screens.dialogs import AskExport

        if self.busy:
            self.notify(f"Busy: {self.busy}.", title="Export")
            return

        def chosen(answer: tuple[str, str | None, Path, float] | None) -> None:
            if answer is not None:
                self.busy = "exporting"
                self.export_cancel = threading.Event()
                self.refresh_bindings()
                self.say(f"[$accent]Export to {escape(str(answer[2]))}: starting... (x cancels)[/]")
                self.run_export(*answer, self.export_cancel)

        self.app.push_screen(AskExport(self.run_dir, QUANTS, DEFAULT_QUANT, output_dir_problem), chosen)

    def action_cancel_export(self) -> None:
        if self.export_cancel is not None:
            self.export_cancel.set()
            self.say("[$warning]Export: cancelling (the files written so far are removed)...[/]")

    @work(thread=True, exclusive=True, group="after", exit_on_error=False)
    def run_export(self, format: str, quant: str | None, out_dir: Path, scale: float, cancel: threading.Event) -> None:
        from tuneterm.engine.after.export import export, prepare
        from tuneterm.errors import Cancelled
        from tuneterm.work import Progress, Work

        def progress(done: Progress) -> None:
            counted = f" ({done.done + 1} of {done.total})" if done.total else f" ({done.done} s)"
            self.post_message(ExportProgressed(done.stage + counted))

        job = Work(cancel, progress, interval=0.5)

        def phase(text: str) -> None:
            job.check()
            self.post_message(ExportProgressed(text))

        try:
            result = export(prepare(self.run_dir, out_dir, format, quant, scale, on_phase=phase), job, phase)
        except Cancelled:
            self.post_message(StepDone("Export", f"cancelled: nothing was written to {out_dir}", False))
            return
        except (TuneTermError, OSError) as exc:
            self.post_message(StepDone("Export", str(exc), False))
            return
        check = result.round_trip
        verdict = "" if check is None else (f" Checked in llama.cpp: KL divergence {check['mean_kl']:.2g} nats per "
                                            f"token (allowed {check['tolerance']:g}), "
                                            f"{sum(a['gguf_ended'] for a in check['answers'])} of "
                                            f"{len(check['answers'])} answers ended.")
        self.post_message(StepDone("Export", f"{', '.join(result.files)} in {result.out_dir}.{verdict} Next: "
                                             f"{result.next_step}", True))

    @on(ExportProgressed)
    def _export_progressed(self, message: ExportProgressed) -> None:
        if self.export_cancel is not None and not self.export_cancel.is_set():
            self.say(f"[$accent]Export: {escape(message.text)}...[/] [$text-muted](x cancels)[/]")

    @on(StepDone)
    def _done(self, message: StepDone) -> None:
        self.busy = ""
        self.export_cancel = None
        self.refresh_bindings()
        colour = "$success" if message.ok else "$error"
        self.say(f"[{colour}]{escape(message.title)}: {escape(message.text)}[/]")
        self.notify(message.text, title=message.title, severity="information" if message.ok else "error",
                    timeout=12)
        self.read_report()

    def action_curves(self) -> None:
        self.post_message(RunViewRequested(self.run_dir, "monitor"))

    def action_leave(self) -> None:
        self.post_message(LeaveRequested(self))
