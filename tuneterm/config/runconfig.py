"""The validated run config, and the YAML and `--set` arguments that reproduce it.

A RunConfig is what every later stage reads (the planner, the engine, the screens): every key has a value, and it
remembers which values were defaulted and why a derived value has the value it has, so that the config a run saves
explains itself and runs again as it is.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneterm.config.options import OPTION_BY_KEY, SECTIONS
from tuneterm.config.sources import nested_of
from tuneterm.errors import Method


@dataclass(frozen=True)
class RunConfig:
    """A validated run config: every key has a value (possibly "auto" until the run resolves it)."""

    values: dict[str, Any]
    """Flat dotted keys -> values, including pass-through Hugging Face fields."""
    defaulted: frozenset[str] = frozenset()
    """Keys whose value is tuneterm's default rather than the user's."""
    notes: dict[str, str] = field(default_factory=dict)
    """Why a key has its value, for values derived when the run was resolved (e.g. max_length from the data)."""

    @property
    def method(self) -> Method:
        method: Method = self.values["method"]
        return method

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def section(self, name: str) -> dict[str, Any]:
        """The keys of one section, without the section prefix."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}

    def resolved(self, changes: Mapping[str, tuple[Any, str]]) -> RunConfig:
        """A copy with derived values filled in: {key: (value, why)}."""
        values = dict(self.values)
        notes = dict(self.notes)
        for key, (value, why) in changes.items():
            values[key] = value
            notes[key] = why
        return RunConfig(values, self.defaulted, notes)

    def why(self, key: str) -> str:
        if key in self.notes:
            return self.notes[key]
        option = OPTION_BY_KEY.get(key)
        return option.why if option else ""

    def to_nested(self) -> dict[str, Any]:
        return {"method": self.method, **nested_of(self.values)}

    def to_yaml(self) -> str:
        """YAML that reproduces the run, each defaulted or derived value commented with its reason."""
        lines = ["# tuneterm run config. Values marked 'default' or 'derived' were not set by hand.", ""]
        nested = self.to_nested()
        lines.append(_yaml_line("method", nested["method"], self._comment("method"), indent=""))
        for section in SECTIONS:
            if section not in nested:
                continue
            lines.append(f"{section}:")
            for name, value in nested[section].items():
                lines.append(_yaml_line(name, value, self._comment(f"{section}.{name}"), indent="  "))
        return "\n".join(lines) + "\n"

    def _comment(self, key: str) -> str:
        if key in self.notes:
            return f"derived: {self.notes[key]}"
        if key in self.defaulted:
            return f"default: {self.why(key)}"
        return ""

    def save(self, path: Path) -> None:
        path.write_text(self.to_yaml(), encoding="utf-8")


def yaml_value(value: Any) -> str:
    """A value as one line of YAML, as a config file or a --set argument writes it."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def set_argument(key: str, value: Any) -> str:
    """`--set key=value`, quoted for a shell."""
    return f"--set {shlex.quote(f'{key}={yaml_value(value)}')}"


def _yaml_line(name: str, value: Any, comment: str, indent: str) -> str:
    line = f"{indent}{name}: {yaml_value(value)}"
    return f"{line}  # {comment}" if comment else line
