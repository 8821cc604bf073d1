"""One setting of the run config as a form field: its control, its value, and the advice the plan gives on it.

The field shows what the person set (an empty input shows the value in effect as its placeholder: tuneterm's
default, the preset's, or what the run derives from the data), refuses an invalid value at once with the reason
(the config layer's own check), and writes valid values to the draft through a message; it never keeps a value
of its own that the draft does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Checkbox, Input, Label, Select, Static

from tuneterm.config import AUTO, OPTION_BY_KEY, check_value, yaml_value
from tuneterm.plan.advice import Advice
from tuneterm.ui.widgets.tick import Tick


@dataclass(frozen=True)
class FieldSpec:
    key: str
    label: str
    choices: tuple[Any, ...] = ()
    """A fixed list: the field is a Select."""
    boolean: bool = False
    placeholder: str = ""


@dataclass
class FieldEdited(Message, bubble=False):
    """A field holds a new valid value."""

    key: str
    value: Any
    """None: the person cleared the field, so the default applies."""


def parse(text: str) -> Any:
    """What a person typed, read as YAML reads a --set value ("2e-4" is a number, "[q_proj, v_proj]" a list)."""
    text = text.strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None else value


class SettingField(Vertical):
    """Label, control and advice of one key."""

    def __init__(self, spec: FieldSpec):
        super().__init__(classes="setting-field", id=f"field-{spec.key.replace('.', '-')}")
        self.spec = spec
        self.advice: Advice | None = None
        self.problems: list[str] = []
        """What about this key stops the launch (the plan's errors), said at the field."""
        self.shown = False
        self.chosen: Any = None
        self.effective: Any = None

    @property
    def key(self) -> str:
        return self.spec.key

    def compose(self) -> ComposeResult:
        with Horizontal(classes="setting-row"):
            yield Label(self.spec.label, classes="setting-label")
            if self.spec.boolean:
                yield Tick(id="control", compact=True)
            elif self.spec.choices:
                yield Select([(str(c), c) for c in self.spec.choices], allow_blank=False, id="control", compact=True)
            else:
                yield Input(id="control", compact=True, placeholder=self.spec.placeholder)
        yield Static(classes="setting-advice")

    def show(self, chosen: Any, effective: Any, origin: str, advice: Advice | None, applicable: bool = True,
             problems: list[str] | None = None) -> None:
        """The person's value (or None), the value in effect and where it comes from ("default", "derived",
        "preset"), the plan's advice on this key, and what about it stops the launch."""
        self.display = applicable
        self.advice, self.chosen, self.effective, self.shown = advice, chosen, effective, True
        self.problems = list(problems or [])
        control = self.query_one("#control")
        if isinstance(control, Checkbox):
            with control.prevent(Checkbox.Changed):
                control.value = bool(effective)
        elif isinstance(control, Select):
            with control.prevent(Select.Changed):
                if effective in self.spec.choices:
                    control.value = effective
        elif isinstance(control, Input):
            if not control.has_focus and not control.has_class("-invalid"):
                with control.prevent(Input.Changed):
                    control.value = "" if chosen is None else yaml_value(chosen)
            shown = "auto" if effective == AUTO else yaml_value(effective) if effective is not None else ""
            control.placeholder = f"{shown} ({origin})" if chosen is None and shown else self.spec.placeholder
        self._show_advice()

    def take(self, value: Any) -> None:
        """A value set for the person (a suggestion taken): shown at once, in the field being typed in too."""
        control = self.query_one("#control")
        if isinstance(control, Input):
            control.remove_class("-invalid")
            with control.prevent(Input.Changed):
                control.value = yaml_value(value)

    def _show_advice(self, typed_problem: str | None = None) -> None:
        """A value typed that is refused, else what stops the launch; then the advice."""
        lines = [f"[$error]✗ {escape(problem)}[/]" for problem in ([typed_problem] if typed_problem
                                                                   else self.problems)]
        if self.advice is not None and not typed_problem:
            advice = self.advice
            colour = "$warning" if advice.level != "info" else "$accent"
            fix = ", ".join(f"{key.split('.', 1)[-1]} = {yaml_value(value)}" for key, value in advice.fix.items())
            fix = f" [$text-muted](ctrl+t sets {escape(fix)})[/]" if fix else ""
            lines.append(f"[{colour}]● {escape(advice.message)}[/]: {escape(advice.why)} "
                         f"[$text-muted]({escape(advice.source)})[/]{fix}")
        text = self.query_one(".setting-advice", Static)
        text.update("\n".join(lines))
        text.display = bool(lines)

    def why(self) -> str:
        option = OPTION_BY_KEY.get(self.key)
        return option.why if option else ""

    @on(Input.Changed, "#control")
    def _typed(self, event: Input.Changed) -> None:
        event.stop()
        value, problem = check_value(self.key, parse(event.value))
        if value is None:
            problem = None
        event.input.set_class(problem is not None, "-invalid")
        self._show_advice(problem)
        if problem is None:
            self.screen.post_message(FieldEdited(self.key, value))

    def _picked(self, value: Any, current: Any) -> None:
        """A choice the person made. Not one the control reported on its own: a Select reports its first option
        when it appears (before the field shows a value, and stale by the time it arrives), and a choice that only
        repeats the value in effect does not pin it."""
        if not self.shown or value != current or value is Select.NULL:
            return
        if self.chosen is not None or value != self.effective:
            self.screen.post_message(FieldEdited(self.key, value))

    @on(Select.Changed, "#control")
    def _selected(self, event: Select.Changed) -> None:
        event.stop()
        self._picked(event.value, event.select.value)

    @on(Checkbox.Changed, "#control")
    def _checked(self, event: Checkbox.Changed) -> None:
        event.stop()
        self._picked(event.value, event.checkbox.value)
