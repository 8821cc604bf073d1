"""Advice: the guides' rules, checked against a planned run, each with its reason, its source and its fix.

Every rule is a small function of what is known about the run (the config, and when available the schedule,
the model, the data's token lengths and the device). It returns an Advice or nothing. An advice that suggests
a value carries it in `fix` ({key: value}), so the plan screen can apply it with one key and `tuneterm plan`
can print the --set that does the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneterm.config import GUIDE_COMPLETE, GUIDE_HYPERPARAMS, GUIDE_RANK, GUIDE_UNSLOTH, RunConfig, set_argument
from tuneterm.errors import LEVELS, Level
from tuneterm.hardware import Device
from tuneterm.plan.memory import MemoryEstimate, size
from tuneterm.plan.model import ModelFacts, count
from tuneterm.plan.packing import Tokens, attention_is_varlen
from tuneterm.plan.schedule import Schedule


@dataclass(frozen=True)
class Advice:
    level: Level
    field: str
    message: str
    why: str
    source: str
    fix: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_set_arguments(self) -> str:
        return " ".join(set_argument(key, value) for key, value in self.fix.items())


@dataclass(frozen=True)
class LengthStats:
    p95: int
    p99: int
    examples: int


@dataclass(frozen=True)
class Context:
    config: RunConfig
    schedule: Schedule | None = None
    facts: ModelFacts | None = None
    lengths: LengthStats | None = None
    device: Device | None = None
    world_size: int = 1
    tokens: Tokens | None = None
    """Rows, tokens per step and padding of the data under the packing settings (plan/packing.py)."""
    memory: MemoryEstimate | None = None

    def get(self, key: str) -> Any:
        return self.config.get(key)

    @property
    def adapter(self) -> bool:
        return self.config.method in ("lora", "qlora")


Rule = Callable[[Context], "Advice | None"]


def _suggest(level: Level, field: str, value: Any, message: str, why: str, source: str) -> Advice:
    """The usual advice: its fix sets the very key it is about to the value the guides recommend."""
    return Advice(level, field, message, why, source, {field: value})


PRETRAINED_LLM_PARAMS = 50_000_000
"""The guides' learning rates were found on pretrained LLMs of 0.6B parameters and more; a model under this size
(the demo's, a test model, a toy trained from scratch) is not one, and learns at other rates."""


def not_a_pretrained_llm(facts: ModelFacts | None) -> str:
    """Why the guides' learning rates do not apply to this model ("" when they do, or the model is not known)."""
    if facts is None or facts.total_params >= PRETRAINED_LLM_PARAMS:
        return ""
    return (f"this model has {count(facts.total_params)} parameters: it is not a pretrained LLM like those the "
            "guides' learning rates come from (0.6B parameters and more)")


def _learning_rate(c: Context) -> Advice | None:
    lr = c.get("training.learning_rate")
    source = f"{GUIDE_HYPERPARAMS}, chapter 1; {GUIDE_UNSLOTH}"
    why_not = not_a_pretrained_llm(c.facts)
    if why_not:
        return Advice("info", "training.learning_rate", f"{lr:g}: the guides' 2e-4 does not apply to this model",
                      f"{why_not[0].upper()}{why_not[1:]}. A model this small takes far larger rates: the demo's "
                      "model, trained from scratch on its questions, learns best near 3e-3. Compare a few rates on "
                      "short runs.", source)
    if c.config.method == "full" and lr >= 1e-4:
        return _suggest("warning", "training.learning_rate", 2e-5,
                        f"{lr:g} is a LoRA learning rate; full fine-tuning wants about 2e-5",
                        "Full fine-tuning spreads each update over every weight and is damaged by the rates that "
                        "suit a small adapter.", GUIDE_UNSLOTH)
    if not c.adapter:
        return None
    if lr > 2e-4 * 1.5:
        return _suggest("warning", "training.learning_rate", 2e-4, f"{lr:g} is well above the recommended 2e-4 start",
                        "The whole loss signal lands on a few adapter weights; a rate far above 2e-4 pushes them "
                        "out of the useful region before the task is learned.", source)
    if lr < 5e-6:
        return _suggest("warning", "training.learning_rate", 2e-4, f"{lr:g} is below the workable range (5e-6 to 2e-4)",
                        "Far below the range the adapter barely moves and the fine-tune stays the base model.", source)
    return None


def _alpha_ratio(c: Context) -> Advice | None:
    if not c.adapter:
        return None
    r, alpha = c.get("lora.r"), c.get("lora.lora_alpha")
    if alpha / r < 1:
        return _suggest("warning", "lora.lora_alpha", r, f"alpha/r = {alpha}/{r} = {alpha / r:.2g} is below 1",
                        "The adapter's update is scaled by alpha/r; below 1 it is damped and learns slowly. "
                        "Use alpha = r (stable) or 2r (faster).", f"{GUIDE_UNSLOTH}; {GUIDE_HYPERPARAMS}, chapter 1")
    if r >= 64 and not c.get("lora.use_rslora"):
        return _suggest("info", "lora.use_rslora", True, f"rank {r} without rank-stabilised scaling",
                        "At high ranks alpha/r shrinks the update as r grows; rsLoRA scales by alpha/sqrt(r), which "
                        "keeps high ranks learning.", GUIDE_UNSLOTH)
    return None


def _rank_for_data(c: Context) -> Advice | None:
    if not c.adapter or c.schedule is None:
        return None
    r, examples = c.get("lora.r"), c.schedule.train_examples
    if examples < 5000 and r > 32:
        return Advice("info", "lora.r", f"rank {r} for {examples:,} examples",
                      "Small datasets (under 5k examples, such as style or tone transfer) need little capacity; a "
                      "high rank memorises them faster.", GUIDE_RANK, {"lora.r": 16, "lora.lora_alpha": 16})
    if examples > 50000 and r < 32:
        return Advice("info", "lora.r", f"rank {r} for {examples:,} examples",
                      "Large datasets and hard tasks (code, factual recall) use ranks of 64-128.", GUIDE_RANK,
                      {"lora.r": 64, "lora.lora_alpha": 64})
    return None


def _dropout(c: Context) -> Advice | None:
    dropout = c.get("lora.lora_dropout")
    if not c.adapter or dropout <= 0.1:
        return None
    return _suggest("warning", "lora.lora_dropout", 0.0, f"dropout {dropout:g} is above 0.1",
                    "Dropout is an unreliable regulariser in short fine-tuning runs; 0.1 already gave the worst "
                    "eval loss in the guide's experiments.", f"{GUIDE_UNSLOTH}; {GUIDE_COMPLETE}, section 8")


def _weight_decay(c: Context) -> Advice | None:
    decay = c.get("training.weight_decay")
    if decay > 0.1:
        return _suggest("warning", "training.weight_decay", 0.01, f"weight decay {decay:g} is above 0.1",
                        "High decay fights the learning signal: the optimizer shrinks the adapter as fast as it "
                        "grows it.", f"{GUIDE_UNSLOTH}; {GUIDE_HYPERPARAMS}, chapter 4")
    if decay == 0:
        return _suggest("info", "training.weight_decay", 0.01, "no weight decay",
                        "0.01 is a light check on the adapter drifting from the base model's knowledge.",
                        f"{GUIDE_HYPERPARAMS}, chapter 4")
    return None


def _warmup(c: Context) -> Advice | None:
    warmup = c.get("training.warmup_steps")
    fraction = warmup if isinstance(warmup, float) else (
        warmup / c.schedule.total_steps if c.schedule and c.schedule.total_steps else None)
    if fraction is None:
        return None
    source = f"{GUIDE_UNSLOTH}; {GUIDE_HYPERPARAMS}, chapter 3"
    if fraction < 0.05 and c.adapter:
        return _suggest("warning", "training.warmup_steps", 0.1, f"warmup is {fraction:.0%} of the steps",
                        "A fresh adapter is most sensitive to its first updates; warming up over 5-10% of the steps "
                        "keeps them from pushing it into a bad region.", source)
    if fraction > 0.2:
        return _suggest("info", "training.warmup_steps", 0.1, f"warmup is {fraction:.0%} of the steps",
                        "5-10% is enough; a long warmup spends the run below the target rate.", source)
    return None


SHORT_RUN_STEPS = 50


def _scheduler(c: Context) -> Advice | None:
    schedule = c.schedule
    if schedule is None or c.get("training.lr_scheduler_type") != "cosine" or schedule.total_steps >= SHORT_RUN_STEPS:
        return None
    return _suggest("info", "training.lr_scheduler_type", "constant_with_warmup",
                    f"cosine decay over only {schedule.total_steps} steps",
                    "In a very short run cosine starts decaying right after warmup and most steps run at a low "
                    "rate; constant_with_warmup keeps the full rate.", f"{GUIDE_HYPERPARAMS}, chapter 3")


def _epochs(c: Context) -> Advice | None:
    epochs = c.get("training.num_train_epochs")
    if epochs <= 3:
        return None
    return _suggest("warning", "training.num_train_epochs", 3, f"{epochs:g} epochs",
                    "More than 3 epochs brings diminishing returns and memorisation, LoRA overfits quickly; "
                    "let early stopping find the optimum within 1-3.",
                    f"{GUIDE_UNSLOTH}; {GUIDE_HYPERPARAMS}, chapter 4")


def _effective_batch(c: Context) -> Advice | None:
    micro, accumulation = c.get("training.per_device_train_batch_size"), c.get("training.gradient_accumulation_steps")
    world = c.world_size
    effective = micro * accumulation * world
    if 8 <= effective <= 64:
        return None
    gpus = f" x {world} GPUs" if world > 1 else ""
    return _suggest("info", "training.gradient_accumulation_steps", max(1, math.ceil(16 / (micro * world))),
                    f"effective batch {effective} ({micro} x {accumulation}{gpus})",
                    "An effective batch near 16 gives stable gradients; accumulation reaches it without more "
                    "memory.", f"{GUIDE_UNSLOTH}; {GUIDE_HYPERPARAMS}, chapter 2")


def _targets(c: Context) -> Advice | None:
    targets = c.get("lora.target_modules")
    if not c.adapter or targets == "all-linear":
        return None
    return _suggest("info", "lora.target_modules", "all-linear", f"LoRA on {targets} only",
                    "Adapting every linear layer of attention and MLP is what matches full fine-tuning; the "
                    "memory saved by adapting fewer is small.", f"{GUIDE_UNSLOTH}; {GUIDE_RANK}")


def _max_length(c: Context) -> Advice | None:
    length = c.get("training.max_length")
    context = c.facts.context_length if c.facts is not None else None
    if isinstance(length, int) and context and length > context:
        return _suggest("warning", "training.max_length", context,
                        f"max_length {length} is above the model's context length ({context} tokens)",
                        "The model never saw positions past its context length; tokens there train on positions it "
                        "does not know (a model with learned position embeddings cannot take them at all).",
                        "the model's config.json (max_position_embeddings)")
    if c.lengths is None or not isinstance(length, int):
        return None
    suggested = math.ceil(c.lengths.p99 / 64) * 64
    source = f"{GUIDE_HYPERPARAMS}, chapter 2"
    if length < c.lengths.p95:
        return _suggest("warning", "training.max_length", suggested,
                        f"max_length {length} is below the data's 95th percentile ({c.lengths.p95} tokens)",
                        "More than 5% of the examples are cut, and with them the responses at their end.", source)
    if length > 2 * suggested:
        return _suggest("info", "training.max_length", suggested,
                        f"max_length {length} is far above the data's 99th percentile ({c.lengths.p99} tokens)",
                        "Memory is planned for the longest batch; a max length far above the data buys nothing and "
                        "leaves less room for the micro-batch.", source)
    return None


def _precision(c: Context) -> Advice | None:
    device = c.device
    # (bf16 on a GPU without it is an error when the config resolves, not advice)
    if device is None or device.kind != "cuda" or c.get("training.precision") != "fp16" or not device.bf16:
        return None
    return _suggest("warning", "training.precision", "bf16", f"fp16 on {device.name}, which supports bf16",
                    "fp16's narrow range silently underflows small gradients to zero; bf16 has fp32's range.",
                    f"{GUIDE_HYPERPARAMS}, chapter 6")


def _eval_split(c: Context) -> Advice | None:
    if c.get("data.eval") or c.get("data.val_size"):
        return None
    return _suggest("warning", "data.val_size", 0.1, "no eval split",
                    "Without held-out data overfitting is invisible and early stopping cannot work.",
                    f"{GUIDE_HYPERPARAMS}, chapter 4; {GUIDE_COMPLETE}, section 3")


def _eval_interval(c: Context) -> Advice | None:
    steps = c.get("training.eval_steps")
    if c.schedule is None or not isinstance(steps, int) or c.schedule.eval_steps is None:
        return None
    per_epoch = c.schedule.steps_per_epoch
    low, high = max(1, round(0.1 * per_epoch)), max(1, round(0.2 * per_epoch))
    if low <= steps <= high:
        return None
    return _suggest("info", "training.eval_steps", high,
                    f"evaluation every {steps} steps ({steps / per_epoch:.0%} of an epoch)",
                    "Every 10-20% of an epoch catches the turn of the eval loss without slowing the run; patience "
                    "counts evaluations, so the interval sets how late early stopping reacts.",
                    f"{GUIDE_HYPERPARAMS}, chapter 4")


def _patience(c: Context) -> Advice | None:
    patience = c.get("training.early_stopping_patience")
    if 3 <= patience <= 5:
        return None
    return _suggest("info", "training.early_stopping_patience", 3, f"patience {patience}",
                    "3 to 5 evaluations tolerate noise without running far past the optimum.",
                    f"{GUIDE_HYPERPARAMS}, chapter 4")


PADDING_WORTH_PACKING = 0.15
"""Padding share of a step above which packing is suggested."""
PACKING_SOURCE = "bench/packing_cpu.py on the demo's chat data; TRL's packing documentation"
DENSE_MASK_MEASURED = ("on the demo's data (31% padding) packing with sdpa trained 0.91x the real tokens per "
                       "CPU-second of no packing: the padding saved is spent on the mask")


def _packing(c: Context) -> Advice | None:
    tokens, attention = c.tokens, c.get("model.attn_implementation")
    if c.get("training.packing") is True:
        if c.get("training.packing_strategy") == "wrapped":
            return _suggest("warning", "training.packing_strategy", "bfd", "wrapped packing cuts examples mid-way",
                            "Rows are filled to the last token by cutting examples, and each example attends to the "
                            "end of the one before it: the model learns from text spliced across examples. bfd keeps "
                            "every example whole and apart.", PACKING_SOURCE)
        mask = c.memory.breakdown.get("attention_mask", 0.0) if c.memory else 0.0
        if mask and not attention_is_varlen(attention):
            rows = c.get("training.per_device_train_batch_size")
            return Advice("info", "training.packing", f"packing with {attention}: one row of {rows} x max_length "
                          f"tokens per micro-batch, with a {size(mask)} mask",
                          f"{attention} keeps the packed examples apart through a dense mask over the whole row and "
                          f"computes attention across all of it; {DENSE_MASK_MEASURED}. flash_attention_2/3, a "
                          "kernels-hub flash build or flex_attention run the examples as separate sequences.",
                          PACKING_SOURCE)
        return None
    if tokens is None or tokens.padding_free or tokens.padding_share < PADDING_WORTH_PACKING:
        return None
    message = f"{tokens.padding_share:.0%} of each step is padding"
    if attention_is_varlen(attention):
        return _suggest("info", "training.packing", True, message,
                        f"Batches are padded to their longest example; packing fills rows with whole examples, and "
                        f"{attention} runs each as its own sequence, so every token a step computes is one the model "
                        "learns from.", PACKING_SOURCE)
    return Advice("info", "model.attn_implementation", message,
                  "Batches are padded to their longest example. Packing removes the padding where the attention runs "
                  "packed examples as separate sequences (flash_attention_2/3, a kernels-hub flash build, "
                  f"flex_attention, where installed); {attention} needs a dense mask over each packed micro-batch: "
                  f"{DENSE_MASK_MEASURED}.", PACKING_SOURCE)


def _torch_compile(c: Context) -> Advice | None:
    if not c.get("training.torch_compile"):
        return None
    return _suggest("info", "training.torch_compile", False, "torch_compile with batches of changing length",
                    "Padded batches take the length of their longest example and padding-free rows the sum of "
                    "theirs, so shapes change from step to step and compilation runs again for new ones before it "
                    "falls back to dynamic shapes: minutes before the run reaches its speed.",
                    "PyTorch's torch.compile documentation (recompilation on new shapes)")


RULES: tuple[Rule, ...] = (_learning_rate, _alpha_ratio, _rank_for_data, _dropout, _weight_decay, _warmup,
                           _scheduler, _epochs, _effective_batch, _targets, _max_length, _precision, _eval_split,
                           _eval_interval, _patience, _packing, _torch_compile)


def advise(context: Context) -> list[Advice]:
    found = [advice for rule in RULES if (advice := rule(context)) is not None]
    return sorted(found, key=lambda a: -LEVELS.index(a.level))
