"""One value against its option: as a config file, a `--set` argument or a wizard field gives it.

Validation of a whole config and a field checked as it is typed read a value the same way here, so that a value
the wizard accepts is one the run accepts. A problem names the likely intended word for a misspelling.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuneterm.config.options import AUTO, OPTION_BY_KEY, Option, did_you_mean
from tuneterm.errors import Location, Problem

LISTED_CHOICES = 12
"""A longer list of choices is not spelled out in an error: the closest name is."""

INVALID = object()
"""What `checked_value` returns for a value it rejected (None is a valid value)."""


def checked_value(option: Option, value: Any, origin: Location, problems: list[Problem]) -> Any:
    """The value as the option takes it ("2e-4" becomes a number), or INVALID with the reason in `problems`."""
    if value is None:
        if option.nullable:
            return None
        problems.append(Problem(f"needs a value ({option.why})", origin))
        return INVALID
    if value == AUTO and option.default_for("lora") == AUTO:
        return AUTO
    value = coerced(value, option.types)
    if not isinstance(value, option.types) or (isinstance(value, bool) and bool not in option.types):
        expected = " or ".join(type_name(t) for t in option.types)
        problems.append(Problem(f"expected {expected}, got {value!r}", origin))
        return INVALID
    if option.choices and value not in option.choices:
        listed = (", ".join(map(str, option.choices)) if len(option.choices) <= LISTED_CHOICES else
                  f"the {len(option.choices)} names transformers accepts")
        problems.append(Problem(f"{value!r} is not one of {listed}{did_you_mean(str(value), map(str, option.choices))}",
                                origin))
        return INVALID
    if option.check is not None:
        problem = option.check(value)
        if problem:
            problems.append(Problem(f"{value!r} {problem}", origin))
            return INVALID
    return value


def check_value(key: str, value: Any) -> tuple[Any, str | None]:
    """One value for a key, as validation reads it ("2e-4" becomes a number), and what is wrong with it or None:
    for a screen that checks a field as it is typed (the whole config is validated again before anything runs)."""
    option = OPTION_BY_KEY.get(key)
    if option is None:
        return value, None
    problems: list[Problem] = []
    checked = checked_value(option, value, Location(key=key), problems)
    return (value, problems[0].message) if problems else (checked, None)


def coerced(value: Any, types: tuple[type, ...]) -> Any:
    """YAML 1.1 reads `2e-4` as a string and `1` as an int: accept both where a float is expected."""
    if float in types and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if float in types and int not in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def type_name(t: type) -> str:
    """A type as a problem names it: "an integer", "true/false"."""
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(t, t.__name__)


def output_dir_problem(output: str) -> Problem | None:
    """An explicit output directory must be new or empty: tuneterm never writes into an existing run."""
    path = Path(output).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return Problem(f"{path} already exists and is not empty; tuneterm never writes into an existing run. Choose "
                       "a new directory, or leave output_dir unset to get a fresh one under runs/",
                       Location(key="training.output_dir"))
    return None
