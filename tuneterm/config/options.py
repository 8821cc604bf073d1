"""The keys tuneterm knows: one table of options, each with its type, its default and the guide behind that default.

Everything else reads this table: validation checks values against it, the wizard builds its fields from it, a
saved config comments its defaults with the reasons written here. Keys people carry over from other tools are
listed with what to write instead, so that a config written for another trainer is corrected, not ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tuneterm.errors import METHODS

SECTIONS = ("model", "data", "lora", "quantization", "training")
EXPERIMENTS_SECTION = "experiments"
"""A config file may also hold the variations `tuneterm experiment` runs of it; a run's config ignores them."""
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


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """The end of a problem that names the candidate closest to a misspelled name, or "" when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


ATTENTION_NAMES = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
KERNELS_HUB_FLASH = ("kernels-community/flash-attn2", "kernels-community/vllm-flash-attn3")
"""The kernels-hub builds of flash attention transformers loads for flash_attention_2 / _3 without flash-attn."""
_KERNEL_ID = re.compile(r"^[^/:@\s]+/[^/:@\s]+(?:@[^/:\s]+)?(?::[^/:\s]+)?$")


def _attention(value: str) -> str | None:
    """transformers' own names, or a kernel on the Hugging Face hub (org/repo, @revision and :kernel optional)."""
    if value in ATTENTION_NAMES or _KERNEL_ID.match(value):
        return None
    return (f"is not one of {', '.join(ATTENTION_NAMES)}, nor a kernels-hub id such as {KERNELS_HUB_FLASH[0]}"
            f"{did_you_mean(value, ATTENTION_NAMES)}")


def _loss_type(value: str) -> str | None:
    if value == "chunked_nll":
        return ("is TRL's former name for nll, which computes the loss the same way (through the fused LM head, in "
                "chunks, never building the full logits): write nll")
    return None if value in ("nll", "dft") else f"is not one of nll, dft{did_you_mean(value, ('nll', 'dft'))}"


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
    Option("model.attn_implementation", (str,), "sdpa", check=_attention,
           why="SDPA never materialises the seq x seq attention scores that make long sequences run out of "
               f"memory ({GUIDE_HYPERPARAMS}, chapter 2), and needs no extra package. flash_attention_2/3 (the "
               "flash-attn package, or the kernels-hub builds transformers fetches without it, such as "
               f"{KERNELS_HUB_FLASH[0]}) and flex_attention also run packed rows without padding or a dense mask."),
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
    Option("data.reasoning", (str,), "auto", choices=("auto", "keep", "drop"),
           why="For reasoning models' templates: 'auto' trains each conversation in the mode its data holds, with "
               "its reasoning when it has some, else the no-think way (the empty think block in the prompt, not "
               "trained), as the model is then asked; 'keep' trains every reply in thinking mode; 'drop' trains "
               "without reasoning. The complete guide trains Qwen3-0.6B on data without reasoning and chats with "
               f"thinking off ({GUIDE_COMPLETE}, commands)."),
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
    Option("training.packing", (bool,), AUTO,
           why="Packing fills each row with whole examples, so no step computes padding. auto packs where the "
               "attention implementation runs packed rows as separate sequences (flash attention, flex_attention); "
               "SDPA keeps them apart through a dense mask over each micro-batch, and on the demo's data packing "
               "with it trained 0.91x the real tokens per CPU-second of no packing (bench/packing_cpu.py)."),
    Option("training.packing_strategy", (str,), "bfd", choices=("bfd", "bfd_split", "wrapped"),
           why="Best-fit decreasing keeps every example whole and apart from the others in its row (TRL flattens "
               "the rows padding-free, positions restarting at each example); wrapped cuts examples mid-way and lets "
               "each attend to the one before it."),
    Option("training.padding_free", (bool,), False,
           why="Without packing, padding-free flattens each micro-batch into one row with no padding (packing with "
               "bfd is padding-free already)."),
    Option("training.use_liger_kernel", (bool,), False,
           why="Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) save activation memory on a CUDA GPU; its fused "
               "cross-entropy, where most of its published saving came from, is what TRL's own fused LM head does "
               "already. Needs the liger-kernel package."),
    Option("training.liger_kernel_config", (dict,), nullable=True,
           why="Which Liger kernels to apply (rms_norm, rope, swiglu ...); all by default. TRL keeps its own fused "
               "LM head, so fused_linear_cross_entropy cannot be turned on."),
    Option("training.activation_offloading", (bool,), False,
           why="Moves the activations backward needs to host memory while the forward pass runs and brings them "
               "back for backward: GPU memory for PCIe traffic, for sequences too long to fit otherwise."),
    Option("training.torch_compile", (bool,), False,
           why="Opt-in: compiling costs minutes before the first step and again for every new batch shape (padded "
               "and padding-free batches change length every step); worth it for long runs of fixed shapes."),
    Option("training.loss_type", (str,), "nll", check=_loss_type,
           why="The negative log-likelihood of the trained tokens, computed by TRL through a fused LM head in "
               "chunks, so the batch x length x vocabulary logits are never built; dft weights each token by its "
               "probability (Dynamic Fine-Tuning)."),
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
