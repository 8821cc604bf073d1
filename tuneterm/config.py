"""The run config: one YAML shape for config files, presets, `--set` overrides and saved runs.

A run is described by six top-level keys: `method` (lora | qlora | full), `model`, `data`, `lora`,
`quantization` and `training`. Inside `lora`, `quantization` and `training` the names are Hugging Face's own
(LoraConfig, BitsAndBytesConfig, SFTConfig / TrainingArguments), so a person who knows those libraries can write
a config without reading ours; any valid SFTConfig / LoraConfig / BitsAndBytesConfig argument passes through.

Defaults are the recommendations of the guides tuneterm is built from, each with its reason, and the resolved
config remembers which values were defaulted. Every problem carries its location (file and line, or --set
argument, and the key) and suggests the likely intended name for a misspelling.

Pure: this module imports no torch and no Hugging Face library at import time. It imports trl, peft or
transformers only to check a key it does not know itself.
"""

from __future__ import annotations

import difflib
import functools
import math
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tuneterm.errors import METHODS, ConfigError, Location, Method, Problem
from tuneterm.hub import resolve_source

SECTIONS = ("model", "data", "lora", "quantization", "training")
AUTO = "auto"

# The guides the defaults come from, as they are cited in comments and advice.
GUIDE_HYPERPARAMS = "'The LoRA Hyperparameters No One Explains'"
GUIDE_UNSLOTH = "Unsloth's LoRA hyperparameters guide"
GUIDE_RANK = "'Which Rank, Alpha, and Layers Actually Matter'"
GUIDE_COMPLETE = "'LoRA Fine-Tuning Complete Guide'"

# The names transformers accepts (its SchedulerType and OptimizerNames; a test keeps them equal), so that a
# misspelled one is caught with the file's other mistakes instead of when the run starts.
SCHEDULER_NAMES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                   "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                   "warmup_stable_decay", "greedy")
OPTIMIZER_NAMES = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw")
LISTED_CHOICES = 12
"""A longer list of choices is not spelled out in an error: the closest name is."""

# --------------------------------------------------------------------------------------------------------------
# Checks used by the option table


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _unit_interval(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be at least 0 and below 1"


def _warmup(value: float | int) -> str | None:
    if isinstance(value, float) and not 0 <= value < 1:
        return "a float is a fraction of the total steps and must be at least 0 and below 1; an integer is a step count"
    return _non_negative(value)


def _val_size(value: float | int) -> str | None:
    if isinstance(value, float) and not 0 <= value < 1:
        return "a float is the fraction of the training data held out and must be at least 0 and below 1"
    return _non_negative(value)


def _auto_or(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value == AUTO else check(value)


def _interval(value: float) -> str | None:
    return None if 0 < value <= 1 else "is a fraction of an epoch: above 0 and at most 1"


@dataclass(frozen=True)
class Option:
    """One key tuneterm knows, with its type, its default and the reason for that default."""

    key: str
    """Dotted name: "training.learning_rate"."""
    types: tuple[type, ...]
    """Accepted Python types after loading YAML; a value of another type is rejected."""
    default: Any = None
    """The default value, or a function of the method ("lora", "qlora", "full") returning it."""
    why: str = ""
    """One or two sentences: why this default, with the guide or measurement it comes from."""
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], str | None] | None = None
    """Returns what is wrong with a value of the right type, or None."""
    required: bool = False
    nullable: bool = False
    """None (YAML `null`) is a valid value."""
    methods: tuple[str, ...] = METHODS
    """The methods this key applies to; setting it under another method is an error."""

    def default_for(self, method: str) -> Any:
        return self.default(method) if callable(self.default) else self.default


