"""An experiment's definition: its base config and its variations.

Variations come as a grid (`--vary lora.r=8,16,32 --vary training.learning_rate=1e-4,2e-4`: every combination,
the first axis outermost), as a list of variations that each change one or two things (`--variation "lora.r=32"`,
the complete guide's way; the base itself is then run too, to compare them with), or both, and from the command
line or the `experiments:` section of the config file. An axis may set several keys together, so that alpha
follows the rank: `--vary 'lora.r,lora.lora_alpha=[[8,16],[16,32]]'`. Each variation is checked as a whole config
(the base with its values on top) and a problem names where the value was written: the --vary argument, or the
file and line.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tuneterm.config import EXPERIMENTS_SECTION, RunConfig, load_config, nested_of, yaml_value
from tuneterm.errors import ConfigError, Location, Problem

SHORT_NAMES = {"lora.r": "r", "lora.lora_alpha": "alpha", "lora.lora_dropout": "dropout",
               "training.learning_rate": "lr", "training.num_train_epochs": "epochs",
               "training.per_device_train_batch_size": "batch", "training.gradient_accumulation_steps": "accum",
               "training.max_length": "len", "training.weight_decay": "wd", "training.warmup_steps": "warmup",
               "training.seed": "seed", "training.lr_scheduler_type": "", "lora.target_modules": "", "method": "",
               "lora.layers_to_transform": "layers"}
"""How a variation's directory name writes a key ("" : the value alone); other keys by their last part."""


@dataclass(frozen=True)
class Axis:
    """One dimension of a grid: the keys it sets together, and their values at each of its points."""

    keys: tuple[str, ...]
    points: tuple[tuple[Any, ...], ...]
    origin: Location
    """Where it was written: the --vary argument, or the file and line."""


@dataclass(frozen=True)
class Variation:
    """One run of the experiment: the values it sets over the base config."""

    name: str
    overrides: dict[str, Any]
    """Dotted key -> value, in the order written."""
    origins: dict[str, Location] = field(default_factory=dict)
    """Where each value was written, for the problems a value has."""
    repeat_of: str | None = None
    """The variation this one repeats with another seed, to measure the noise between seeds."""
    not_run: str = ""
    """Why it is not run ("": it is), as experiment.yaml keeps it."""

    def set_arguments(self) -> list[str]:
        """Its values as --set words."""
        return [f"{key}={yaml_value(value)}" for key, value in self.overrides.items()]


@dataclass
class ExperimentSpec:
    """What a person asked for, before anything is written."""

    name: str
    base: RunConfig
    base_source: str
    """Where the base config came from: its file, a preset, the wizard."""
    axes: list[Axis] = field(default_factory=list)
    listed: list[Variation] = field(default_factory=list)
    """Variations given one by one (named or not yet): the base is run with them, first."""
    measure_noise: bool = False
    """Run the first variation a second time with another seed: the difference is the noise between seeds."""
    gpus: tuple[int, ...] = ()
    """One variation per GPU, side by side; none: one after another."""

    def variations(self) -> list[Variation]:
        """Every run of the experiment, in order, numbered and named: the grid's points, then the base and the
        listed variations, then the repeat that measures the noise."""
        found: list[Variation] = []
        for point in itertools.product(*(axis.points for axis in self.axes)) if self.axes else ():
            overrides: dict[str, Any] = {}
            origins: dict[str, Location] = {}
            for axis, values in zip(self.axes, point):
                overrides.update(zip(axis.keys, values))
                origins.update({key: axis.origin for key in axis.keys})
            found.append(Variation("", overrides, origins))
        if self.listed:
            found += [Variation("base", {}), *self.listed]
        if self.measure_noise and found:
            first = found[0]
            seed = first.overrides.get("training.seed", self.base.get("training.seed"))
            seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else self.base.get("training.seed")
            found.append(Variation(f"{first.name or name_of(first.overrides)}-seed{seed + 1}",
                                   {**first.overrides, "training.seed": seed + 1}, first.origins,
                                   repeat_of=first.name or name_of(first.overrides)))
        width = max(2, len(str(len(found))))
        numbered = [replace(v, name=f"{index:0{width}d}-{v.name or name_of(v.overrides)}")
                    for index, v in enumerate(found, start=1)]
        names = {v.name.split("-", 1)[1]: v.name for v in numbered}
        return [replace(v, repeat_of=names.get(v.repeat_of, v.repeat_of)) if v.repeat_of else v for v in numbered]

    @property
    def varied(self) -> list[str]:
        """The keys some variation sets, in the order they were first given."""
        return list(dict.fromkeys(key for v in self.variations() for key in v.overrides))


@dataclass(frozen=True)
class Checked:
    """A variation checked as a whole config: its config, or the problems that keep it from running."""

    variation: Variation
    config: RunConfig | None
    problems: list[Problem]


