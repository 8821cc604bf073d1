"""Wizard step 4: the run as it will start. The resolved config as YAML (what the person set plain, tuneterm's
defaults and what the data decided marked), the `tuneterm train` command that starts the same run, what is
still missing, and the actions: save the config, launch, or run it as an experiment (variations compared)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.widgets import Button, Checkbox, Static

from tuneterm.config import RunConfig
from tuneterm.errors import Problem
from tuneterm.ui.widgets.tick import Tick


@dataclass
class SaveRequested(Message, bubble=False):
    """The person asked to save the config to a file."""


@dataclass
class LaunchRequested(Message, bubble=False):
    """The person asked to start the run."""


@dataclass
class ExperimentSetupRequested(Message, bubble=False):
    """The person asked to run variations of the config as an experiment."""


def marked_yaml(config: RunConfig) -> str:
    """The config's YAML with the comments on defaulted values dim and on derived values in the accent colour."""
    lines = []
    for line in config.to_yaml().splitlines()[2:]:
        value, _, comment = line.partition("  # ")
        if comment.startswith("derived:"):
            lines.append(f"{escape(value)}  [$accent]# {escape(comment)}[/]")
        elif comment:
            lines.append(f"{escape(value)}  [$text-muted]# {escape(comment)}[/]")
        else:
            lines.append(f"[b]{escape(value)}[/b]")
    return "\n".join(lines)


class ReviewStep(VerticalScroll):
    def __init__(self, detached_by_default: bool, id: str | None = None):
        super().__init__(id=id)
        self.detached_by_default = detached_by_default
        self.command = ""
        self.launch = ""

    @property
    def detached(self) -> bool:
        return self.query_one("#detached", Checkbox).value

    def compose(self) -> ComposeResult:
        yield Static(id="review-status")
        yield Static("The same run from a shell", classes="group-title")
        yield Static(id="review-command")
        with Horizontal(id="review-actions"):
            yield Button("Save config (ctrl+s)", id="save", compact=True)
            yield Button("Launch (ctrl+r)", id="launch", variant="primary", compact=True)
        yield Button("Run as an experiment (ctrl+e)", id="experiment", compact=True,
                     tooltip="Variations of this config (rank, learning rate...), each a run, compared at the end")
        yield Tick("Run detached (outlives this terminal)", self.detached_by_default, id="detached",
                       compact=True, tooltip="The run gets its own process: closing this terminal or losing the SSH "
                                             "connection does not stop it. Watch it again with tuneterm monitor.")
        yield Static("Resolved config: [b]bold[/b] is yours, [$text-muted]dim[/] tuneterm's default, "
                     "[$accent]accent[/] derived from the data and the machine", classes="group-title")
        yield Static(id="review-yaml")

    def show(self, config: RunConfig | None, problems: list[Problem], command: str, launch: str,
             source: str | None) -> None:
        """`launch`: what the command runs on several GPUs (accelerate launch ...), or ""."""
        status = self.query_one("#review-status", Static)
        blocking = [p for p in problems if p.level == "error"]
        if blocking:
            status.update("[$error][b]Not ready to launch:[/b][/]\n" +
                          "\n".join(f"  [$error]✗[/] {escape(str(p))}" for p in blocking))
        else:
            saved = f" (saved as {escape(source)})" if source else ""
            status.update(f"[$success][b]Ready to launch.[/b][/]{saved}")
        self.query_one("#launch", Button).disabled = bool(blocking)
        self.query_one("#experiment", Button).disabled = bool(blocking)
        self.command, self.launch = command, launch
        self.show_command()
        self.query_one("#review-yaml", Static).update(marked_yaml(config) if config is not None else "")

    def show_command(self) -> None:
        """With GPUs chosen the run is a launch of its own: always detached, and the launcher's line is shown."""
        checkbox = self.query_one("#detached", Checkbox)
        checkbox.disabled = bool(self.launch)
        detach = " --detach" if self.detached or self.launch else ""
        underneath = (f"\n[$text-muted]which runs (RUN_DIR is the new run's directory; accelerate.yaml and "
                      f"launch.json are written into it):[/]\n{escape(self.launch)}" if self.launch else "")
        self.query_one("#review-command", Static).update(escape(self.command + detach) + underneath)

    @on(Checkbox.Changed, "#detached")
    def _detached(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.show_command()

    @on(Button.Pressed, "#save")
    def _save(self, event: Button.Pressed) -> None:
        event.stop()
        self.screen.post_message(SaveRequested())

    @on(Button.Pressed, "#launch")
    def _launch(self, event: Button.Pressed) -> None:
        event.stop()
        self.screen.post_message(LaunchRequested())

    @on(Button.Pressed, "#experiment")
    def _experiment(self, event: Button.Pressed) -> None:
        event.stop()
        self.screen.post_message(ExperimentSetupRequested())
