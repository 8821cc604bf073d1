"""The run config: one YAML shape for config files, presets, `--set` overrides and saved runs.

A run is described by six top-level keys: `method` (lora | qlora | full), `model`, `data`, `lora`,
`quantization` and `training`. Inside `lora`, `quantization` and `training` the names are Hugging Face's own
(LoraConfig, BitsAndBytesConfig, SFTConfig / TrainingArguments), so a person who knows those libraries can write
a config without reading ours; any valid SFTConfig / LoraConfig / BitsAndBytesConfig argument passes through.

Defaults are the recommendations of the guides tuneterm is built from, each with its reason, and the resolved
config remembers which values were defaulted. Every problem carries its location (file and line, or --set
argument, and the key) and suggests the likely intended name for a misspelling.

The package, from the bottom up:
- options.py: the keys tuneterm knows, their types, defaults and reasons, and the keys other tools use instead.
- values.py: one value checked against its option, as validation and the wizard's fields both read it.
- sources.py: files, presets, in-memory mappings and `--set` arguments read into layers of located values.
- passthrough.py: the Hugging Face arguments tuneterm has no option for, checked against their classes.
- runconfig.py: the validated RunConfig, and the YAML and `--set` arguments that reproduce it.
- loading.py: the layers stacked and validated as a whole: load_config and config_from_mapping.

Pure: importing it imports no torch and no Hugging Face library. It imports trl, peft or transformers only to
check a key it does not know itself.
"""

from tuneterm.config.loading import config_from_mapping, load_config
from tuneterm.config.options import (
    ATTENTION_NAMES,
    AUTO,
    EXPERIMENTS_SECTION,
    GUIDE_COMPLETE,
    GUIDE_HYPERPARAMS,
    GUIDE_RANK,
    GUIDE_UNSLOTH,
    KERNELS_HUB_FLASH,
    OPTIMIZER_NAMES,
    OPTION_BY_KEY,
    OPTIONS,
    RENAMED,
    SCHEDULER_NAMES,
    SECTIONS,
    Option,
)
from tuneterm.config.runconfig import RunConfig, set_argument, yaml_value
from tuneterm.config.sources import PRESETS_DIR, nested_of, parse_override, preset_names, preset_path
from tuneterm.config.values import check_value, output_dir_problem
from tuneterm.errors import METHODS

__all__ = [
    "ATTENTION_NAMES", "AUTO", "EXPERIMENTS_SECTION", "GUIDE_COMPLETE", "GUIDE_HYPERPARAMS", "GUIDE_RANK",
    "GUIDE_UNSLOTH", "KERNELS_HUB_FLASH", "METHODS", "OPTIMIZER_NAMES", "OPTIONS", "OPTION_BY_KEY", "PRESETS_DIR",
    "RENAMED", "SCHEDULER_NAMES", "SECTIONS", "Option", "RunConfig", "check_value", "config_from_mapping",
    "load_config", "nested_of", "output_dir_problem", "parse_override", "preset_names", "preset_path",
    "set_argument", "yaml_value",
]