OPTIONS: tuple[Option, ...] = (
    Option("method", (str,), "lora", choices=METHODS,
           why="LoRA in 16 bits is slightly faster and more accurate than QLoRA when the model fits "
               f"({GUIDE_UNSLOTH}); choose qlora when memory is short."),
    # model -------------------------------------------------------------------------------------------------
    Option("model.path", (str,), required=True,
           why="A local directory with config.json and tokenizer files, or a Hugging Face hub id."),
    Option("model.revision", (str,), nullable=True, why="The hub's default branch unless you pin one."),
    Option("model.trust_remote_code", (bool,), False,
           why="Running code from a model repository is opt-in."),
    Option("model.attn_implementation", (str,), "sdpa",
           choices=("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"),
           why="SDPA never materialises the seq x seq attention scores that make long sequences run out of "
               f"memory ({GUIDE_HYPERPARAMS}, chapter 2), and needs no extra package."),
    Option("model.chat_template", (str,), nullable=True,
           why="The tokenizer's own chat template; set a .jinja file or a template string to replace it."),
    # data --------------------------------------------------------------------------------------------------
    Option("data.train", (str,), nullable=True,
           why="The training file, directory or hub dataset id: needed to train, not to plan."),
    Option("data.eval", (str,), nullable=True,
           why="A separate evaluation file is better than a split when you have one "
               f"({GUIDE_COMPLETE}, section 3)."),
    Option("data.val_size", (float, int), 0.1, check=_val_size,
           why="Holding out 10% gives the eval loss that early stopping needs; without it overfitting is "
               f"invisible ({GUIDE_COMPLETE}, section 3; {GUIDE_HYPERPARAMS}, chapter 4)."),
    Option("data.format", (str,), AUTO,
           choices=(AUTO, "messages", "sharegpt", "alpaca", "prompt_completion", "text"),
           why="Detected from the records' fields."),
    Option("data.columns", (dict,), nullable=True,
           why="The formats' own field names; map yours, e.g. {instruction: question, output: answer}."),
    Option("data.strict", (bool,), True,
           why="Stop with the full list of invalid records; false leaves them out and says which."),
    Option("data.max_samples", (int,), nullable=True, check=_positive,
           why="All examples; set a number for a quick experiment."),
    Option("data.train_on", (str,), "responses", choices=("responses", "all"),
           why="Loss on the responses only spends every gradient on what the model must learn to write; use "
               f"'all' for knowledge injection from plain text ({GUIDE_HYPERPARAMS}, chapter 5)."),
    # lora --------------------------------------------------------------------------------------------------
    Option("lora.r", (int,), 16, check=_positive, methods=("lora", "qlora"),
           why=f"16 is the suggested start for most tasks ({GUIDE_UNSLOTH}; {GUIDE_RANK})."),
    Option("lora.lora_alpha", (int, float), 16, check=_positive, methods=("lora", "qlora"),
           why="alpha = r gives a scaling of 1.0, the conservative choice that keeps the base model's "
               f"residual stream intact; 2r learns more aggressively ({GUIDE_HYPERPARAMS}, chapter 1)."),
    Option("lora.lora_dropout", (float, int), 0.0, check=_unit_interval, methods=("lora", "qlora"),
           why=f"Dropout is an unreliable regulariser for short fine-tuning runs ({GUIDE_UNSLOTH})."),
    Option("lora.target_modules", (str, list), "all-linear", methods=("lora", "qlora"),
           why="Adapting every linear layer of attention and MLP is what matches full fine-tuning quality "
               f"({GUIDE_UNSLOTH}; {GUIDE_RANK})."),
    Option("lora.bias", (str,), "none", choices=("none", "all", "lora_only"), methods=("lora", "qlora"),
           why=f"Training biases adds parameters for little gain ({GUIDE_UNSLOTH})."),
    Option("lora.use_rslora", (bool,), False, methods=("lora", "qlora"),
           why="Plain alpha/r scaling; rank-stabilised alpha/sqrt(r) helps at high ranks "
               f"({GUIDE_UNSLOTH})."),
    Option("lora.use_dora", (bool,), False, methods=("lora", "qlora"),
           why=f"DoRA is newer and sometimes better but slower ({GUIDE_COMPLETE}, section 1)."),
    Option("lora.init_lora_weights", (bool, str), True, methods=("lora", "qlora"),
           why="PEFT's standard initialisation (B = 0, so training starts from the base model); 'pissa', "
               f"'loftq' and others are available ({GUIDE_UNSLOTH}; {GUIDE_COMPLETE})."),
    # quantization ------------------------------------------------------------------------------------------
    Option("quantization.load_in_4bit", (bool,), True, methods=("qlora",),
           why="QLoRA keeps the frozen base model in 4 bits."),
    Option("quantization.bnb_4bit_quant_type", (str,), "nf4", choices=("nf4", "fp4"), methods=("qlora",),
           why=f"NF4 loses less information than plain 4-bit on normally distributed weights ({GUIDE_COMPLETE}, "
               "section 2)."),
    Option("quantization.bnb_4bit_use_double_quant", (bool,), True, methods=("qlora",),
           why="Quantising the quantisation constants saves about 0.4 bits per parameter "
               f"({GUIDE_COMPLETE}, section 2)."),
    Option("quantization.bnb_4bit_compute_dtype", (str,), AUTO,
           choices=(AUTO, "bfloat16", "float16", "float32"), methods=("qlora",),
           why="Follows training.precision."),
    # training ----------------------------------------------------------------------------------------------
    Option("training.learning_rate", (float,), lambda m: 2e-5 if m == "full" else 2e-4, check=_positive,
           why=f"2e-4 is the recommended start for LoRA and QLoRA ({GUIDE_HYPERPARAMS}, chapter 1; "
               f"{GUIDE_UNSLOTH}); full fine-tuning wants a rate about ten times lower ({GUIDE_UNSLOTH})."),
    Option("training.num_train_epochs", (float, int), 3, check=_positive,
           why="Three epochs is the outer bound of the safe zone; early stopping finds the optimum inside it "
               f"({GUIDE_HYPERPARAMS}, chapter 4; {GUIDE_UNSLOTH})."),
    Option("training.per_device_train_batch_size", (int,), 2, check=_positive,
           why="A micro-batch of 2 fits on 16-24 GB cards; accumulation makes up the effective batch "
               f"({GUIDE_HYPERPARAMS}, chapter 2; {GUIDE_UNSLOTH})."),
    Option("training.gradient_accumulation_steps", (int,), 8, check=_positive,
           why=f"2 x 8 gives the recommended effective batch of 16 ({GUIDE_UNSLOTH})."),
    Option("training.per_device_eval_batch_size", (int,), AUTO, check=_auto_or(_positive),
           why="The training micro-batch, so that evaluation, which can peak above training, does not run out "
               "of memory late in a run."),
    Option("training.lr_scheduler_type", (str,), "cosine", choices=SCHEDULER_NAMES,
           why="Cosine holds the rate high early, when the model moves most, and settles at the end "
               f"({GUIDE_HYPERPARAMS}, chapter 3)."),
    Option("training.warmup_steps", (float, int), 0.1, check=_warmup,
           why="Warming up over the first 10% of steps protects the freshly initialised adapter from violent "
               f"early updates ({GUIDE_HYPERPARAMS}, chapter 3; {GUIDE_UNSLOTH}: 5-10%)."),
    Option("training.weight_decay", (float, int), 0.01, check=_non_negative,
           why=f"0.01 regularises without fighting the learning signal ({GUIDE_UNSLOTH}; {GUIDE_HYPERPARAMS}, "
               "chapter 4)."),
    Option("training.optim", (str,), lambda m: "paged_adamw_8bit" if m == "qlora" else "adamw_torch",
           choices=OPTIMIZER_NAMES,
           why="AdamW's per-parameter rates suit LoRA; the paged 8-bit variant cuts optimizer memory by 75% "
               f"for QLoRA ({GUIDE_HYPERPARAMS}, chapter 3)."),
    Option("training.seed", (int,), 3407,
           why=f"A fixed seed for shuffling and adapter initialisation ({GUIDE_UNSLOTH})."),
    Option("training.precision", (str,), AUTO, choices=(AUTO, "bf16", "fp16", "fp32"),
           why="bf16 where the GPU supports it, else fp16 with loss scaling; fp16's narrow range silently "
               f"underflows gradients ({GUIDE_HYPERPARAMS}, chapter 6). fp32 on a CPU."),
    Option("training.gradient_checkpointing", (bool,), True,
           why=f"Recomputing activations trades about 20% speed for much less memory ({GUIDE_UNSLOTH})."),
    Option("training.cpu_threads", (int,), AUTO, check=_auto_or(_positive),
           why="Training on a CPU uses one thread per core that is free when the run starts: with another process "
               "busy on one of two cores, PyTorch's default of one thread per core trained 3x slower than one "
               "thread (bench/cpu_threads.py: 5,500 against 16,700 tokens/s on the demo model)."),
    Option("training.max_length", (int,), AUTO, check=_auto_or(_positive),
           why="The 99th percentile of the data's token lengths rounded up to a multiple of 64: longer wastes "
               f"memory on padding, shorter truncates ({GUIDE_HYPERPARAMS}, chapter 2)."),
    Option("training.eval_interval_epochs", (float,), 0.2, check=_interval,
           why="Evaluating every 10-20% of an epoch catches the eval-loss turn without slowing the run "
               f"({GUIDE_HYPERPARAMS}, chapter 4); at 20% with a 10% split, evaluation costs about a sixth "
               "of training."),
    Option("training.eval_steps", (int,), AUTO, check=_auto_or(_positive),
           why="Derived from eval_interval_epochs and the steps per epoch; a number here takes precedence."),
    Option("training.save_steps", (int,), AUTO, check=_auto_or(_positive),
           why="Same as eval_steps, so that every evaluated step has a checkpoint to return to."),
    Option("training.save_total_limit", (int,), 3, check=_positive,
           why="Keeps disk use bounded; the best checkpoint and the last one are always kept (so at least 2)."),
    Option("training.load_best_model_at_end", (bool,), True,
           why="The best checkpoint is often not the last one; the saved adapter is the best one "
               f"({GUIDE_COMPLETE}, section 8)."),
    Option("training.metric_for_best_model", (str,), "eval_loss", why="Lower eval loss is better."),
    Option("training.early_stopping_patience", (int,), 3, check=_positive,
           why="Stop after 3 evaluations without improvement: 3-5 tolerates noise without running far past "
               f"the optimum ({GUIDE_HYPERPARAMS}, chapter 4)."),
    Option("training.early_stopping_threshold", (float,), 0.0, check=_non_negative,
           why="Any improvement of the eval loss counts."),
    Option("training.eval_on_start", (bool,), True,
           why="The eval loss before any training is the baseline that shows whether the run helps."),
    Option("training.logging_steps", (int,), 1, check=_positive,
           why="Every optimizer step is logged, so the loss chart misses nothing."),
    Option("training.output_dir", (str,), nullable=True,
           why="A new directory under ./runs named after the time, model and method."),
)

