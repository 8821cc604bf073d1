"""What a model is, from its config.json alone: no weights, so a person can plan before downloading.

The model is instantiated on PyTorch's meta device (no memory, no time) to read its real modules: parameter
groups, the linear layers LoRA can adapt, and what "all-linear" means for this architecture (Falcon's
query_key_value, Phi's dense / fc1 / fc2 as well as Llama's q_proj ...). Trainable parameter counts are then
arithmetic over those modules, exact to PEFT's own count and fast enough to redo on every keystroke.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuneterm.errors import LoadError, first_sentence
from tuneterm.hub import open_source
from tuneterm.work import import_training_libraries


@dataclass(frozen=True)
class LinearModule:
    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    model_type: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int | None
    tied_embeddings: bool
    total_params: int
    """Parameters of the base model (tied embeddings counted once)."""
    embedding_params: int
    lm_head_params: int
    """0 when the output layer shares the input embedding."""
    linear: tuple[LinearModule, ...]
    """Every linear layer except the output layer: what LoRA can target and what 4-bit quantisation converts."""
    bias_params: int
    """All bias parameters of the model."""

    @property
    def linear_params(self) -> int:
        return sum(m.in_features * m.out_features for m in self.linear)

    @property
    def other_params(self) -> int:
        """Norms and anything else that is neither embedding, output layer nor linear weight."""
        return self.total_params - self.embedding_params - self.lm_head_params - self.linear_params

    @property
    def all_linear_names(self) -> list[str]:
        """What target_modules "all-linear" means for this architecture."""
        return sorted({m.name.rsplit(".", 1)[-1] for m in self.linear})

    def targeted(self, target_modules: str | list[str]) -> list[LinearModule]:
        """The linear layers a LoRA target_modules value selects, matched as PEFT matches them."""
        if target_modules == "all-linear":
            return list(self.linear)
        if isinstance(target_modules, str):
            return [m for m in self.linear if re.fullmatch(target_modules, m.name)]
        return [m for m in self.linear if any(m.name == t or m.name.endswith("." + t) for t in target_modules)]


@dataclass(frozen=True)
class LoraShape:
    """The LoRA settings that decide the trainable parameter count."""

    r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    use_dora: bool = False
    bias: str = "none"


def count(number: int) -> str:
    """1.2B, 350M, 65.5K: parameter counts as model cards write them."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= scale:
            return f"{number / scale:.1f}{suffix}"
    return str(number)


def trainable_params(facts: ModelFacts, method: str, lora: LoraShape) -> int:
    """Exactly what PEFT's get_nb_trainable_parameters() reports as trainable (everything for full)."""
    if method == "full":
        return facts.total_params
    targets = list(lora.target_modules) if isinstance(lora.target_modules, tuple) else lora.target_modules
    modules = facts.targeted(targets)
    count = sum(lora.r * (m.in_features + m.out_features) for m in modules)
    if lora.use_dora:
        count += sum(m.out_features for m in modules)  # the magnitude vector
    if lora.bias == "all":
        count += facts.bias_params
    elif lora.bias == "lora_only":
        count += sum(m.out_features for m in modules if m.bias)
    return count


def peft_total_params(facts: ModelFacts, method: str, lora: LoraShape) -> int:
    """PEFT's "all params": the base model plus the adapters it adds."""
    if method == "full":
        return facts.total_params
    added = trainable_params(facts, method, LoraShape(lora.r, lora.target_modules, lora.use_dora, "none"))
    return facts.total_params + added


def load_model_facts(path: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelFacts:
    """Facts for a local model directory, a config.json file, or a hub id (which needs only its config.json)."""
    return _facts(str(path), revision, trust_remote_code)


@functools.lru_cache(maxsize=16)
def _facts(path: str, revision: str | None, trust_remote_code: bool) -> ModelFacts:
    import_training_libraries()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = open_source(path, revision, trust_remote_code, needs=("config",))
    try:
        config = AutoConfig.from_pretrained(path, **source.kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise source.failure(exc) from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, ImportError, KeyError) as exc:
        raise LoadError(f"model.path: {path}: transformers cannot build a causal language model from its "
                        f"config.json ({first_sentence(str(exc))})") from None
    return facts_from_model(model)


def facts_from_model(model: Any) -> ModelFacts:
    text = model.config.get_text_config()
    output = model.get_output_embeddings()
    output_name = next((name for name, module in model.named_modules() if module is output), None)
    linear = tuple(shape for name, module in model.named_modules()
                   if name != output_name and (shape := _linear_shape(name, module)) is not None)
    parameters = dict(model.named_parameters())  # shared (tied) parameters appear once
    embedding = model.get_input_embeddings().weight
    tied = output is not None and output.weight is embedding
    heads = getattr(text, "num_attention_heads", None) or 1
    hidden = text.hidden_size
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return ModelFacts(
        architecture=(model.config.architectures or [type(model).__name__])[0],
        model_type=model.config.model_type,
        layers=text.num_hidden_layers,
        hidden_size=hidden,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate_size=_intermediate_size(text, linear, hidden),
        vocab_size=text.vocab_size,
        context_length=getattr(text, "max_position_embeddings", None),
        tied_embeddings=tied,
        total_params=sum(p.numel() for p in parameters.values()),
        embedding_params=embedding.numel(),
        lm_head_params=0 if tied or output is None else output.weight.numel(),
        linear=linear,
        bias_params=sum(p.numel() for name, p in parameters.items() if name.endswith(".bias")),
    )


def _linear_shape(name: str, module: Any) -> LinearModule | None:
    """nn.Linear, or transformers' Conv1D (GPT-2 style, weight stored transposed): both are "linear" to PEFT."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return LinearModule(name, module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, Conv1D):
        rows, columns = module.weight.shape
        return LinearModule(name, rows, columns, module.bias is not None)
    return None


def _intermediate_size(text: Any, linear: Iterable[LinearModule], hidden: int) -> int:
    for name in ("intermediate_size", "ffn_hidden_size", "n_inner"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    widest = max((m.out_features for m in linear), default=4 * hidden)
    return widest if widest > hidden else 4 * hidden
