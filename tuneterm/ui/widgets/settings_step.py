"""Wizard step 3: the settings, grouped as the guides discuss them, each with the plan's advice beside it.

On a machine with several GPUs, first which of them to train on and how they share the work (DDP, FSDP,
DeepSpeed ZeRO-2/3): the plan's memory is then per GPU for that strategy. Method (LoRA / QLoRA / full and the
adapter's shape), batch, schedule, evaluation, the speed levers (attention, packing, padding-free, Liger, activation
offloading, torch.compile) and the rest. A preset fills the values under what the person sets.
The focused field's reason for its default (with the guide it comes from) is shown at the bottom; ctrl+t applies
the advice of the focused field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.dom import DOMNode
from textual.events import DescendantFocus
from textual.markup import escape
from textual.message import Message
from textual.widgets import Label, Select, SelectionList, Static

from tuneterm.config import ATTENTION_NAMES, AUTO, KERNELS_HUB_FLASH, METHODS, OPTION_BY_KEY, RunConfig, preset_names
from tuneterm.errors import Problem
from tuneterm.hardware import GpuSurvey
from tuneterm.plan.advice import Advice
from tuneterm.plan.memory import STRATEGIES, Strategy, size
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
    ("Speed", (
        FieldSpec("model.attn_implementation", "attention", (*ATTENTION_NAMES, *KERNELS_HUB_FLASH)),
        FieldSpec("training.packing", "packing", (AUTO, True, False)),
        FieldSpec("training.packing_strategy", "packing strategy", OPTION_BY_KEY["training.packing_strategy"].choices),
        FieldSpec("training.padding_free", "padding-free", boolean=True),
        FieldSpec("training.use_liger_kernel", "Liger kernels", boolean=True),
        FieldSpec("training.activation_offloading", "offload activations", boolean=True),
        FieldSpec("training.torch_compile", "torch.compile", boolean=True),
    )),
    ("Other", (
        FieldSpec("training.precision", "precision", OPTION_BY_KEY["training.precision"].choices),
        FieldSpec("training.gradient_checkpointing", "grad. checkpointing", boolean=True),
        FieldSpec("training.seed", "seed"),
    )),
)
NO_PRESET = "(none)"


@dataclass
class PresetChosen(Message, bubble=False):
    """The person chose the preset whose values lie under theirs."""

    preset: str | None
    """None: no preset."""


STRATEGY_TEXT = {
    "single": "one GPU",
    "ddp": "DDP: a full copy on each GPU, each trains on its share of the batch (fastest when the model fits one)",
    "fsdp": "FSDP: weights, gradients and optimizer state sharded across the GPUs (a model too big for one)",
    "deepspeed-zero2": "ZeRO-2: gradients and optimizer state sharded, weights copied (needs deepspeed)",
    "deepspeed-zero3": "ZeRO-3: everything sharded, like FSDP (needs deepspeed)",
}


@dataclass
class LaunchChanged(Message, bubble=False):
    """The person changed the GPUs to train on or how they share the work."""

    gpus: tuple[int, ...]
    """As nvidia-smi numbers them; none: the first GPU, or the CPU."""
    strategy: Strategy


class SettingsStep(VerticalScroll):
    def compose(self) -> ComposeResult:
        with VerticalScroll(id="gpu-choice"):
            yield Static("GPUs", classes="group-title")
            yield SelectionList[int](id="gpus", compact=True)
            with Horizontal(classes="setting-row"):
                yield Label("strategy", classes="setting-label")
                yield Select([(name, name) for name in STRATEGIES if name != "single"], allow_blank=False,
                             value="ddp", id="strategy", compact=True)
            yield Static(id="strategy-help")
        yield Static(id="settings-problems")
        with Horizontal(classes="setting-row"):
            yield Label("preset", classes="setting-label")
            yield Select([(NO_PRESET, NO_PRESET), *((name, name) for name in preset_names())], allow_blank=False,
                         value=NO_PRESET, id="preset", compact=True)
        for title, specs in GROUPS:
            yield Static(title, classes="group-title")
            for spec in specs:
                yield SettingField(spec)
        yield Static(id="settings-help")

    def show_gpus(self, survey: GpuSurvey, chosen: tuple[int, ...], strategy: Strategy) -> None:
        """The GPU choice, on a machine with several GPUs only (one GPU, or none, needs no choosing)."""
        choice = self.query_one("#gpu-choice")
        choice.display = len(survey.gpus) > 1
        listing = self.query_one("#gpus", SelectionList)
        options = [(f"GPU {g.index} {g.name}, {size(g.memory_free)} free of {size(g.memory_total)}", g.index)
                   for g in survey.gpus]
        if [option[1] for option in options] != [listing.get_option_at_index(i).value
                                                  for i in range(listing.option_count)]:
            with listing.prevent(SelectionList.SelectedChanged):
                listing.clear_options()
                listing.add_options([(text, index, index in chosen) for text, index in options])
        select = self.query_one("#strategy", Select)
        select.disabled = len(chosen) < 2
        if len(chosen) > 1:
            with select.prevent(Select.Changed):
                select.value = strategy
        self.query_one("#strategy-help", Static).update(
            f"[$text-muted]{escape(STRATEGY_TEXT[strategy if len(chosen) > 1 else 'single'])}; none chosen: the "
            "first GPU[/]" if len(chosen) < 2 else f"[$text-muted]{escape(STRATEGY_TEXT[strategy])}[/]")

    @on(SelectionList.SelectedChanged, "#gpus")
    @on(Select.Changed, "#strategy")
    def _launch_changed(self, event: Message) -> None:
        event.stop()
        gpus = tuple(sorted(self.query_one("#gpus", SelectionList).selected))
        strategy = self.query_one("#strategy", Select).value
        self.screen.post_message(LaunchChanged(gpus, cast(Strategy, strategy) if len(gpus) > 1 else "single"))

    def fields(self) -> list[SettingField]:
        return list(self.query(SettingField))

    def show(self, chosen: dict[str, Any], config: RunConfig | None, advice: list[Advice], preset: str | None,
             problems: list[Problem] | None = None) -> None:
        """Every field's value and advice, from the draft's values and the planned (resolved) config; what stops
        the launch at its field, and above the fields the whole list (with the keys no field edits)."""
        by_key: dict[str, Advice] = {}
        for item in advice:
            by_key.setdefault(item.field, item)
        method = config.method if config is not None else chosen.get("method", "lora")
        labels = {}
        for field in self.fields():
            effective = config.get(field.key) if config is not None else chosen.get(field.key)
            applicable = not (field.key.startswith("lora.") and method == "full")
            origin = "derived" if config is not None and field.key in config.notes else \
                "preset" if preset and config is not None and field.key not in config.defaulted else "default"
            own = [p.message for p in problems or [] if p.location.key == field.key]
            field.show(chosen.get(field.key), effective, origin, by_key.get(field.key), applicable, own)
            if applicable:
                labels[field.key] = field.spec.label
        self.show_problems(problems or [], labels)
        select = self.query_one("#preset", Select)
        with select.prevent(Select.Changed):
            select.value = preset or NO_PRESET

    def show_problems(self, problems: list[Problem], labels: dict[str, str]) -> None:
        """What stops the launch, on top: the fields named (each says why), the keys without a field in full."""
        named = list(dict.fromkeys(labels[p.location.key] for p in problems if p.location.key in labels))
        lines = [f"[$error]✗ {escape(str(p))}[/]" for p in problems if p.location.key not in labels]
        if named:
            lines.insert(0, f"[$error]✗ Stops the launch: {escape(', '.join(named))} (said at the field)[/]")
        text = self.query_one("#settings-problems", Static)
        text.update("\n".join(lines))
        text.display = bool(lines)

    def focused_field(self) -> SettingField | None:
        node: DOMNode | None = self.screen.focused
        while node is not None and not isinstance(node, SettingField):
            node = node.parent
        return node

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        field = self.focused_field()
        if field is not None:
            help_text = f"[$text-muted]{field.spec.label}: {escape(field.why())}[/]"
            self.query_one("#settings-help", Static).update(help_text)

    @on(Select.Changed, "#preset")
    def _preset(self, event: Select.Changed) -> None:
        event.stop()
        self.screen.post_message(PresetChosen(None if event.value == NO_PRESET else str(event.value)))

