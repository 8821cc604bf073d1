"""tuneterm: a terminal console for LoRA / QLoRA fine-tuning."""

__version__ = "0.1.0"
