"""Loading a config: its layers stacked, then validated as a whole into a RunConfig.

The command line, the wizard and saved runs all load through here, so a config means the same wherever it is
written. Over tuneterm's defaults lie, lowest first, a built-in config, a preset, a file and `--set` arguments (in
the wizard: the preset, then what the person set), and each key takes its value from the highest layer that sets
it. Validation reports every problem at once, each with its place, instead of stopping at the first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tuneterm.config.options import AUTO, OPTION_BY_KEY, OPTIONS, PRECISION_FLAGS, RENAMED
from tuneterm.config.passthrough import check_pass_through
from tuneterm.config.runconfig import RunConfig
from tuneterm.config.sources import Given, file_layer, mapping_layer, override_layer, preset_path
from tuneterm.config.values import INVALID, checked_value
from tuneterm.errors import METHODS, ConfigError, Location, Method, Problem


def load_config(path: str | Path | None = None, *, preset: str | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None, base_source: str = "built-in config") -> RunConfig:
    """Read a config file (optional), layer `--set` overrides on top, validate, and fill defaults.

    Layers, lowest first: `base` (a built-in config such as the demo's), the preset, the file, the overrides.
    Paths written in a file are relative to that file's directory; in `base` and `--set`, to the current one.
    Raises ConfigError listing every problem, each with its location.
    """
    problems: list[Problem] = []
    layers = [mapping_layer(base, base_source, problems)] if base is not None else []
    for file in (preset_path(preset) if preset else None, path):
        if file is not None:
            layers.append(file_layer(Path(file), problems))
    layers.append(override_layer(overrides, problems))
    return _validated(layers, problems)


def config_from_mapping(data: Mapping[str, Any], source: str = "config", *, preset: str | None = None) -> RunConfig:
    """Validate an in-memory nested config (the same shape as the YAML), over a preset's values when one is named:
    the wizard's values over the preset chosen in it. Raises ConfigError like load_config."""
    problems: list[Problem] = []
    layers = [file_layer(preset_path(preset), problems)] if preset else []
    layers.append(mapping_layer(data, source, problems))
    return _validated(layers, problems)


def _validated(layers: Iterable[Given], problems: list[Problem]) -> RunConfig:
    """The layers stacked key by key (a higher layer's value replaces a lower one's), checked, and completed with
    the defaults. Raises ConfigError listing every problem, those found while the layers were read included."""
    given: Given = {}
    for layer in layers:
        given.update(layer)
    method_value, method_origin = given.get("method", ("lora", Location(key="method")))
    if method_value not in METHODS:
        problems.append(Problem(f"{method_value!r} is not one of {', '.join(METHODS)}", method_origin))
        method_value = "lora"
    method: Method = method_value

    values: dict[str, Any] = {"method": method}
    defaulted: set[str] = set() if "method" in given else {"method"}
    unknown: Given = {}

    for key, (value, origin) in given.items():
        if key == "method":
            continue
        if key in RENAMED:
            problems.append(Problem(RENAMED[key], origin))
            continue
        if key in PRECISION_FLAGS:
            _precision_flag(key, value, origin, given, values, problems)
            continue
        option = OPTION_BY_KEY.get(key)
        if option is None:
            unknown[key] = (value, origin)
            continue
        if method not in option.methods:
            problems.append(Problem(f"applies to method {' or '.join(option.methods)}, but method is {method}",
                                    origin))
            continue
        checked = checked_value(option, value, origin, problems)
        if checked is not INVALID:
            values[key] = checked

    check_pass_through(unknown, method, values, problems)

    for option in OPTIONS:
        if option.key == "method" or method not in option.methods or option.key in values:
            continue
        if option.required:
            problems.append(Problem(f"required ({option.why})", Location(key=option.key)))
            continue
        values[option.key] = option.default_for(method)
        defaulted.add(option.key)

    notes = _check_combinations(values, given, problems)
    if problems:
        raise ConfigError(problems)
    return RunConfig(values, frozenset(defaulted), notes)


def _precision_flag(key: str, value: Any, origin: Location, given: Given, values: dict[str, Any],
                    problems: list[Problem]) -> None:
    """training.bf16 or training.fp16: true is another way to write training.precision."""
    if not isinstance(value, bool):
        problems.append(Problem(f"expected true/false, got {value!r}", origin))
        return
    if not value:
        return
    precision = PRECISION_FLAGS[key]
    explicit = given.get("training.precision", (None, None))[0]
    if explicit not in (None, AUTO, precision):
        problems.append(Problem(f"true contradicts training.precision: {explicit}; keep one of them", origin))
        return
    if values.get("training.precision", precision) != precision:
        problems.append(Problem("bf16 and fp16 cannot both be true", origin))
        return
    values["training.precision"] = precision


def _check_combinations(values: dict[str, Any], given: Given, problems: list[Problem]) -> dict[str, str]:
    """Checks that involve several keys; returns notes for values that follow from other keys."""
    notes = {}

    def origin(key: str) -> Location:
        return given[key][1] if key in given else Location(key=key)

    if values.get("data.eval") and "data.val_size" in given and values.get("data.val_size"):
        problems.append(Problem("an eval file is given (data.eval); set one of them, not both",
                                origin("data.val_size")))
    if values.get("data.eval"):
        values["data.val_size"] = 0
        notes["data.val_size"] = "data.eval is given, so nothing is held out of the training data"
    eval_steps, save_steps = values.get("training.eval_steps"), values.get("training.save_steps")
    if (values.get("training.load_best_model_at_end") and isinstance(eval_steps, int)
            and isinstance(save_steps, int) and save_steps % eval_steps):
        problems.append(Problem(f"{save_steps} must be a multiple of eval_steps ({eval_steps}) when "
                                "load_best_model_at_end is true, so that the best evaluated step has a checkpoint",
                                origin("training.save_steps")))
    problems += [Problem(message, origin(key)) for key, message in _impossible_levers(values)]
    return notes


# What TRL's loss does, as the refusals below say it.
_FUSED_HEAD = ("TRL computes the loss through a fused LM head that multiplies by lm_head.weight directly, in chunks, "
               "never building the full logits (its nll loss; chunked_nll is the former name of the same)")


def _impossible_levers(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Speed levers that cannot go together, as (key, why): refused before anything loads, where TRL would refuse
    them only once the model is loaded, or train something else than asked."""
    found = []
    if _selects_lm_head(values.get("lora.target_modules")):
        found.append(("lora.target_modules",
                      f"lm_head cannot carry a LoRA adapter: {_FUSED_HEAD}, so an adapter on it would never train "
                      "and TRL refuses it. Leave lm_head out (all-linear never includes it)"))
    liger = values.get("training.liger_kernel_config")
    if isinstance(liger, dict) and liger.get("fused_linear_cross_entropy"):
        found.append(("training.liger_kernel_config",
                      f"Liger's fused linear cross-entropy cannot be used: {_FUSED_HEAD}, and Liger's would replace "
                      "the model's forward that carries it, so TRL refuses the pair. Leave "
                      "fused_linear_cross_entropy out: the fused LM head saves the same logits memory"))
    if values.get("training.packing") is True and values.get("training.packing_strategy") == "wrapped" \
            and values.get("training.padding_free"):
        found.append(("training.padding_free",
                      "padding-free rows need whole examples (positions restart at each one), and wrapped packing "
                      "cuts examples mid-way: use packing_strategy: bfd, which is padding-free already"))
    return found


def _selects_lm_head(targets: Any) -> bool:
    """Whether target_modules selects the output layer as PEFT matches it: a list by name (or a name's last part),
    a string as a regular expression over the module's name (all-linear never includes the output layer)."""
    if isinstance(targets, list):
        return any(str(name) == "lm_head" or str(name).endswith(".lm_head") for name in targets)
    if not isinstance(targets, str) or targets == "all-linear":
        return False
    try:
        return re.fullmatch(targets, "lm_head") is not None
    except re.error:
        return False
