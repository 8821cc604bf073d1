"""The speed levers: what cannot go together is refused with the reason, packing resolves from the attention, and
the plan's rows, padding, memory and FLOPs follow what TRL and the Trainer will do."""

from __future__ import annotations

import numpy as np
import pytest

from tuneterm.config import config_from_mapping
from tuneterm.errors import ConfigError
from tuneterm.hardware import CPU, Device, peak_flops
from tuneterm.plan.advice import Context, advise
from tuneterm.plan.flops import mean_context, training_flops_per_token
from tuneterm.plan.memory import MemorySetup, estimate_memory
from tuneterm.plan.model import LinearModule, LoraShape, ModelFacts, trainable_params
from tuneterm.plan.packing import expected_padded_length, packed_rows, tokens_per_step
from tuneterm.plan.resolve import resolve

H200 = Device("cuda", "NVIDIA H200", True)


def config(**sections: dict):
    mapping: dict = {"model": {"path": "m"}, "data": {"train": "t"}}
    for name, values in sections.items():
        mapping[name] = {**mapping.get(name, {}), **values}
    return config_from_mapping(mapping)


def refusal(**sections: dict) -> str:
    with pytest.raises(ConfigError) as raised:
        config(**sections)
    return str(raised.value)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "lm_head"], "lm_.*", ".*(lm_head|q_proj)"])
def test_lm_head_among_the_lora_targets_is_refused_with_the_fused_loss_as_reason(targets: object) -> None:
    message = refusal(lora={"target_modules": targets})
    assert "lora.target_modules: lm_head cannot carry a LoRA adapter: TRL computes the loss through a fused LM head " \
           "that multiplies by lm_head.weight directly, in chunks, never building the full logits (its nll loss; " \
           "chunked_nll is the former name of the same), so an adapter on it would never train" in message


def test_targets_without_the_output_layer_pass() -> None:
    for targets in ("all-linear", ["q_proj", "v_proj"], ".*proj"):
        assert config(lora={"target_modules": targets}).get("lora.target_modules") == targets


def test_liger_fused_cross_entropy_is_refused_beside_the_fused_lm_head() -> None:
    message = refusal(training={"use_liger_kernel": True,
                                "liger_kernel_config": {"fused_linear_cross_entropy": True}})
    assert "training.liger_kernel_config: Liger's fused linear cross-entropy cannot be used: TRL computes the loss " \
           "through a fused LM head" in message
    assert "Liger's would replace the model's forward that carries it, so TRL refuses the pair" in message
    # Liger's layer kernels alone are a valid setting (refused only where the package or a GPU is missing).
    assert config(training={"use_liger_kernel": True}).get("training.use_liger_kernel") is True


def test_chunked_nll_is_named_as_the_nll_it_became() -> None:
    assert "training.loss_type: 'chunked_nll' is TRL's former name for nll, which computes the loss the same way" \
           in refusal(training={"loss_type": "chunked_nll"})
    assert config(training={"loss_type": "dft"}).get("training.loss_type") == "dft"


def test_padding_free_with_wrapped_packing_is_refused() -> None:
    assert "training.padding_free: padding-free rows need whole examples (positions restart at each one), and " \
           "wrapped packing cuts examples mid-way" in refusal(training={"packing": True, "packing_strategy": "wrapped",
                                                                        "padding_free": True})


def test_attention_takes_kernels_hub_builds_and_catches_misspellings() -> None:
    built = config(model={"attn_implementation": "kernels-community/vllm-flash-attn3"})
    assert built.get("model.attn_implementation") == "kernels-community/vllm-flash-attn3"
    assert "'flash_atention_2' is not one of sdpa, eager, flash_attention_2, flash_attention_3, flex_attention, " \
           "nor a kernels-hub id such as kernels-community/flash-attn2; did you mean flash_attention_2?" in \
           refusal(model={"attn_implementation": "flash_atention_2"})


@pytest.mark.parametrize("attention, packs", [("sdpa", False), ("eager", False), ("flash_attention_2", True),
                                              ("kernels-community/flash-attn2", True), ("flex_attention", True)])
def test_packing_auto_follows_the_attention_implementation(attention: str, packs: bool) -> None:
    resolved = resolve(config(model={"attn_implementation": attention}), H200)
    assert resolved.get("training.packing") is packs
    assert resolved.why("training.packing").startswith(f"auto: {attention} ")
    assert config(training={"packing": False}).get("training.packing") is False, "a choice is kept as made"


def test_levers_the_device_cannot_run_are_refused_before_loading() -> None:
    with pytest.raises(ConfigError, match="activation offloading moves activations from a CUDA GPU to host memory; "
                                          "CPU trains in host memory already"):
        resolve(config(training={"activation_offloading": True}), CPU)
    with pytest.raises(ConfigError, match="the Liger kernels need the liger-kernel package: pip install liger-kernel"):
        resolve(config(training={"use_liger_kernel": True}), H200)  # not installed here


