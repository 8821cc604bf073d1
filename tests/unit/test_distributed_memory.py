"""Memory per GPU for each way of sharing a run between GPUs, and what sharding changes in the resolved config."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import DATA
from tuneterm.cli import main
from tuneterm.config import config_from_mapping
from tuneterm.hardware import Device
from tuneterm.plan.memory import STRATEGIES, MemorySetup, Strategy, estimate_memory
from tuneterm.plan.model import LoraShape, load_model_facts
from tuneterm.plan.resolve import resolve

GPU = Device("cuda", "NVIDIA H100", True)
QLORA = MemorySetup(method="qlora", micro_batch=2, seq_len=2048, optim="adamw_torch", lora=LoraShape(16))
LORA = MemorySetup(method="lora", micro_batch=2, seq_len=2048, lora=LoraShape(16))


@pytest.fixture(scope="module")
def llama():  # noqa: ANN201
    return load_model_facts(str(DATA / "model_configs" / "llama-3.2-3b.json"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_process_is_the_single_gpu_estimate_whatever_the_strategy(llama, strategy: Strategy) -> None:  # noqa: ANN001
    for setup in (LORA, QLORA, replace(LORA, method="full", lora=LoraShape())):
        assert estimate_memory(llama, replace(setup, strategy=strategy)) == estimate_memory(llama, setup)


def test_ddp_keeps_a_full_replica_per_gpu_and_a_bucket_per_gradient(llama) -> None:  # noqa: ANN001
    one, two = (estimate_memory(llama, replace(LORA, world_size=n, strategy="ddp")) for n in (1, 2))
    assert {k: v for k, v in two.breakdown.items() if k not in ("allocator_slack", "gradient_buckets")} == \
        {k: v for k, v in one.breakdown.items() if k not in ("allocator_slack", "gradient_buckets")}
    assert two.peak_allocated == one.peak_allocated + one.breakdown["gradients"]
    assert two.breakdown["gradient_buckets"] == one.breakdown["gradients"] and one.breakdown["gradient_buckets"] == 0


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed-zero3"])
def test_fsdp_and_zero3_shard_weights_gradients_and_optimizer_state(llama, strategy: Strategy) -> None:  # noqa: ANN001
    for setup in (LORA, QLORA):
        one = estimate_memory(llama, setup).breakdown
        four = estimate_memory(llama, replace(setup, world_size=4, strategy=strategy)).breakdown
        for part in ("weights", "adapters", "gradients", "optimizer"):
            assert four[part] == one[part] / 4
        assert four["activations"] == one["activations"]
        # Gathered to compute: the 16-bit embedding (tied with the output layer in Llama 3.2) held for the step,
        # and two of the 28 decoder layers, each a 28th of the weights that are not the embedding.
        embedding = llama.embedding_params * 2
        assert llama.lm_head_params == 0
        assert four["gathered_weights"] == embedding + 2 * (one["weights"] - embedding) / 28
    lora = estimate_memory(llama, replace(LORA, world_size=4, strategy=strategy))
    parts = lora.breakdown
    assert lora.peak_allocated == (parts["weights"] + parts["adapters"] + parts["gradients"] + parts["optimizer"]
                                   + parts["gathered_weights"] + parts["activations"])


def test_zero2_shards_gradients_and_optimizer_state_only(llama) -> None:  # noqa: ANN001
    one = estimate_memory(llama, LORA).breakdown
    two = estimate_memory(llama, replace(LORA, world_size=2, strategy="deepspeed-zero2")).breakdown
    assert (two["weights"], two["adapters"], two["activations"]) == (one["weights"], one["adapters"],
                                                                     one["activations"])
    assert (two["gradients"], two["optimizer"], two["gathered_weights"]) == (one["gradients"] / 2,
                                                                              one["optimizer"] / 2, 0.0)


def test_sharding_a_full_fine_tune_over_8_gpus_is_what_fits_it_in_80_gb(llama) -> None:  # noqa: ANN001
    full = replace(LORA, method="full", lora=LoraShape(), optim="adamw_torch")
    totals = {s: estimate_memory(llama, replace(full, world_size=8, strategy=s)).total_bytes
              for s in ("ddp", "deepspeed-zero2", "fsdp")}
    assert totals["fsdp"] < totals["deepspeed-zero2"] < totals["ddp"]
    assert totals["fsdp"] < 80e9 < totals["ddp"]


def qlora_config(**training: object):  # noqa: ANN201
    return config_from_mapping({"method": "qlora", "model": {"path": "m"}, "data": {"train": "t"},
                                "training": {"precision": "bf16", **training}})


def test_qlora_under_fsdp_packs_4_bit_weights_in_the_compute_dtype_and_drops_the_paged_optimizer() -> None:
    resolved = resolve(qlora_config(), GPU, world_size=2, strategy="fsdp")
    assert resolved.get("quantization.bnb_4bit_quant_storage") == "bfloat16"
    assert resolved.get("quantization.bnb_4bit_compute_dtype") == "bfloat16"
    assert "fsdp shards floating-point tensors of one dtype" in resolved.why("quantization.bnb_4bit_quant_storage")
    assert resolved.get("training.optim") == "adamw_torch" and "paged" in resolved.why("training.optim")
    fp16 = resolve(qlora_config(precision="fp16"), Device("cuda", "Tesla T4", False), world_size=2,
                   strategy="deepspeed-zero3")
    assert fp16.get("quantization.bnb_4bit_quant_storage") == "float32"


def test_sharding_leaves_what_the_user_chose_and_ddp_changes_nothing() -> None:
    chosen = resolve(qlora_config(optim="paged_adamw_8bit"), GPU, world_size=2, strategy="fsdp")
    assert chosen.get("training.optim") == "paged_adamw_8bit"
    ddp = resolve(qlora_config(), GPU, world_size=2, strategy="ddp")
    assert ddp.get("quantization.bnb_4bit_quant_storage") is None
    assert ddp.get("training.optim") == "paged_adamw_8bit"
    assert resolve(qlora_config(), GPU, world_size=1, strategy="fsdp").get("training.optim") == "paged_adamw_8bit"


def test_plan_shows_the_memory_per_gpu_of_a_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text((DATA / "model_configs" / "llama-3.2-3b.json").read_text())
    base = ["plan", "--set", f"model.path={model}", "--set", "training.max_length=1024", "--gpu-memory", "80"]
    totals = {}
    for strategy in ("ddp", "fsdp"):
        assert main([*base, "--world-size", "2", "--strategy", strategy, "--json"]) == 0
        planned = json.loads(capsys.readouterr().out)
        assert planned["memory"]["setup"]["strategy"] == strategy
        totals[strategy] = planned["memory"]["total_bytes"]
    assert totals["fsdp"] < totals["ddp"]
    assert main([*base, "--world-size", "2", "--strategy", "fsdp"]) == 0
    assert "Memory    per GPU of 2 (fsdp: weights, gradients and optimizer state sharded)" in capsys.readouterr().out


def test_out_of_memory_in_a_sharded_process_names_the_parts_on_its_own_gpu(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneterm.engine.run.failures import out_of_memory

    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text((DATA / "model_configs" / "llama-3.2-3b.json").read_text())
    config = config_from_mapping({"method": "lora", "model": {"path": str(model)},
                                  "training": {"max_length": 1024, "per_device_train_batch_size": 1}})
    alone = out_of_memory(config, 7, False, tmp_path).summary
    assert "weights 6.4 GB" in alone and "on each GPU" not in alone
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    sharded = out_of_memory(config, 7, False, tmp_path).summary
    assert "weights 1.6 GB" in sharded and "(on each GPU: fsdp over 4 processes)" in sharded


def test_the_plan_panel_shows_gathered_weights_as_a_part_of_their_own(llama) -> None:  # noqa: ANN001
    from tuneterm.plan.memory import size
    from tuneterm.ui.widgets.plan_panel import memory_legend

    sharded = estimate_memory(llama, replace(LORA, world_size=2, strategy="fsdp")).breakdown
    assert f"gathered weights {size(sharded['gathered_weights'])}" in " ".join(memory_legend(sharded))
    assert "gathered weights" not in " ".join(memory_legend(estimate_memory(llama, LORA).breakdown))
