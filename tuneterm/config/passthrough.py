"""Hugging Face's own arguments, passed through: any SFTConfig, LoraConfig or BitsAndBytesConfig argument is a key.

tuneterm's option table covers what it has a recommendation for; the rest of those classes' arguments are valid
too, checked here against the class's constructor so that a misspelling is still caught before the run starts. The
classes are imported only when a config has such a key: reading a config stays free of torch and transformers.
"""

from __future__ import annotations

import functools
from typing import Any

from tuneterm.config.options import OPTIONS, did_you_mean
from tuneterm.config.sources import Given
from tuneterm.config.values import coerced, type_name
from tuneterm.errors import Problem

_PASS_THROUGH_CLASSES = {
    "training": ("trl", "SFTConfig"),
    "lora": ("peft", "LoraConfig"),
    "quantization": ("transformers", "BitsAndBytesConfig"),
}


@functools.cache
def _hf_fields(section: str) -> dict[str, str]:
    """Parameter name -> type annotation text of the Hugging Face class behind a section (imported lazily).

    Read from the constructor, not the dataclass fields: BitsAndBytesConfig in transformers 5 is a dataclass with
    one field that takes everything else as constructor arguments.
    """
    import inspect

    module_name, class_name = _PASS_THROUGH_CLASSES[section]
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    params = inspect.signature(cls.__init__).parameters
    return {name: str(p.annotation) for name, p in params.items()
            if name not in ("self", "kwargs") and p.kind is not p.VAR_KEYWORD}


def check_pass_through(unknown: Given, method: str, values: dict[str, Any], problems: list[Problem]) -> None:
    """Check the keys the option table does not know against the Hugging Face classes; add the valid ones to
    `values` and what is wrong with the others to `problems`."""
    by_section: dict[str, Given] = {}
    for key, item in unknown.items():
        section, name = key.split(".", 1)
        by_section.setdefault(section, {})[name] = item
    for section, items in by_section.items():
        known_here = [o.key.split(".", 1)[1] for o in OPTIONS if o.key.startswith(section + ".")]
        hf = _hf_fields(section) if section in _PASS_THROUGH_CLASSES else {}
        for name, (value, origin) in items.items():
            key = f"{section}.{name}"
            if name not in hf:
                problems.append(Problem(f"unknown key{did_you_mean(name, [*known_here, *hf])}", origin))
                continue
            if section == "lora" and method == "full" or section == "quantization" and method != "qlora":
                problems.append(Problem(f"the {section} section does not apply to method {method}", origin))
                continue
            problem = _annotation_problem(value, hf[name])
            if problem:
                problems.append(Problem(problem, origin))
                continue
            values[key] = coerced(value, (float,)) if "float" in hf[name] and "str" not in hf[name] else value


def _annotation_problem(value: Any, annotation: str) -> str | None:
    """A light type check against an annotation such as 'float | None' or 'Union[str, int]'."""
    if value is None:
        return None if "None" in annotation or "Optional" in annotation else "needs a value"
    accepted = [t for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list),
                                  ("dict", dict)) if name in annotation]
    if not accepted or any(t is str for t in accepted) or "Any" in annotation:
        return None
    if isinstance(value, bool) and bool not in accepted:
        return f"expected {' or '.join(type_name(t) for t in accepted)}, got {value!r}"
    if float in accepted:
        value = coerced(value, (float,))
    if isinstance(value, tuple(accepted)):
        return None
    return f"expected {' or '.join(type_name(t) for t in accepted)}, got {value!r}"