def check_variations(spec: ExperimentSpec) -> list[Checked]:
    """Each variation's config (the base with its values on top), validated; values written as the config holds
    them ("2e-4" as a number). A variation with the very settings of an earlier one is not run twice."""
    base = given_values(spec.base)
    checked: list[Checked] = []
    seen: dict[str, str] = {}
    for variation in spec.variations():
        try:
            config = load_config(base=base, base_source=spec.base_source, overrides=variation.set_arguments())
        except ConfigError as exc:
            checked.append(Checked(variation, None, [_located(p, variation) for p in exc.problems]))
            continue
        variation = replace(variation, overrides={key: config.get(key) for key in variation.overrides})
        settings = repr(sorted(config.values.items()))
        if settings in seen:
            checked.append(Checked(variation, None, [Problem(f"the same settings as {seen[settings]}")]))
            continue
        seen[settings] = variation.name
        checked.append(Checked(variation, config, []))
    return checked


def given_values(config: RunConfig) -> dict[str, Any]:
    """The config as its author wrote it (nested): not its defaults, nor what follows from other values."""
    return nested_of({key: value for key, value in config.values.items()
                      if key not in config.defaulted and key not in config.notes})


def _located(problem: Problem, variation: Variation) -> Problem:
    """A problem of a variation's value, said where the value was written (not as the --set it became)."""
    origin = variation.origins.get(problem.location.key or "") if problem.location.argument else None
    return replace(problem, location=replace(origin, key=problem.location.key)) if origin else problem


# Reading what a person wrote ------------------------------------------------------------------------------------


def parse_vary(text: str, origin: Location | None = None) -> Axis:
    """`KEY=V1,V2,...` (each value read as YAML, as --set reads one), `KEY=[V1, V2]` (a YAML list, for values that
    hold commas), or `KEY1,KEY2=[[A1, B1], [A2, B2]]` (keys set together)."""
    origin = origin or Location(file=f"--vary {text}")
    keys_text, sep, values_text = text.partition("=")
    keys = tuple(key.strip() for key in keys_text.split(",") if key.strip())
    if not sep or not keys or not values_text.strip():
        raise ConfigError([Problem("expected KEY=V1,V2,... (or KEY1,KEY2=[[A1, B1], [A2, B2]] for keys that change "
                                   "together)", origin)])
    if values_text.strip().startswith("["):
        try:
            values = yaml.safe_load(values_text)
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(f"the values are not a YAML list: {getattr(exc, 'problem', exc)}",
                                       origin)]) from None
    else:
        values = [_yaml_scalar(item) for item in values_text.split(",")]
    return axis_of(keys, values, origin)


def axis_of(keys: tuple[str, ...], values: Any, origin: Location) -> Axis:
    """An axis from its keys and a list of values (a list of lists for several keys), checked."""
    where = replace(origin, key=keys[0] if len(keys) == 1 else None)
    if not isinstance(values, list) or not values:
        raise ConfigError([Problem("give the values as a list of at least one", where)])
    points: list[tuple[Any, ...]] = []
    for value in values:
        if len(keys) == 1:
            point: tuple[Any, ...] = (value,)
        elif isinstance(value, list) and len(value) == len(keys):
            point = tuple(value)
        else:
            raise ConfigError([Problem(f"{yaml_value(value)}: each point of {', '.join(keys)} is a list of "
                                       f"{len(keys)} values, one per key", where)])
        if point in points:
            raise ConfigError([Problem(f"{yaml_value(list(point) if len(point) > 1 else point[0])} is given twice",
                                       where)])
        points.append(point)
    return Axis(keys, tuple(points), origin)


def parse_variation(text: str) -> Variation:
    """`--variation "lora.r=32 lora.lora_alpha=64"`: --set words, as a shell would split them."""
    origin = Location(file=f"--variation {text}")
    overrides: dict[str, Any] = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError([Problem(f"{word!r}: expected KEY=VALUE words", origin)])
        overrides[key.strip()] = _yaml_scalar(value)
    if not overrides:
        raise ConfigError([Problem("expected KEY=VALUE words", origin)])
    return Variation("", overrides, dict.fromkeys(overrides, origin))


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text.strip()


@dataclass
class Section:
    """What the `experiments:` section of a config file asks for."""

    name: str | None = None
    axes: list[Axis] = field(default_factory=list)
    listed: list[Variation] = field(default_factory=list)
    measure_noise: bool = False


SECTION_KEYS = ("name", "grid", "variations", "measure_noise")


