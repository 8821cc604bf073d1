"""How much GPU memory a run will take, with the breakdown behind the number. Pure arithmetic, microseconds.

The model is the memory of one training step of tuneterm's own stack (transformers + PEFT + TRL, whose fused LM
head never materialises the full logits), term by term:

  weights       the base model as loaded: 16-bit, 4-bit NF4 (+ quantisation constants) with embeddings, output
                layer and norms in 16-bit, or fp32 master weights for full fine-tuning
  adapters      trainable LoRA parameters (PEFT keeps them in fp32; TRL casts them to bf16 over a 4-bit base)
  gradients     one per trainable parameter, in its dtype (DDP keeps a second copy: its all-reduce buckets)
  optimizer     AdamW's two states (+ the foreach step's temporaries); 8-bit: 2 bytes; paged optimizers keep
                their states in memory that pages out to the host under pressure, so they do not count
  activations   what backward needs, per token: with gradient checkpointing every layer's input plus one layer
                recomputed, without it every layer's tensors; LoRA adds the inputs of the adapted layers
  attention     eager attention's seq x seq probabilities (SDPA and flash attention never store them)
  mask          the dense mask SDPA and eager attention need to keep padding-free rows apart: packing with bfd (or
                padding_free) flattens each micro-batch into one row of micro-batch x max_length tokens, whose
                N x N boolean mask SDPA turns into one of the compute dtype (flash attention's variable-length kernel
                and flex_attention's block mask need none)
  logits        batch x seq x vocab, only where the LM head is not fused: plain transformers training, or TRL with
                label smoothing (its loss then needs the full logits). TRL's default loss (nll, formerly
                chunked_nll) scores through the fused LM head in chunks, as Liger's fused cross-entropy would
  gathered      sharded weights brought together to compute with (FSDP, ZeRO-3): see "Several GPUs" below
  evaluation    the eval step (no gradients, no stored activations) when it peaks above training
  slack         what the caching allocator reserves beyond what is allocated
  cuda context  the CUDA runtime and kernels, outside PyTorch's allocator

With activation offloading (TRL's activation_offloading) the activations backward needs go to host memory during
the forward pass and come back layer by layer: the GPU keeps the layer in backward (recomputed, under gradient
checkpointing) and the next layer's saved tensors, prefetched; the rest is counted as host memory
(`offloaded_bytes`), not GPU memory. Packing does not change
the activations' size at the peak: the estimate is for the longest batch, micro-batch x max_length tokens, which
a packed micro-batch fills.

The per-token activation coefficients were fitted to real peaks measured on an H100 over 47 configurations
(bench/vram_calibration.py; results in docs/vram_calibration.md), where the estimate of peak allocated memory
is within 10% of torch.cuda.max_memory_allocated at every point.

Several GPUs: each process holds what its strategy leaves it. DDP keeps a full replica per GPU, plus a bucket per
gradient for the all-reduce. FSDP and DeepSpeed ZeRO-3 shard the weights, the adapters, their gradients and the
optimizer state across the processes, and gather the full weights of what they compute: the embedding and output
layer (held for the whole step) and two decoder layers (the one computed and the next, prefetched). ZeRO-2 shards
the gradients and the optimizer state only. Activations are per GPU whatever the strategy: each GPU computes its
own micro-batch. With one process every strategy is the single-GPU estimate above, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from tuneterm.plan.model import LinearModule, LoraShape, ModelFacts, trainable_params
from tuneterm.plan.packing import attention_is_varlen

GB = 1e9

# Bytes per weight for 4-bit NF4/FP4 with a 64-value block: 0.5 for the value, 4/64 for an fp32 absmax per
# block; double quantisation stores the absmax in 8 bits with an fp32 constant per 256 blocks.
FOUR_BIT = 0.5 + 4 / 64
FOUR_BIT_DOUBLE_QUANT = 0.5 + 1 / 64 + 4 / (64 * 256)

# Fitted on the calibration grid (16-bit activations, bytes per token).
LAYER_ACTIVATION_SCALE = 0.769          # x (12 hidden + 8 q + 8 kv + 6 intermediate): one layer's tensors
LORA_INPUT_BYTES_FP32_ADAPTERS = 2.70   # x sum of the adapted layers' input widths (PEFT casts inputs to fp32)
LORA_INPUT_BYTES_BF16_ADAPTERS = 1.67   # the same over a 4-bit base, where TRL keeps adapters in bf16
FULL_INPUT_BYTES = 2.0                  # full fine-tuning keeps every linear layer's 16-bit input
CHECKPOINT_BYTES = 2.51                 # x hidden per layer: the layer inputs kept by gradient checkpointing
EAGER_STORED_BYTES = 6.05               # x batch x heads x seq^2 per layer, eager attention without checkpointing
EAGER_TRANSIENT_BYTES = 12.8            # the same for the one layer being computed
UNFUSED_LOGITS_BYTES = 12.0             # bf16 logits, their fp32 upcast and its gradient, per token x vocab
OFFLOADED_LAYERS_ON_GPU = 2             # activation offloading: the layer in backward and the next, prefetched
ALLOCATOR_SLACK = 0.10                  # reserved / allocated - 1: 1-30% measured, 10% typical
CUDA_CONTEXT = 0.8 * GB                 # NVML minus reserved, constant over the grid (H100, CUDA 13)

Strategy = Literal["single", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
STRATEGIES: tuple[Strategy, ...] = ("single", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")
SHARDED_WEIGHTS: tuple[Strategy, ...] = ("fsdp", "deepspeed-zero3")
"""Strategies that shard the weights themselves (and so everything else)."""
SHARDED_STATES: tuple[Strategy, ...] = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")
"""Strategies that shard the gradients and the optimizer state."""
PREFETCHED_LAYERS = 2

PAGED_OPTIMIZERS = ("paged_adamw_8bit", "paged_adamw_32bit", "paged_lion_8bit", "paged_lion_32bit")
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "lion_8bit", "paged_adamw_8bit", "paged_lion_8bit")


@dataclass(frozen=True)
class MemorySetup:
    """Everything the estimate depends on besides the model."""

    method: str
    micro_batch: int
    seq_len: int
    eval_batch: int | None = None
    gradient_checkpointing: bool = True
    attn_implementation: str = "sdpa"
    optim: str = "adamw_torch"
    precision: str = "bf16"
    lora: LoraShape = field(default_factory=LoraShape)
    quant_type: str = "nf4"
    double_quant: bool = True
    quant_bits: int = 4
    """4 (NF4/FP4, tuneterm's qlora) or 8 (LLM.int8: one byte per weight and an fp32 scale per output row)."""
    upcast_unquantized: bool = False
    """PEFT's prepare_model_for_kbit_training upcasts embeddings, output layer and norms to fp32; TRL does not."""
    world_size: int = 1
    """Processes training together, one per GPU."""
    strategy: Strategy = "ddp"
    """How they share the work (meaningful above one process; "single" and "ddp" both replicate)."""
    device: str = "cuda"
    """"cuda", or "cpu" (host RAM: no CUDA context, no caching allocator)."""
    fused_lm_head: bool = True
    """TRL scores tokens through the LM head in chunks; plain transformers training materialises all logits."""
    bnb_saves_inputs: bool = False
    """bitsandbytes before 0.43.2 kept every 4-bit layer's input for backward."""
    padding_free: bool = False
    """Each micro-batch is flattened into one row (packing with bfd, or padding_free)."""
    activation_offloading: bool = False
    """TRL's activation offloading: saved activations live in host memory between forward and backward."""


@dataclass(frozen=True)
class MemoryEstimate:
    breakdown: dict[str, float]
    """Bytes per component (see the module docstring), per GPU."""
    peak_allocated: float
    """Models torch.cuda.max_memory_allocated during training or evaluation."""
    peak_reserved: float
    """Models torch.cuda.max_memory_reserved."""
    total_bytes: float
    """What NVML (nvidia-smi) will show for the process: reserved plus the CUDA context."""
    paged_optimizer_bytes: float
    """Optimizer states in pageable memory: resident on the GPU while there is room, not counted above."""
    trainable_params: int
    offloaded_bytes: float = 0.0
    """Activations kept in host memory by activation offloading, not counted above."""


def estimate_memory(facts: ModelFacts, setup: MemorySetup) -> MemoryEstimate:
    trainable = trainable_params(facts, setup.method, setup.lora)
    activation_scale = 2 if setup.precision == "fp32" else 1  # fp32 activations take twice the bytes
    weight_shards, state_shards = _shards(setup)
    weights = _weights(facts, setup) / weight_shards
    parameter_bytes = _parameter_bytes(setup)
    adapters = (0 if setup.method == "full" else trainable * parameter_bytes) / weight_shards
    gradients = trainable * parameter_bytes / state_shards
    optimizer, paged = (states / state_shards for states in _optimizer(facts, setup, trainable, parameter_bytes))
    gathered = _gathered(facts, setup) if weight_shards > 1 else 0.0
    buckets = gradients if setup.world_size > 1 and state_shards == 1 else 0.0  # DDP's gradient buckets
    static = weights + adapters + gradients + buckets + optimizer + gathered

    tokens = setup.micro_batch * setup.seq_len
    per_layer = _layer_bytes(facts, setup) * activation_scale
    if setup.gradient_checkpointing:
        activations = tokens * (facts.layers * CHECKPOINT_BYTES * facts.hidden_size * activation_scale + per_layer)
    else:
        activations = tokens * facts.layers * per_layer
    offloaded = 0.0
    if setup.activation_offloading:  # the layer in backward and the next one's saved tensors, prefetched
        kept = (facts.hidden_size * CHECKPOINT_BYTES * activation_scale if setup.gradient_checkpointing
                else per_layer)
        on_gpu = min(activations, tokens * (per_layer + (OFFLOADED_LAYERS_ON_GPU - 1) * kept))
        activations, offloaded = on_gpu, activations - on_gpu
    if setup.bnb_saves_inputs and setup.method == "qlora":
        kept_layers = 1 if setup.gradient_checkpointing else facts.layers
        activations += tokens * kept_layers * _inputs_per_layer(facts, facts.linear) * 2
    attention = _eager_scores(facts, setup, setup.micro_batch, training=True)
    mask = _dense_mask(setup, activation_scale)
    logits = 0.0 if setup.fused_lm_head else tokens * facts.vocab_size * UNFUSED_LOGITS_BYTES
    training_peak = static + activations + attention + mask + logits

    eval_batch = setup.eval_batch or setup.micro_batch
    eval_tokens = eval_batch * setup.seq_len
    evaluation_peak = (weights + adapters + optimizer + gathered + eval_tokens * per_layer
                       + _eager_scores(facts, setup, eval_batch, training=False)
                       + (0.0 if setup.fused_lm_head else eval_tokens * facts.vocab_size * UNFUSED_LOGITS_BYTES / 2))
    allocated = max(training_peak, evaluation_peak)
    on_gpu = setup.device == "cuda"
    slack = allocated * ALLOCATOR_SLACK if on_gpu else 0.0
    context = CUDA_CONTEXT if on_gpu else 0.0
    breakdown = {
        "weights": weights, "adapters": adapters, "gradients": gradients, "gradient_buckets": buckets,
        "optimizer": optimizer, "gathered_weights": gathered, "activations": activations,
        "attention_scores": attention, "attention_mask": mask, "logits": logits,
        "evaluation": max(0.0, evaluation_peak - training_peak), "allocator_slack": slack, "cuda_context": context,
    }
    return MemoryEstimate(breakdown, allocated, allocated + slack, allocated + slack + context, paged, trainable,
                          offloaded)


def _shards(setup: MemorySetup) -> tuple[int, int]:
    """(shards of the weights, shards of the gradients and optimizer state): one process holds one of each."""
    return (setup.world_size if setup.strategy in SHARDED_WEIGHTS else 1,
            setup.world_size if setup.strategy in SHARDED_STATES else 1)


def _gathered(facts: ModelFacts, setup: MemorySetup) -> float:
    """Full weights a sharding process holds while computing: embedding and output layer, and two layers."""
    outside_layers = (facts.embedding_params + facts.lm_head_params) * _floating_bytes(setup)
    in_layers = _weights(facts, setup) - outside_layers
    return outside_layers + PREFETCHED_LAYERS * in_layers / max(facts.layers, 1)


def _floating_bytes(setup: MemorySetup) -> int:
    """Bytes per weight kept in floating point: fp32 master weights for full fine-tuning, else 16 bits (fp32 when
    training in fp32, or when PEFT upcasts what a 4-bit model leaves unquantised)."""
    if setup.method == "full" or setup.precision == "fp32" or (setup.method == "qlora" and setup.upcast_unquantized):
        return 4
    return 2


def _weights(facts: ModelFacts, setup: MemorySetup) -> float:
    if setup.method == "qlora":
        unquantized = facts.embedding_params + facts.lm_head_params + facts.other_params
        unquantized_bytes = unquantized * _floating_bytes(setup)
        if setup.quant_bits == 8:
            row_scales = sum(m.out_features for m in facts.linear) * 4
            return facts.linear_params * 1.0 + row_scales + unquantized_bytes
        per_weight = FOUR_BIT_DOUBLE_QUANT if setup.double_quant else FOUR_BIT
        return facts.linear_params * per_weight + unquantized_bytes
    return facts.total_params * float(_floating_bytes(setup))


def _parameter_bytes(setup: MemorySetup) -> int:
    """Bytes of one trainable parameter: PEFT's fp32 adapters, TRL's bf16 adapters on a 4-bit base, fp32 masters."""
    return 2 if setup.method == "qlora" else 4


def _optimizer(facts: ModelFacts, setup: MemorySetup, trainable: int, parameter_bytes: int) -> tuple[float, float]:
    """(allocated bytes, paged bytes) of the optimizer states."""
    if setup.optim in EIGHT_BIT_OPTIMIZERS:
        states = trainable * 2.0
        if setup.method == "full":  # the Trainer keeps embedding states in 32 bits
            states += facts.embedding_params * 6.0
    elif setup.optim.startswith("sgd"):
        states = 0.0
    else:  # AdamW and friends: two states, plus the foreach update's temporaries
        states = trainable * parameter_bytes * 3.0
    if setup.optim in PAGED_OPTIMIZERS:
        return 0.0, states
    return states, 0.0


def _inputs_per_layer(facts: ModelFacts, modules: Iterable[LinearModule]) -> float:
    return sum(m.in_features for m in modules) / max(facts.layers, 1)


def _layer_bytes(facts: ModelFacts, setup: MemorySetup) -> float:
    """Bytes per token that one layer keeps for backward (16-bit)."""
    q = facts.heads * facts.head_dim
    kv = facts.kv_heads * facts.head_dim
    base = LAYER_ACTIVATION_SCALE * (12 * facts.hidden_size + 8 * q + 8 * kv + 6 * facts.intermediate_size)
    if setup.method == "full":
        return base + FULL_INPUT_BYTES * _inputs_per_layer(facts, facts.linear)
    targets = list(setup.lora.target_modules) if isinstance(setup.lora.target_modules, tuple) \
        else setup.lora.target_modules
    width = _inputs_per_layer(facts, facts.targeted(targets))
    per_input = LORA_INPUT_BYTES_BF16_ADAPTERS if setup.method == "qlora" else LORA_INPUT_BYTES_FP32_ADAPTERS
    return base + per_input * width


def _dense_mask(setup: MemorySetup, activation_scale: int) -> float:
    """The N x N mask of a flattened micro-batch, boolean and in the compute dtype, where the attention needs one."""
    if not setup.padding_free or attention_is_varlen(setup.attn_implementation):
        return 0.0
    return float((setup.micro_batch * setup.seq_len) ** 2) * (1 + 2 * activation_scale)


def _eager_scores(facts: ModelFacts, setup: MemorySetup, batch: int, training: bool) -> float:
    if setup.attn_implementation != "eager":
        return 0.0
    rows, length = (1, batch * setup.seq_len) if setup.padding_free and training else (batch, setup.seq_len)
    scores = rows * facts.heads * length ** 2
    stored_layers = facts.layers if training and not setup.gradient_checkpointing else 0
    return scores * (EAGER_STORED_BYTES * stored_layers + EAGER_TRANSIENT_BYTES)


# --------------------------------------------------------------------------------------------------------------
# Against the memory a GPU has


def size(n_bytes: float) -> str:
    """12 MB, 1.4 GB: decimal units, as NVML and the published tables use."""
    return f"{n_bytes / GB:.1f} GB" if n_bytes >= 0.95 * GB else f"{n_bytes / 1e6:.0f} MB"


def parts_adding_up(breakdown: dict[str, float]) -> list[tuple[str, str]]:
    """Every part of an estimate as a person reads it, in the unit its total is written in (size): each rounded so
    that the parts written add up to the total written (largest remainders), the parts too small to show in that
    unit summed as "other". (name, size) pairs, in the breakdown's order, "other" last; parts of nothing left out."""
    total = sum(breakdown.values())
    unit, digits = (GB / 10, 1) if total >= 0.95 * GB else (1e6, 0)
    shown = {name: value for name, value in breakdown.items() if value >= unit / 2}
    other = total - sum(shown.values())
    if other > 0:
        shown["other"] = other
    exact = {name: value / unit for name, value in shown.items()}
    ticks = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - ticks[name], reverse=True)
    for name in by_remainder[:max(0, round(total / unit) - sum(ticks.values()))]:
        ticks[name] += 1
    written = "GB" if digits else "MB"
    return [(name.replace("_", " "), f"{count / 10 if digits else count:.{digits}f} {written}")
            for name, count in ticks.items() if count]


