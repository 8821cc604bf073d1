"""The run config being edited in the wizard: the truth the widgets write to and the planner reads.

Widgets come and go (a step is hidden, a field is rebuilt for another method); the draft does not, so going back
and forth never loses a value. It holds only what the person set (as the YAML would hold it); tuneterm's
defaults, the preset's values and what the run derives are filled in by validation and planning, so changing the
method still changes the method-specific defaults. Pure: no textual import.
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig, config_from_mapping, load_config, nested_of, set_argument
from tuneterm.engine.launch.command import LaunchSpec
from tuneterm.errors import ConfigError, Location, Problem
from tuneterm.plan.memory import Strategy

# Keys the review step must have before a run can start, with what to tell the person.
NEEDED_TO_LAUNCH = {"model.path": "choose a model", "data.train": "choose a dataset"}


@dataclass
class Draft:
    values: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> value the person set."""
    preset: str | None = None
    source: Path | None = None
    """The config file it was loaded from or last saved to."""
    saved_values: dict[str, Any] | None = None
    """The values as last loaded or saved, to tell whether there is unsaved work."""
    gpus: tuple[int, ...] = ()
    """The GPUs chosen to train on (as nvidia-smi numbers them); none: the first GPU, or the CPU."""
    strategy: Strategy = "single"
    """How several GPUs share the work."""

    @classmethod
    def from_config(cls, config: RunConfig, source: Path | None = None) -> Draft:
        """The values a config file set (not its defaults, not what a run derived)."""
        chosen = {key: value for key, value in config.values.items()
                  if key not in config.defaulted and key not in config.notes}
        return cls(chosen, None, source, copy.deepcopy(chosen))

    @classmethod
    def from_file(cls, path: Path) -> Draft:
        return cls.from_config(load_config(path), path)

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> Draft:
        return cls.from_config(config_from_mapping(mapping))

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> bool:
        """Set (or, with None, unset) one value; True when it changed."""
        if value is None or value == "":
            return self.values.pop(key, None) is not None
        if self.values.get(key) == value:
            return False
        self.values[key] = value
        return True

    def update(self, changes: dict[str, Any]) -> bool:
        return any([self.set(key, value) for key, value in changes.items()])

    @property
    def dirty(self) -> bool:
        """Whether there is work that is not in a file."""
        return self.values != (self.saved_values or {}) and bool(self.values)

    def mark_saved(self, path: Path) -> None:
        self.source = path
        self.saved_values = copy.deepcopy(self.values)

    def config(self) -> RunConfig:
        """Validated with tuneterm's defaults under the preset under the person's values; raises ConfigError."""
        return config_from_mapping(nested_of(self.values), source="the wizard", preset=self.preset)

    def problems(self) -> list[Problem]:
        """Config problems and what is still missing to launch, each with its key."""
        missing = [Problem(message, Location(key=key)) for key, message in NEEDED_TO_LAUNCH.items()
                   if not self.get(key)]
        try:
            self.config()
        except ConfigError as exc:
            return missing + exc.problems
        return missing

    def launch_spec(self) -> LaunchSpec | None:
        """Where the run trains, when GPUs were chosen (a launch of its own); None: in the usual way."""
        if not self.gpus:
            return None
        return LaunchSpec(strategy=self.strategy if len(self.gpus) > 1 else "single", gpus=self.gpus)

    def command_line(self) -> str:
        """The `tuneterm train` command that starts the same run."""
        spec = self.launch_spec()
        launch = f" --gpus {','.join(map(str, spec.gpus))}" + (f" --strategy {spec.strategy}" if len(spec.gpus) > 1
                                                               else "") if spec else ""
        if self.source is not None and not self.dirty:
            return f"tuneterm train {shlex.quote(str(self.source))}{launch}"
        parts = ["tuneterm train"]
        if self.preset:
            parts.append(f"--preset {self.preset}")
        parts += [set_argument(key, value) for key, value in self.values.items()]
        return " ".join(parts) + launch


