"""The Hugging Face objects a run trains with: the LoRA config, the SFTTrainer over a resolved config, and saving
what it trained. Also used by the VRAM calibration bench, which builds the same trainer without a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig
from tuneterm.engine.run.verify import is_peft
from tuneterm.hardware import Device

# Keys of the training section that are tuneterm's own rather than SFTConfig fields.
_TUNETERM_TRAINING_KEYS = ("precision", "gradient_checkpointing", "eval_interval_epochs", "early_stopping_patience",
                           "early_stopping_threshold", "cpu_threads")


def build_trainer(config: RunConfig, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any | None,
                  output_dir: Path, device: Device, callbacks: list[Any], resuming: bool = False) -> Any:
    """The SFTTrainer for a resolved config and tokenised datasets (also used by the VRAM calibration bench)."""
    from transformers import PrinterCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    training = config.section("training")
    has_eval = eval_dataset is not None
    arguments = {k: v for k, v in training.items() if k not in _TUNETERM_TRAINING_KEYS}
    arguments.update(
        output_dir=str(output_dir),
        bf16=training["precision"] == "bf16",
        fp16=training["precision"] == "fp16",
        use_cpu=device.kind == "cpu",
        activation_checkpointing=training["gradient_checkpointing"],
        eval_strategy="steps" if has_eval else "no",
        save_strategy="steps",
        load_best_model_at_end=training["load_best_model_at_end"] and has_eval,
        # A resumed run has its baseline already; evaluating again would count against patience.
        eval_on_start=training["eval_on_start"] and has_eval and not resuming,
        report_to="none",
        disable_tqdm=True,
        # A NaN loss must be seen as NaN (the default replaces it with an average, or 0.0 at the start).
        logging_nan_inf_filter=False,
        # With a limit of 1 the Trainer deletes the last checkpoint at the end when the best is another one; the
        # last complete checkpoint is never deleted.
        save_total_limit=max(training["save_total_limit"], 2) if has_eval else training["save_total_limit"],
        include_num_input_tokens_seen="non_padding",
        packing=training.get("packing") is True,  # "auto" is resolved before a run; an unresolved one does not pack
    )
    if arguments.get("padding_free") and not arguments["packing"]:
        # TRL truncates to max_length only while it packs; the examples are cut to it already (data/prepare.py).
        arguments["max_length"] = None
    # Every trainable parameter takes part in every step: DDP need not search the graph for unused ones.
    arguments.setdefault("ddp_find_unused_parameters", False)
    trainer = SFTTrainer(model=model, args=SFTConfig(**arguments), train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks,
                         peft_config=lora_config(config) if config.method != "full" else None)
    trainer.remove_callback(PrinterCallback)  # progress goes through events, not print()
    return trainer


def save_adapter(trainer: Any, run_dir: Path) -> None:
    """The final adapter (or model), saved by every process together: FSDP gathers the full state dict for it
    (checkpoints keep theirs sharded), ZeRO-3 its 16-bit weights; the main process writes the files."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(run_dir))


def lora_config(config: RunConfig) -> Any:
    from peft import LoftQConfig, LoraConfig

    fields = config.section("lora")
    if isinstance(fields.get("loftq_config"), dict):
        fields["loftq_config"] = LoftQConfig(**fields["loftq_config"])
    return LoraConfig(task_type="CAUSAL_LM", **fields)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(total, trainable), counting 4-bit packed weights at their real size, as PEFT reports them."""
    if is_peft(model):
        trainable, total = model.get_nb_trainable_parameters()
        return total, trainable
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))
