"""Chat with a run's tuned model and its base model, side by side, for the same prompt.

The model is loaded once in a worker (engine/after/generate.py: the base with the run's adapter; the base model's
answer is the same weights with the adapter off). Each answer streams into its pane as tokens come, through
post_message (never call_from_thread per token). A prompt is typed, or picked from the eval prompts the run kept,
and then the answer the model was trained on is shown as the third pane. Escape stops an answer; the generation
settings and the chat template are shown and can be changed between prompts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Static

from tuneterm.engine.after.generate import EvalSample, Generation, GenerationSettings, TunedModel
from tuneterm.errors import TuneTermError

PANES = {"tuned": "tuned", "base": "base (adapter off)", "reference": "reference (trained on)"}


class ModelLoaded(Message):
    def __init__(self, model: TunedModel | None, samples: list[EvalSample], error: str = ""):
        super().__init__()
        self.model, self.samples, self.error = model, samples, error


class TextStreamed(Message):
    """New text of one pane's answer (every piece is kept: they are never collapsed)."""

    def __init__(self, pane: str, text: str):
        super().__init__()
        self.pane, self.text = pane, text


class AnswerEnded(Message):
    def __init__(self, pane: str, generation: Generation | None, error: str = ""):
        super().__init__()
        self.pane, self.generation, self.error = pane, generation, error


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("ctrl+r", "pick_eval", "Eval prompt", id="pick_eval", priority=True,
                tooltip="Pick a prompt from the eval split; its reference answer is shown too"),
        Binding("ctrl+b", "toggle_base", "Base", id="toggle_base", priority=True,
                tooltip="Also answer with the adapter off"),
        Binding("ctrl+t", "toggle_template", "Template", id="toggle_template", priority=True,
                tooltip="Show the chat template"),
        Binding("escape", "stop_or_leave", "Stop / back", id="leave"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir
        self.model: TunedModel | None = None
        self.samples: list[EvalSample] = []
        self.cancel = threading.Event()
        self.generating = False
        self.compare_base = True
        self.answers: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-settings"):
            yield Label("max new tokens")
            yield Input("256", id="max-new-tokens", type="integer", classes="chat-number")
            yield Label("temperature")
            yield Input("0", id="temperature", type="number", classes="chat-number")
            yield Label("top-p")
            yield Input("1.0", id="top-p", type="number", classes="chat-number")
        yield Static("Loading the model...", id="chat-info")
        yield Static(id="chat-template")
        yield Input(placeholder="Type a message and press enter (ctrl+r: a prompt from the eval split)",
                    id="chat-prompt", disabled=True)
        with Horizontal(id="chat-answers"):
            for pane, title in PANES.items():
                with Vertical(id=f"pane-{pane}", classes="chat-pane"):
                    yield Static(title, classes="panel-title", id=f"title-{pane}")
                    with VerticalScroll():
                        yield Static(id=f"answer-{pane}", classes="chat-answer")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"chat: {self.run_dir.name}"
        self.query_one("#chat-template", Static).display = False
        self.query_one("#pane-reference").display = False
        self.load()

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def load(self) -> None:
        try:
            model = TunedModel.load(self.run_dir)
            samples = model.eval_samples()
        except (TuneTermError, OSError) as exc:
            self.post_message(ModelLoaded(None, [], str(exc)))
            return
        self.post_message(ModelLoaded(model, samples))

    @on(ModelLoaded)
    def _loaded(self, message: ModelLoaded) -> None:
        if message.model is None:
            self.query_one("#chat-info", Static).update(f"[$error]Cannot load the run's model: "
                                                        f"{escape(message.error)}[/]")
            return
        self.model, self.samples = message.model, message.samples
        self.compare_base = message.model.has_adapter
        described = message.model.describe()
        self.query_one("#pane-base").display = self.compare_base
        self.query_one("#chat-info", Static).update(
            f"On {escape(described['device'])}. Stops at {escape(', '.join(described['stop_tokens']))}. "
            f"{len(self.samples)} eval prompts (ctrl+r). ctrl+t shows the chat template.")
        self.query_one("#chat-template", Static).update(
            f"[$text-muted]{escape(described['template'][:1200] or '(no chat template)')}[/]")
        prompt = self.query_one("#chat-prompt", Input)
        prompt.disabled = False
        prompt.focus()
        self.refresh_bindings()

    def settings(self) -> GenerationSettings | None:
        try:
            settings = GenerationSettings(int(self.query_one("#max-new-tokens", Input).value),
                                          float(self.query_one("#temperature", Input).value),
                                          float(self.query_one("#top-p", Input).value))
        except ValueError:
            self.notify("Max new tokens is a whole number; temperature and top-p are numbers.",
                        title="Generation settings", severity="error")
            return None
        if settings.problems():
            self.notify("; ".join(settings.problems()), title="Generation settings", severity="error")
            return None
        return settings

    @on(Input.Submitted, "#chat-prompt")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip() and self.model is not None:
            self.ask(self.model.prompt_ids(event.value), event.value, None)

    def ask(self, prompt_ids: list[int], shown: str, reference: str | None) -> None:
        settings = self.settings()
        if settings is None or self.model is None:
            return
        if self.generating:
            self.notify("Still answering: escape stops it.", title="Chat")
            return
        self.query_one("#pane-reference").display = reference is not None
        self.query_one("#answer-reference", Static).update(escape(reference or ""))
        panes = ["tuned", "base"] if self.compare_base else ["tuned"]
        for pane in ("tuned", "base"):
            self.answers[pane] = ""
            self.query_one(f"#answer-{pane}", Static).update("[$text-muted]waiting...[/]" if pane in panes else "")
            self.query_one(f"#title-{pane}", Static).update(PANES[pane])
        self.query_one("#chat-info", Static).update(f"[b]{escape(shown[:300])}[/b]  [$text-muted]"
                                                    f"({escape(settings.describe())}; stops at "
                                                    f"{escape(', '.join(self.model.describe()['stop_tokens']))})[/]")
        self.cancel.clear()
        self.generating = True
        self.generate(prompt_ids, settings, panes)

    @work(thread=True, exclusive=True, group="chat-generate", exit_on_error=False)
    def generate(self, prompt_ids: list[int], settings: GenerationSettings, panes: list[str]) -> None:
        assert self.model is not None
        def streamed(pane: str) -> Callable[[str], None]:
            def post(text: str) -> None:
                self.post_message(TextStreamed(pane, text))
            return post

        for pane in panes:
            if self.cancel.is_set():
                self.post_message(AnswerEnded(pane, None, "not started: stopped"))
                continue
            try:
                generation = self.model.generate(
                    prompt_ids, settings, adapter=pane == "tuned", cancel=self.cancel, on_text=streamed(pane))
            except Exception as exc:  # noqa: BLE001 - shown in the pane, the chat goes on
                self.post_message(AnswerEnded(pane, None, f"{type(exc).__name__}: {exc}"))
                continue
            self.post_message(AnswerEnded(pane, generation))

    @on(TextStreamed)
    def _text(self, message: TextStreamed) -> None:
        self.answers[message.pane] = self.answers.get(message.pane, "") + message.text
        self.query_one(f"#answer-{message.pane}", Static).update(escape(self.answers[message.pane]))

    @on(AnswerEnded)
    def _ended(self, message: AnswerEnded) -> None:
        generation = message.generation
        if generation is None:
            note = f"[$error]{escape(message.error)}[/]"
        elif generation.cancelled:
            note = f"[$warning]stopped after {generation.tokens} tokens[/]"
        elif generation.hit_limit:
            note = f"[$error]ran to {generation.tokens} tokens without ending[/]"
        else:
            note = f"[$success]ended by itself, {generation.tokens} tokens[/]"
        self.query_one(f"#title-{message.pane}", Static).update(f"{PANES[message.pane]}\n{note}")
        if generation is None:
            self.query_one(f"#answer-{message.pane}", Static).update("")
        if message.pane == "base" or not self.compare_base:
            self.generating = False

    def action_pick_eval(self) -> None:
        from tuneterm.ui.screens.dialogs import Choose

        if not self.samples:
            self.notify("This run kept no eval prompts (it has no eval split).", title="Eval prompts")
            return

        def chosen(sample: EvalSample | None) -> None:
            if sample is not None:
                self.query_one("#chat-prompt", Input).value = sample.question
                self.ask(sample.prompt_ids, f"{sample.question}  ({sample.where})", sample.reference)

        self.app.push_screen(Choose("An eval prompt (the reference answer is shown next to the two)",
                                    [(f"{s.question[:90]}  ({s.where})", s) for s in self.samples]), chosen)

    def action_toggle_base(self) -> None:
        if self.model is None or not self.model.has_adapter:
            self.notify("A full fine-tune has no adapter to switch off.", title="Base model")
            return
        self.compare_base = not self.compare_base
        self.query_one("#pane-base").display = self.compare_base

    def action_toggle_template(self) -> None:
        template = self.query_one("#chat-template", Static)
        template.display = not template.display

    def action_stop_or_leave(self) -> None:
        if self.generating:
            self.cancel.set()
            return
        self.app.pop_screen()