# --------------------------------------------------------------------------------------------------------------
# Rows and padding


def test_best_fit_decreasing_fills_the_tightest_row_and_packs_per_map_batch() -> None:
    # 60 into a fresh row; 50 into a fresh row; 40 fits only the 60's (room 68): the row with the least room.
    assert packed_rows(np.array([50, 60, 40, 20, 8]), 128) == 2
    assert packed_rows(np.array([100, 100, 28]), 128, "wrapped") == 2
    # datasets.map packs each batch of 1000 on its own: two half-full batches are two rows, not one.
    assert packed_rows(np.full(2000, 32), 64) == 1000
    assert packed_rows(np.full(1001, 64), 128) == 501
    assert packed_rows(np.full(1000, 64), 128, processes=3) == 501  # shards of 334, 333, 333


def test_expected_padding_follows_the_longest_of_random_batches() -> None:
    lengths = np.array([10] * 90 + [100] * 10)
    rng = np.random.default_rng(0)
    drawn = [lengths[rng.integers(0, 100, 8)].max() for _ in range(20_000)]
    assert expected_padded_length(lengths, 8) == pytest.approx(np.mean(drawn), rel=0.02)
    tokens = tokens_per_step(lengths, 128, 8, 2, packing=False)
    assert tokens.padding_share == pytest.approx(1 - 19 / expected_padded_length(lengths, 8))
    assert tokens.real_per_step == pytest.approx(19 * 16) and tokens.sequences == 100
    packed = tokens_per_step(lengths, 128, 8, 2, packing=True)
    assert (packed.padding_share, packed.padding_free, packed.flattened_length) == (0.0, True, 1024)
    assert packed.sequences == packed_rows(lengths, 128) and packed.real_per_step == pytest.approx(1900 / 16 * 16)


def test_packing_changes_the_plans_steps() -> None:
    lengths = np.full(400, 30)
    packed = resolve(config(training={"packing": True, "max_length": 128, "eval_interval_epochs": 1.0}), CPU,
                     train_lengths=lengths)
    unpacked = resolve(config(training={"packing": False, "max_length": 128, "eval_interval_epochs": 1.0}), CPU,
                       train_lengths=lengths)
    assert unpacked.get("training.eval_steps") == 25  # 400 examples / 16 per step
    assert packed.get("training.eval_steps") == 7  # 100 rows of four examples / 16 per step


# --------------------------------------------------------------------------------------------------------------
# Memory, FLOPs, the device's peak


