"""The plan's step math against the real Trainer: what tuneterm predicts is what the Trainer runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneterm.plan import schedule


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


