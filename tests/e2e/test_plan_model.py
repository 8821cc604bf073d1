"""Model facts from config.json alone: parameter counts exactly equal to PEFT's, for many architectures."""

from __future__ import annotations

from typing import Literal, cast

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from tests.helpers import DATA
from tuneterm.plan.model import LoraShape, facts_from_model, load_model_facts, peft_total_params, trainable_params

CONFIGS = DATA / "model_configs"
SHAPES = [LoraShape(16, "all-linear"), LoraShape(8, ("q_proj", "v_proj")), LoraShape(64, "all-linear", use_dora=True),
          LoraShape(4, r".*\.mlp\..*_proj"), LoraShape(8, "all-linear", bias="all")]


def peft_counts(config: object, shape: LoraShape) -> tuple[int, int]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    targets = list(shape.target_modules) if isinstance(shape.target_modules, tuple) else shape.target_modules
    bias = cast(Literal["none", "all", "lora_only"], shape.bias)  # LoraShape keeps one of PEFT's names
    peft_model = get_peft_model(model, LoraConfig(r=shape.r, target_modules=targets, use_dora=shape.use_dora,
                                                  bias=bias, task_type="CAUSAL_LM"))
    return peft_model.get_nb_trainable_parameters()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.json")))
def test_real_configs_count_exactly_like_peft(name: str) -> None:
    facts = load_model_facts(str(CONFIGS / f"{name}.json"))
    config = AutoConfig.from_pretrained(str(CONFIGS / f"{name}.json"))
    for shape in SHAPES[:3]:
        trainable, total = peft_counts(config, shape)
        assert trainable_params(facts, "lora", shape) == trainable, shape
        assert peft_total_params(facts, "lora", shape) == total, shape
    assert facts.all_linear_names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_published_sizes() -> None:
    qwen = load_model_facts(str(CONFIGS / "qwen3-0.6b.json"))
    assert (qwen.layers, qwen.hidden_size, qwen.heads, qwen.kv_heads, qwen.vocab_size) == (28, 1024, 16, 8, 151936)
    assert qwen.tied_embeddings and qwen.lm_head_params == 0
    assert qwen.total_params == 596_049_920
    llama = load_model_facts(str(CONFIGS / "llama-2-7b.json"))
    assert llama.total_params == 6_738_415_616  # the "7B" everyone quotes
    assert trainable_params(llama, "lora", LoraShape(8, ("q_proj", "v_proj"))) == 4_194_304
    assert trainable_params(llama, "full", LoraShape()) == llama.total_params


def _small(config_class: type, **overrides: object) -> object:
    config = config_class(**overrides)
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(config, name):
            setattr(config, name, 2)
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:2]
    return config


ARCHITECTURES = ["GemmaConfig", "Gemma2Config", "PhiConfig", "Phi3Config", "FalconConfig", "GPT2Config",
                 "GPTNeoXConfig", "StableLmConfig", "OPTConfig", "BloomConfig", "GPTJConfig", "CohereConfig",
                 "OlmoConfig", "Starcoder2Config", "Qwen2Config"]


@pytest.mark.parametrize("config_name", ARCHITECTURES)
def test_other_architectures_resolve_all_linear_and_count_like_peft(config_name: str) -> None:
    import transformers

    config = _small(getattr(transformers, config_name))
    with torch.device("meta"):
        facts = facts_from_model(AutoModelForCausalLM.from_config(config))
    for shape in (SHAPES[0], SHAPES[2], SHAPES[4], LoraShape(4, tuple(facts.all_linear_names[:1]), bias="lora_only")):
        trainable, total = peft_counts(config, shape)
        assert (trainable_params(facts, "lora", shape), peft_total_params(facts, "lora", shape)) == (trainable, total)
    if config_name == "FalconConfig":
        assert facts.all_linear_names == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    if config_name == "PhiConfig":
        assert facts.all_linear_names == ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"]
    if config_name == "GPT2Config":  # Conv1D layers are "linear" to PEFT too
        assert facts.all_linear_names == ["c_attn", "c_fc", "c_proj"]
