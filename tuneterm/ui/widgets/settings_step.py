"""Wizard step 3: the settings, grouped as the guides discuss them, each with the plan's advice beside it.

Method (LoRA / QLoRA / full and the adapter's shape), batch, schedule, evaluation and the rest. A preset fills
the values under what the person sets. The focused field's reason for its default (with the guide it comes
from) is shown at the bottom; ctrl+t applies the advice of the focused field.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.events import DescendantFocus
from textual.markup import escape
from textual.message import Message
from textual.widgets import Label, Select, Static

from tuneterm.config import METHODS, OPTION_BY_KEY, RunConfig, preset_names
from tuneterm.plan.advice import Advice
from tuneterm.ui.widgets.fields import FieldSpec, SettingField

SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant", "cosine_with_restarts")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
INITS = (True, "gaussian", "pissa", "olora", "loftq")

GROUPS: tuple[tuple[str, tuple[FieldSpec, ...]], ...] = (
    ("Method", (
        FieldSpec("method", "method", METHODS),
        FieldSpec("lora.r", "rank r"),
        FieldSpec("lora.lora_alpha", "alpha"),
        FieldSpec("lora.lora_dropout", "dropout"),
        FieldSpec("lora.target_modules", "target modules"),
        FieldSpec("lora.use_rslora", "rsLoRA", boolean=True),
        FieldSpec("lora.use_dora", "DoRA", boolean=True),
        FieldSpec("lora.init_lora_weights", "init", INITS),
    )),
    ("Batch", (
        FieldSpec("training.per_device_train_batch_size", "micro-batch"),
        FieldSpec("training.gradient_accumulation_steps", "accumulation"),
        FieldSpec("training.max_length", "max length"),
    )),
    ("Schedule", (
        FieldSpec("training.learning_rate", "learning rate"),
        FieldSpec("training.num_train_epochs", "epochs"),
        FieldSpec("training.max_steps", "max steps", placeholder="epochs decide"),
        FieldSpec("training.lr_scheduler_type", "scheduler", SCHEDULERS),
        FieldSpec("training.warmup_steps", "warmup"),
        FieldSpec("training.weight_decay", "weight decay"),
        FieldSpec("training.optim", "optimizer", OPTIMIZERS),
    )),
    ("Evaluation", (
        FieldSpec("training.eval_interval_epochs", "eval every (epochs)"),
        FieldSpec("training.early_stopping_patience", "patience"),
        FieldSpec("training.load_best_model_at_end", "load best at end", boolean=True),
    )),
    ("Other", (
        FieldSpec("training.precision", "precision", OPTION_BY_KEY["training.precision"].choices),
        FieldSpec("training.gradient_checkpointing", "grad. checkpointing", boolean=True),
        FieldSpec("training.seed", "seed"),
    )),
)
NO_PRESET = "(none)"


class PresetChosen(Message):
    def __init__(self, preset: str | None):
        super().__init__()
        self.preset = preset


class SettingsStep(VerticalScroll):
    def compose(self) -> ComposeResult:
        with Horizontal(classes="setting-row"):
            yield Label("preset", classes="setting-label")
            yield Select([(NO_PRESET, NO_PRESET), *((name, name) for name in preset_names())], allow_blank=False,
                         value=NO_PRESET, id="preset", compact=True)
        for title, specs in GROUPS:
            yield Static(title, classes="group-title")
            for spec in specs:
                yield SettingField(spec)
        yield Static(id="settings-help")

    def fields(self) -> list[SettingField]:
        return list(self.query(SettingField))

    def show(self, chosen: dict[str, Any], config: RunConfig | None, advice: list[Advice], preset: str | None) -> None:
        """Every field's value and advice, from the draft's values and the planned (resolved) config."""
        by_key: dict[str, Advice] = {}
        for item in advice:
            by_key.setdefault(item.field, item)
        method = config.method if config is not None else chosen.get("method", "lora")
        for field in self.fields():
            effective = config.get(field.key) if config is not None else chosen.get(field.key)
            applicable = not (field.key.startswith("lora.") and method == "full")
            origin = "derived" if config is not None and field.key in config.notes else \
                "preset" if preset and config is not None and field.key not in config.defaulted else "default"
            field.show(chosen.get(field.key), effective, origin, by_key.get(field.key), applicable)
        select = self.query_one("#preset", Select)
        with select.prevent(Select.Changed):
            select.value = preset or NO_PRESET

    def focused_field(self) -> SettingField | None:
        focused = self.screen.focused
        while focused is not None and not isinstance(focused, SettingField):
            focused = focused.parent  # type: ignore[assignment]
        return focused if isinstance(focused, SettingField) else None

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        field = self.focused_field()
        if field is not None:
            help_text = f"[$text-muted]{field.spec.label}: {escape(field.why())}[/]"
            self.query_one("#settings-help", Static).update(help_text)

    @on(Select.Changed, "#preset")
    def _preset(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(PresetChosen(None if event.value == NO_PRESET else str(event.value)))