def read_section(path: Path) -> Section:
    """The config file's `experiments:` section (an empty Section when it has none), every value located at its
    line; ConfigError with every problem found."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return Section()  # loading the config says what is wrong with the file
    node = _child(root, EXPERIMENTS_SECTION) if isinstance(root, yaml.MappingNode) else None
    if node is None:
        return Section()
    problems: list[Problem] = []

    def at(item: yaml.Node, key: str | None = None) -> Location:
        return Location(str(path), item.start_mark.line + 1, key=key)

    section = Section()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError([Problem("a mapping of name, grid, variations and measure_noise",
                                   at(node, EXPERIMENTS_SECTION))])
    for key_node, value_node in node.value:
        key, value = str(key_node.value), yaml.safe_load(yaml.serialize(value_node))
        if key == "name":
            section.name = str(value)
        elif key == "measure_noise":
            section.measure_noise = bool(value)
        elif key == "grid":
            if not isinstance(value_node, yaml.MappingNode):
                problems.append(Problem("a mapping of KEY: [values] (or KEY1, KEY2: [[A1, B1], ...])",
                                        at(value_node, "experiments.grid")))
                continue
            for axis_key, axis_values in value_node.value:
                keys = tuple(k.strip() for k in str(axis_key.value).split(",") if k.strip())
                try:
                    section.axes.append(axis_of(keys, yaml.safe_load(yaml.serialize(axis_values)),
                                                at(axis_key)))
                except ConfigError as exc:
                    problems += exc.problems
        elif key == "variations":
            if not isinstance(value_node, yaml.SequenceNode):
                problems.append(Problem("a list of variations, each a mapping of KEY: value",
                                        at(value_node, "experiments.variations")))
                continue
            for item in value_node.value:
                listed = _listed_variation(item, at, problems)
                if listed is not None:
                    section.listed.append(listed)
        else:
            problems.append(Problem(f"unknown key; the section has {', '.join(SECTION_KEYS)}",
                                    at(key_node, f"experiments.{key}")))
    if problems:
        raise ConfigError(problems)
    return section


def _listed_variation(item: yaml.Node, at: Any, problems: list[Problem]) -> Variation | None:
    if not isinstance(item, yaml.MappingNode):
        problems.append(Problem("a variation is a mapping of KEY: value (and an optional name)", at(item)))
        return None
    name, overrides, origins = "", {}, {}
    for key_node, value_node in item.value:
        key, value = str(key_node.value), yaml.safe_load(yaml.serialize(value_node))
        if key == "name":
            name = _slug(str(value))
        elif isinstance(value, dict) and "." not in key:
            problems.append(Problem(f"write its keys dotted, as --set does ({key}.NAME: value)", at(key_node, key)))
        else:
            overrides[key], origins[key] = value, at(key_node, key)
    if not overrides:
        problems.append(Problem("a variation sets at least one KEY: value", at(item)))
        return None
    return Variation(name, overrides, origins)


def _child(mapping: yaml.MappingNode, name: str) -> yaml.Node | None:
    return next((value for key, value in mapping.value if key.value == name), None)


def spec_of(base: RunConfig, base_source: str, vary: Sequence[str] = (), variations: Sequence[str] = (),
            name: str | None = None, section: Section | None = None, measure_noise: bool = False,
            gpus: tuple[int, ...] = (), axes: Sequence[Axis] = ()) -> ExperimentSpec:
    """The experiment a person asked for: the file's section, then what the command line adds to it (its --vary
    words, or `axes` made already)."""
    section = section or Section()
    problems: list[Problem] = []
    axes, listed = [*section.axes, *axes], list(section.listed)
    for text in vary:
        try:
            axes.append(parse_vary(text))
        except ConfigError as exc:
            problems += exc.problems
    for text in variations:
        try:
            listed.append(parse_variation(text))
        except ConfigError as exc:
            problems += exc.problems
    if not axes and not listed and not problems:
        problems.append(Problem("nothing varies: give --vary KEY=V1,V2 (a grid), --variation \"KEY=VALUE ...\" (one "
                                "by one), or an experiments: section in the config file"))
    repeated = [key for key, count in _key_counts(axes).items() if count > 1]
    problems += [Problem("varied by two axes: give its values once", Location(key=key)) for key in repeated]
    if problems:
        raise ConfigError(problems)
    spec = ExperimentSpec("", base, base_source, axes, listed, measure_noise or section.measure_noise, gpus)
    spec.name = _slug(name or section.name or "-".join(short_name(k) for k in spec.varied[:3]) or "experiment")
    return spec


def _key_counts(axes: list[Axis]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for axis in axes:
        for key in axis.keys:
            counts[key] = counts.get(key, 0) + 1
    return counts


def short_name(key: str) -> str:
    """A key as tables head its column and an experiment's name writes it: r, alpha, lr, epochs."""
    return SHORT_NAMES.get(key) or key.split(".")[-1]


def name_of(overrides: dict[str, Any]) -> str:
    """A short name from a variation's values: r16-lr2e-4, qlora-epochs5."""
    parts = [SHORT_NAMES.get(key, key.split(".")[-1]) + value_text(value) for key, value in overrides.items()]
    return _slug("-".join(parts)) or "base"


def value_text(value: Any) -> str:
    """A value as short as it reads: 2e-4 (not 0.0002), 0.05, 16, q_proj+v_proj."""
    if isinstance(value, float) and value and (abs(value) < 1e-3 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, list):
        return "+".join(map(value_text, value))
    if value is None:
        return "none"
    return yaml_value(value) if not isinstance(value, str) else value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")[:60]