OPTION_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}

# Keys that people carry over from other tools or older library versions (and secrets, which a run never keeps),
# with what to write instead.

# Keys that people carry over from other tools or older library versions, with what to write instead.
RENAMED = {
    "model.torch_dtype": "tuneterm sets the dtype from training.precision (auto, bf16, fp16 or fp32): write that",
    "model.dtype": "tuneterm sets the dtype from training.precision (auto, bf16, fp16 or fp32): write that",
    "training.warmup_ratio": "transformers 5 folded warmup_ratio into warmup_steps: write warmup_steps: 0.1 "
                             "(a float below 1 is a fraction of the total steps)",
    "training.max_seq_length": "TRL calls it max_length: write training.max_length",
    "training.cutoff_len": "write training.max_length",
    "training.activation_checkpointing": "write training.gradient_checkpointing",
    "training.gradient_checkpointing_kwargs": "tuneterm sets the checkpointing mode itself",
    "training.assistant_only_loss": "tuneterm masks the data itself: write data.train_on: responses (or all)",
    "training.completion_only_loss": "tuneterm masks the data itself: write data.train_on: responses (or all)",
    "training.dataset_text_field": "tuneterm reads the data itself: set data.format",
    "training.dataset_kwargs": "tuneterm prepares the dataset itself",
    "training.eval_strategy": "tuneterm evaluates whenever there is an eval split: set data.val_size or data.eval, "
                             "and training.eval_steps or training.eval_interval_epochs",
    "training.save_strategy": "tuneterm saves at every evaluation: set training.save_steps",
    "training.num_epochs": "write training.num_train_epochs",
    "training.epochs": "write training.num_train_epochs",
    "training.batch_size": "write training.per_device_train_batch_size (the micro-batch per GPU)",
    "training.per_device_batch_size": "write training.per_device_train_batch_size (the micro-batch per GPU)",
    "training.micro_batch_size": "write training.per_device_train_batch_size (the micro-batch per GPU)",
    "training.train_batch_size": "write training.per_device_train_batch_size (the micro-batch per GPU)",
    "training.lr": "write training.learning_rate",
    "lora.rank": "write lora.r",
    "lora.alpha": "write lora.lora_alpha",
    "lora.dropout": "write lora.lora_dropout",
    "lora.task_type": "tuneterm trains causal language models (CAUSAL_LM) only",
    "quantization.load_in_8bit": "tuneterm's qlora loads the base model in 4 bits",
    "data.cutoff_len": "write training.max_length",
    "training.hub_token": "tuneterm never writes a token into a run (config.yaml, events, checkpoints): log in with "
                          "`hf auth login` or set HF_TOKEN in the environment instead",
    "training.push_to_hub_token": "tuneterm never writes a token into a run: log in with `hf auth login` or set "
                                  "HF_TOKEN in the environment instead",
}