HEADROOM = 0.15
"""Margin kept free: the estimate is within 10% on the calibration grid, and fragmentation varies."""


@dataclass(frozen=True)
class Verdict:
    level: str
    """"fits", "tight" or "will not fit"."""
    why: str


def verdict(estimate: MemoryEstimate, free_bytes: float) -> Verdict:
    need, have = estimate.total_bytes, free_bytes
    if need <= have * (1 - HEADROOM):
        return Verdict("fits", f"needs about {size(need)} of the {size(have)} free")
    if need <= have:
        return Verdict("tight", f"needs about {size(need)} of the {size(have)} free: less than {HEADROOM:.0%} "
                                "headroom for estimate error and fragmentation")
    return Verdict("will not fit", f"needs about {size(need)} but only {size(have)} is free")


@dataclass(frozen=True)
class BatchAdvice:
    micro_batch: int
    """The largest micro-batch that fits with headroom at this sequence length (0: not even 1)."""
    accumulation: int
    """Gradient accumulation that keeps the effective batch."""


def largest_micro_batch(facts: ModelFacts, setup: MemorySetup, free_bytes: float,
                        effective_batch: int, limit: int = 256) -> BatchAdvice:
    """Memory grows with the micro-batch, so the largest that fits is found by bisection (a few estimates)."""
    def fits(micro_batch: int) -> bool:
        return verdict(estimate_memory(facts, replace(setup, micro_batch=micro_batch)), free_bytes).level == "fits"

    low, high = 0, min(limit, effective_batch)  # low fits (0 trivially), everything above high is not wanted
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    accumulation = math.ceil(effective_batch / (low * setup.world_size)) if low else 0
    return BatchAdvice(low, accumulation)
