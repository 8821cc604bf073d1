"""The plan's step math against the real Trainer: what tuneterm predicts is what the Trainer runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuneterm.config import config_from_mapping
from tuneterm.hardware import GpuSurvey
from tuneterm.plan import schedule

NO_GPU = GpuSurvey((), reason="planned for the CPU")


def trainer_max_steps(tiny_model: Path, examples: int, micro: int, accumulation: int, epochs: float) -> int:
    """What the real Trainer computes: read in on_train_begin, then stop before any step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    seen: dict[str, int] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            seen["max_steps"] = state.max_steps
            control.should_training_stop = True

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            control.should_training_stop = True

    rows = [[5, 6, 7, 8]] * examples
    args = SFTConfig(output_dir="/tmp/tuneterm-probe", per_device_train_batch_size=micro,
                     gradient_accumulation_steps=accumulation, num_train_epochs=epochs, use_cpu=True, report_to="none",
                     save_strategy="no", disable_tqdm=True, activation_checkpointing=False, bf16=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_model)), args=args,
                         train_dataset=Dataset.from_dict({"input_ids": rows, "labels": rows}),
                         processing_class=AutoTokenizer.from_pretrained(str(tiny_model)), callbacks=[Probe()])
    trainer.train()
    return seen["max_steps"]


GRID = [(17, 2, 8, 3), (100, 2, 8, 3), (101, 4, 4, 1), (16, 2, 8, 1), (7, 1, 1, 2), (250, 3, 5, 2.5), (33, 8, 1, 0.5),
        (64, 4, 3, 3)]


@pytest.mark.parametrize("examples, micro, accumulation, epochs", GRID)
def test_predicted_steps_equal_the_trainers(tiny_model: Path, examples: int, micro: int, accumulation: int,
                                            epochs: float) -> None:
    predicted = schedule.total_steps(schedule.steps_per_epoch(examples, micro, accumulation), epochs)
    assert predicted == trainer_max_steps(tiny_model, examples, micro, accumulation, epochs)




def test_packed_rows_equal_trls(tiny_model: Path, chat_data: dict[str, Path]) -> None:
    """The plan's best-fit decreasing against TRL's own pack_dataset, on the demo's conversations as tokenised."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    from tuneterm.plan.packing import packed_rows
    from tuneterm.plan.planner import make_plan

    settings = {"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}}
    view = make_plan(config_from_mapping(settings), gpus=NO_GPU).data
    assert view is not None
    for max_length, strategy in ((64, "bfd"), (128, "bfd"), (96, "wrapped")):
        lengths = np.minimum(view.train_lengths, max_length)
        rows = [[1] * int(n) for n in lengths]
        packed = pack_dataset(Dataset.from_dict({"input_ids": rows, "labels": rows}), max_length, strategy)
        assert packed_rows(lengths, max_length, strategy) == len(packed), (max_length, strategy)


def test_a_packed_run_takes_the_steps_the_plan_gives(tiny_model: Path, chat_data: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """One real packed training: the plan's total steps are the Trainer's global step, every step is padding-free,
    and on a CPU the monitor is told there is no MFU rather than a number."""
    from tuneterm.engine.events import RunFinished, RunStarted, StepLogged
    from tuneterm.engine.run.plans import new_run
    from tuneterm.engine.run.runner import run
    from tuneterm.plan.planner import make_plan

    settings = {"method": "lora", "model": {"path": str(tiny_model)},
                "data": {"train": str(chat_data["train"]), "val_size": 0}, "lora": {"r": 8, "lora_alpha": 16},
                "training": {"learning_rate": 3e-3, "num_train_epochs": 2, "per_device_train_batch_size": 4,
                             "gradient_accumulation_steps": 2, "gradient_checkpointing": False, "packing": True,
                             "max_length": 96, "load_best_model_at_end": False}}
    plan = make_plan(config_from_mapping(settings), gpus=NO_GPU)
    assert plan.schedule is not None and plan.tokens is not None
    assert plan.schedule.train_sequences < plan.schedule.train_examples, "packing makes fewer, fuller rows"
    events: list = []
    result = run(new_run(config_from_mapping(settings), tmp_path / "runs"), events.append)
    assert isinstance(result, RunFinished), result
    started = next(e for e in events if isinstance(e, RunStarted))
    assert result.global_step == plan.schedule.total_steps == started.total_steps
    assert started.train_sequences == plan.schedule.train_sequences
    steps = [e for e in events if isinstance(e, StepLogged)]
    assert steps and all(e.padding_share == 0.0 for e in steps), "a padding-free row has no padding"
    assert started.peak_flops is None and started.peak_flops_why == "n/a on CPU"
    assert started.flops_per_token == pytest.approx(plan.flops_per_token)


def test_a_model_whose_packed_rows_mix_is_refused() -> None:
    """OPT's learned positions ignore the position ids that keep the examples of a padding-free row apart."""
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    from tuneterm.engine.run.packed import refuse_mixing_rows, rows_mix
    from tuneterm.errors import ConfigError

    small: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 64}
    opt = AutoModelForCausalLM.from_config(OPTConfig(**small, ffn_dim=64, word_embed_proj_dim=32),
                                           attn_implementation="sdpa")
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**small, intermediate_size=64), attn_implementation="sdpa")
    assert not rows_mix(llama)
    config = config_from_mapping({"model": {"path": "m"}, "training": {"packing": True}})
    with pytest.raises(ConfigError) as raised:
        refuse_mixing_rows(opt, config)
    assert str(raised.value).endswith(
        "training.packing: opt with sdpa attention lets the examples flattened into one row attend to each other (the "
        "position ids that restart at each example do not keep them apart in this model), so packing with bfd or "
        "padding_free would train on examples mixed together: set training.packing: false and training.padding_free: "
        "false")