# HF boolean precision flags, accepted as another spelling of training.precision.
PRECISION_FLAGS = {"training.bf16": "bf16", "training.fp16": "fp16"}

# Values that name files: written in a config file they are relative to that file's directory, given with --set
# they are relative to the current directory. Stored resolved, so a saved config runs from anywhere.
PATH_KEYS = ("model.path", "data.train", "data.eval", "model.chat_template")


# --------------------------------------------------------------------------------------------------------------
# Where each value came from


Given = dict[str, tuple[Any, Location]]
"""Dotted key -> (value as written, where it was written)."""


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
            problems.append(Problem(f"unknown top-level key{_suggest(str(top), ('method', *SECTIONS))}; a config "
                                    f"has method, {', '.join(SECTIONS)}", where))
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


# --------------------------------------------------------------------------------------------------------------
# The config itself


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
        return self.values["method"]

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
        nested: dict[str, Any] = {"method": self.method}
        for key, value in self.values.items():
            if key == "method":
                continue
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        return nested

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


# --------------------------------------------------------------------------------------------------------------
# Loading and validation


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A built-in preset by name (cpu-quick-test, qlora-7b-24gb, ...) or a YAML file of your own."""
    path = PRESETS_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    if Path(name).is_file():
        return Path(name)
    raise ConfigError([Problem(f"no such preset{_suggest(name, preset_names())}; the presets are "
                               f"{', '.join(preset_names())}", Location(file=f"--preset {name}"))])


def load_config(path: str | Path | None = None, *, preset: str | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None, base_source: str = "built-in config") -> RunConfig:
    """Read a config file (optional), layer `--set` overrides on top, validate, and fill defaults.

    Layers, lowest first: `base` (a built-in config such as the demo's), the preset, the file, the overrides.
    Paths written in a file are relative to that file's directory; in `base` and `--set`, to the current one.
    Raises ConfigError listing every problem, each with its location.
    """
    problems: list[Problem] = []
    layers: list[Given] = []
    if base is not None:
        layers.append(_with_paths_resolved(_flatten(base, {}, Location(base_source), problems), Path.cwd()))
    for file in (preset_path(preset) if preset else None, path):
        if file is not None:
            layers.append(_read_layer(Path(file), problems))
    override_layer: Given = {}
    for text in overrides:
        key, value = parse_override(text)
        if "." not in key and key != "method":
            problems.append(Problem(f"needs its section: {_sectionless_hint(key)}", Location(argument=text, key=key)))
            continue
        override_layer[key] = (value, Location(argument=text, key=key))
    layers.append(_with_paths_resolved(override_layer, Path.cwd()))

    given: Given = {}
    for layer in layers:
        given.update(layer)
    config = _validate(given, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _read_layer(path: Path, problems: list[Problem]) -> Given:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([Problem("no such config file", Location(str(path)))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(f"cannot read the config: {exc}", Location(str(path)))]) from None
    data, lines = _yaml_with_lines(text, str(path))
    layer = _flatten(data, lines, Location(str(path)), problems)
    return layer if path.parent == PRESETS_DIR else _with_paths_resolved(layer, path.resolve().parent)


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


def output_dir_problem(output: str) -> Problem | None:
    """An explicit output directory must be new or empty: tuneterm never writes into an existing run."""
    path = Path(output).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return Problem(f"{path} already exists and is not empty; tuneterm never writes into an existing run. Choose "
                       "a new directory, or leave output_dir unset to get a fresh one under runs/",
                       Location(key="training.output_dir"))
    return None


def config_from_mapping(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Validate an in-memory nested config (the same shape as the YAML)."""
    return load_config(base=data, base_source=source)


def _validate(given: Given, problems: list[Problem]) -> RunConfig:
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
        checked = _check_value(option, value, origin, problems)
        if checked is not _INVALID:
            values[key] = checked

    _check_pass_through(unknown, method, values, problems)

    for option in OPTIONS:
        if option.key == "method" or method not in option.methods or option.key in values:
            continue
        if option.required:
            problems.append(Problem(f"required ({option.why})", Location(key=option.key)))
            continue
        values[option.key] = option.default_for(method)
        defaulted.add(option.key)

    notes = _check_combinations(values, given, problems)
    return RunConfig(values, frozenset(defaulted), notes)


_INVALID = object()


def _check_value(option: Option, value: Any, origin: Location, problems: list[Problem]) -> Any:
    if value is None:
        if option.nullable:
            return None
        problems.append(Problem(f"needs a value ({option.why})", origin))
        return _INVALID
    if value == AUTO and option.default_for("lora") == AUTO:
        return AUTO
    value = _coerce(value, option.types)
    if not isinstance(value, option.types) or (isinstance(value, bool) and bool not in option.types):
        expected = " or ".join(_type_name(t) for t in option.types)
        problems.append(Problem(f"expected {expected}, got {value!r}", origin))
        return _INVALID
    if option.choices and value not in option.choices:
        listed = (", ".join(map(str, option.choices)) if len(option.choices) <= LISTED_CHOICES else
                  f"the {len(option.choices)} names transformers accepts")
        problems.append(Problem(f"{value!r} is not one of {listed}{_suggest(str(value), map(str, option.choices))}",
                                origin))
        return _INVALID
    if option.check is not None:
        problem = option.check(value)
        if problem:
            problems.append(Problem(f"{value!r} {problem}", origin))
            return _INVALID
    return value


def check_value(key: str, value: Any) -> tuple[Any, str | None]:
    """One value for a key, as validation reads it ("2e-4" becomes a number), and what is wrong with it or None:
    for a screen that checks a field as it is typed (the whole config is validated again before anything runs)."""
    option = OPTION_BY_KEY.get(key)
    if option is None:
        return value, None
    problems: list[Problem] = []
    checked = _check_value(option, value, Location(key=key), problems)
    return (value, problems[0].message) if problems else (checked, None)


def _coerce(value: Any, types: tuple[type, ...]) -> Any:
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


def _type_name(t: type) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(t, t.__name__)


def _precision_flag(key: str, value: Any, origin: Location, given: Given, values: dict[str, Any],
                    problems: list[Problem]) -> None:
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
    return notes


# --------------------------------------------------------------------------------------------------------------
# Hugging Face fields tuneterm passes through


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


def _check_pass_through(unknown: Given, method: str, values: dict[str, Any], problems: list[Problem]) -> None:
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
                problems.append(Problem(f"unknown key{_suggest(name, [*known_here, *hf])}", origin))
                continue
            if section == "lora" and method == "full" or section == "quantization" and method != "qlora":
                problems.append(Problem(f"the {section} section does not apply to method {method}", origin))
                continue
            problem = _annotation_problem(value, hf[name])
            if problem:
                problems.append(Problem(problem, origin))
                continue
            values[key] = _coerce(value, (float,)) if "float" in hf[name] and "str" not in hf[name] else value


def _annotation_problem(value: Any, annotation: str) -> str | None:
    """A light type check against an annotation such as 'float | None' or 'Union[str, int]'."""
    if value is None:
        return None if "None" in annotation or "Optional" in annotation else "needs a value"
    accepted = [t for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list),
                                  ("dict", dict)) if name in annotation]
    if not accepted or any(t is str for t in accepted) or "Any" in annotation:
        return None
    if isinstance(value, bool) and bool not in accepted:
        return f"expected {' or '.join(_type_name(t) for t in accepted)}, got {value!r}"
    if float in accepted:
        value = _coerce(value, (float,))
    if isinstance(value, tuple(accepted)):
        return None
    return f"expected {' or '.join(_type_name(t) for t in accepted)}, got {value!r}"


def _suggest(name: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""
