"""Where a config's values come from: YAML files, presets, in-memory mappings and `--set` arguments.

Each source becomes a layer of the same flat shape, a dotted key with its value and the place it was written (file
and line, or the argument), so that layers stack by key and every problem can say where to fix it. Paths in a
layer are resolved here, relative to the file they were written in, so a saved config runs from anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from tuneterm.config.options import EXPERIMENTS_SECTION, OPTION_BY_KEY, PATH_KEYS, RENAMED, SECTIONS, did_you_mean
from tuneterm.errors import ConfigError, Location, Problem
from tuneterm.hub import resolve_source

Given = dict[str, tuple[Any, Location]]
"""Dotted key -> (value as written, where it was written)."""

PRESETS_DIR = Path(__file__).parent.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A built-in preset by name (cpu-quick-test, qlora-7b-24gb, ...) or a YAML file of your own."""
    path = PRESETS_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    if Path(name).is_file():
        return Path(name)
    raise ConfigError([Problem(f"no such preset{did_you_mean(name, preset_names())}; the presets are "
                               f"{', '.join(preset_names())}", Location(file=f"--preset {name}"))])


def nested_of(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"training.seed": 1, "method": "lora"} -> {"training": {"seed": 1}, "method": "lora"}: the YAML's shape."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return nested


def file_layer(path: Path, problems: list[Problem]) -> Given:
    """A config file or a preset, each value located at its line; paths relative to the file's directory."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([Problem("no such config file", Location(str(path)))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(f"cannot read the config: {exc}", Location(str(path)))]) from None
    data, lines = _yaml_with_lines(text, str(path))
    layer = _flatten(data, lines, Location(str(path)), problems)
    return layer if path.parent == PRESETS_DIR else _with_paths_resolved(layer, path.resolve().parent)


def mapping_layer(data: Mapping[str, Any], source: str, problems: list[Problem]) -> Given:
    """An in-memory config of the YAML's shape, located at `source`; paths relative to the current directory."""
    return _with_paths_resolved(_flatten(data, {}, Location(source), problems), Path.cwd())


def override_layer(overrides: Iterable[str], problems: list[Problem]) -> Given:
    """`--set` arguments, each value located at its argument; paths relative to the current directory."""
    layer: Given = {}
    for text in overrides:
        key, value = parse_override(text)
        if "." not in key and key != "method":
            problems.append(Problem(f"needs its section: {_sectionless_hint(key)}", Location(argument=text, key=key)))
            continue
        layer[key] = (value, Location(argument=text, key=key))
    return _with_paths_resolved(layer, Path.cwd())


def parse_override(text: str) -> tuple[str, Any]:
    """`training.learning_rate=1e-4` -> ("training.learning_rate", 1e-4). The value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([Problem("expected KEY=VALUE, for example --set training.learning_rate=1e-4",
                                   Location(argument=text))])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _yaml_with_lines(text: str, source: str) -> tuple[dict[str, Any], dict[str, Location]]:
    """Parse a YAML mapping and note the line of every key (dotted, one level of sections deep)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = Location(source, mark.line + 1 if mark else None)
        raise ConfigError([Problem(f"not valid YAML: {getattr(exc, 'problem', exc)}", where)]) from None
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError([Problem("the config must be a mapping of keys (method, model, data, lora, quantization, "
                                   "training)", Location(source, root.start_mark.line + 1))])
    data = yaml.safe_load(text)
    lines: dict[str, Location] = {}
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = Location(source, key_node.start_mark.line + 1, key=str(key_node.value))
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                dotted = f"{key_node.value}.{sub_key.value}"
                lines[dotted] = Location(source, sub_key.start_mark.line + 1, key=dotted)
    return data, lines


def _flatten(data: Mapping[str, Any], lines: Mapping[str, Location], origin: Location,
             problems: list[Problem]) -> Given:
    """{"training": {"seed": 1}} -> {"training.seed": (1, location)}; structural mistakes go to `problems`."""
    flat: Given = {}
    for top, value in data.items():
        where = lines.get(str(top), replace(origin, key=str(top)))
        if top == "method":
            flat["method"] = (value, where)
        elif top == EXPERIMENTS_SECTION:
            continue  # the experiment's, read by engine/experiment/definition.py
        elif top in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                problems.append(Problem(f"must be a mapping of keys, got {value!r}", where))
                continue
            for key, sub_value in value.items():
                dotted = f"{top}.{key}"
                flat[dotted] = (sub_value, lines.get(dotted, replace(where, key=dotted)))
        elif not _sectionless_hint(str(top)).startswith("a key is"):
            problems.append(Problem(f"needs its section: {_sectionless_hint(str(top))}", where))
        else:
            suggestion = did_you_mean(str(top), ("method", *SECTIONS))
            problems.append(Problem(f"unknown top-level key{suggestion}; a config has method, {', '.join(SECTIONS)}",
                                    where))
    return flat


def _sectionless_hint(name: str) -> str:
    """What to write for a key given without its section: "lr" -> "write training.learning_rate"."""
    for dotted, hint in RENAMED.items():
        if dotted.split(".", 1)[1] == name and hint.startswith("write "):
            return hint
    for dotted in OPTION_BY_KEY:
        if "." in dotted and dotted.split(".", 1)[1] == name:
            return f"write {dotted}"
    return f"a key is SECTION.NAME ({', '.join(SECTIONS)}), for example training.{name}"


def _with_paths_resolved(layer: Given, base: Path) -> Given:
    resolved = dict(layer)
    for key in PATH_KEYS:
        if key not in layer:
            continue
        value, where = layer[key]
        inline_template = key == "model.chat_template" and isinstance(value, str) and ("{{" in value or "{%" in value)
        if isinstance(value, str) and value and not inline_template:
            resolved[key] = (resolve_source(value, base), where)
    return resolved