def llama_like(layers: int = 4, hidden: int = 256, vocab: int = 32_000) -> ModelFacts:
    """The facts of a small Llama-shaped model, written out (reading a config.json imports torch)."""
    names = (("q_proj", hidden, hidden), ("k_proj", hidden, hidden // 4), ("v_proj", hidden, hidden // 4),
             ("o_proj", hidden, hidden), ("gate_proj", hidden, 4 * hidden), ("up_proj", hidden, 4 * hidden),
             ("down_proj", 4 * hidden, hidden))
    linear = tuple(LinearModule(f"model.layers.{i}.{name}", n_in, n_out, False)
                   for i in range(layers) for name, n_in, n_out in names)
    weights = sum(m.in_features * m.out_features for m in linear)
    return ModelFacts("LlamaForCausalLM", "llama", layers, hidden, 8, 2, hidden // 8, 4 * hidden, vocab, 4096, False,
                      weights + 2 * vocab * hidden + (2 * layers + 1) * hidden, vocab * hidden, vocab * hidden, linear,
                      0)


def test_memory_models_the_dense_mask_offloading_and_full_logits() -> None:
    facts = llama_like()
    base = MemorySetup(method="lora", micro_batch=8, seq_len=2048)
    plain = estimate_memory(facts, base)
    sdpa_packed = estimate_memory(facts, MemorySetup(method="lora", micro_batch=8, seq_len=2048, padding_free=True))
    flash_packed = estimate_memory(facts, MemorySetup(method="lora", micro_batch=8, seq_len=2048, padding_free=True,
                                                      attn_implementation="flash_attention_2"))
    assert sdpa_packed.breakdown["attention_mask"] == (8 * 2048) ** 2 * 3  # bool + bf16, 16k x 16k
    assert flash_packed.breakdown["attention_mask"] == 0 == plain.breakdown["attention_mask"]
    assert flash_packed.peak_allocated == plain.peak_allocated, "packing fills the longest batch: the same peak"
    for checkpointing, at_most in ((False, 2 / facts.layers), (True, 0.9)):  # two layers' tensors stay on the GPU
        kept = estimate_memory(facts, MemorySetup(method="lora", micro_batch=8, seq_len=2048,
                                                  gradient_checkpointing=checkpointing))
        offloaded = estimate_memory(facts, MemorySetup(method="lora", micro_batch=8, seq_len=2048,
                                                       gradient_checkpointing=checkpointing,
                                                       activation_offloading=True))
        assert offloaded.breakdown["activations"] + offloaded.offloaded_bytes == pytest.approx(
            kept.breakdown["activations"])
        assert offloaded.breakdown["activations"] <= at_most * kept.breakdown["activations"] * 1.0001
    smoothing = estimate_memory(facts, MemorySetup(method="lora", micro_batch=8, seq_len=2048, fused_lm_head=False))
    assert smoothing.breakdown["logits"] == 8 * 2048 * facts.vocab_size * 12.0


def test_flops_per_token_of_lora_and_full_fine_tuning() -> None:
    facts = llama_like()
    weights = facts.linear_params + facts.hidden_size * facts.vocab_size
    assert training_flops_per_token(facts, "full", LoraShape(), context=0) == 6 * weights  # the scaling laws' 6N
    adapters = trainable_params(facts, "lora", LoraShape())
    # Frozen weights need the gradient of their input only: 2N forward, 2N backward, and the adapters' 6 each.
    assert training_flops_per_token(facts, "lora", LoraShape(), context=0) == 4 * weights + 6 * adapters
    attention = 4 * facts.layers * facts.heads * facts.head_dim * 100  # QK^T and AV over 100 tokens, 2 FLOPs each
    assert training_flops_per_token(facts, "lora", LoraShape(), context=100) == 4 * weights + 6 * adapters + \
        3 * attention
    assert mean_context(np.array([1, 3])) == pytest.approx((1 + 6) / 4)


def test_peak_flops_is_known_or_said_to_be_unknown() -> None:
    assert peak_flops(H200, "bf16") == (989e12, "NVIDIA H200: 989 TFLOP/s dense bf16 (NVIDIA's datasheet)")
    assert peak_flops(Device("cuda", "NVIDIA H100 PCIe", True), "fp16")[0] == 756e12
    assert peak_flops(CPU, "fp32") == (None, "n/a on CPU")
    assert peak_flops(Device("cuda", "NVIDIA A10G", True), "bf16") == (
        None, "n/a: the peak of NVIDIA A10G is not known to tuneterm")
    assert peak_flops(H200, "fp32")[0] is None


def test_advice_on_padding_and_on_packing_with_a_dense_mask() -> None:
    lengths = np.array([10] * 90 + [100] * 10)
    unpacked = resolve(config(training={"max_length": 128}), CPU, train_lengths=lengths)
    found = {a.field: a for a in advise(Context(unpacked, tokens=tokens_per_step(lengths, 128, 8, 2, False)))}
    assert found["model.attn_implementation"].message == "69% of each step is padding"
    assert "packing with sdpa trained 0.91x the real tokens per CPU-second" in found["model.attn_implementation"].why
    assert not found["model.attn_implementation"].fix, "no flash attention to suggest where none may be installed"
    flash = resolve(config(model={"attn_implementation": "flash_attention_2"}, training={"max_length": 128,
                                                                                       "packing": False}),
                    CPU, train_lengths=lengths)
    found = {a.field: a for a in advise(Context(flash, tokens=tokens_per_step(lengths, 128, 8, 2, False)))}
    assert found["training.packing"].fix == {"training.packing": True}
    facts = llama_like()
    packed = resolve(config(training={"max_length": 2048, "packing": True, "per_device_train_batch_size": 8}), CPU,
                     train_lengths=lengths)
    memory = estimate_memory(facts, MemorySetup(method="lora", micro_batch=8, seq_len=2048, padding_free=True))
    found = {a.field: a for a in advise(Context(packed, memory=memory))}
    assert found["training.packing"].message == "packing with sdpa: one row of 8 x max_length tokens per " \
                                                "micro-batch, with a 805 MB mask"


def test_a_run_started_before_the_levers_existed_resumes(tmp_path) -> None:
    import json

    from tuneterm.engine.rundir import fingerprint

    started = config()
    fingerprint.record(started, tmp_path)
    recorded = json.loads((tmp_path / fingerprint.FINGERPRINT_FILE).read_text())
    for key in ("training.packing", "training.packing_strategy", "training.use_liger_kernel"):
        del recorded["config"][key]  # as a fingerprint written before these options were
    (tmp_path / fingerprint.FINGERPRINT_FILE).write_text(json.dumps(recorded))
    assert fingerprint.changes(started, tmp_path) == []
    assert fingerprint.changes(config(training={"packing": True}), tmp_path) == [
        "training.packing was None and is now True in config.yaml"]
