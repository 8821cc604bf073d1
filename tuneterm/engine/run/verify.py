"""Proof that training changed the weights it was meant to change.

A LoRA run can finish with a normal-looking loss and an adapter that never moved (B still all zero, a frozen
adapter, a dtype that underflowed), or one whose weights are NaN, which differ from the start too: both fail.
Comparing with a tolerance (allclose) misses small but real changes in lora_A, so every trainable tensor is
fingerprinted exactly, before training and after saving, as Unsloth's LoRA hyperparameters guide recommends
("Verifying LoRA weight updates").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def fingerprint(tensors: Mapping[str, Any]) -> dict[str, str]:
    """Name -> SHA-256 of the tensor's bytes (exact: one changed bit changes it)."""
    import torch

    prints = {}
    for name, tensor in tensors.items():
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        prints[name] = hashlib.sha256(raw.tobytes()).hexdigest()
    return prints


def compare(before: Mapping[str, str], after_tensors: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between the fingerprints taken before training and the tensors as saved."""
    after = fingerprint(after_tensors)
    changed = sorted(name for name in before if name in after and after[name] != before[name])
    unchanged = sorted(name for name in before if name in after and after[name] == before[name])
    missing = sorted(set(before) - set(after))
    zero_b = sorted(name for name, tensor in after_tensors.items()
                    if "lora_B" in name and not bool(tensor.detach().abs().sum() > 0))
    non_finite = sorted(name for name, tensor in after_tensors.items()
                        if tensor.is_floating_point() and not bool(tensor.detach().isfinite().all()))
    all_changed = bool(before) and not unchanged and not missing
    return {
        "tensors": len(before),
        "changed": len(changed),
        "unchanged": unchanged,
        "missing_from_saved": missing,
        "lora_B_all_zero": zero_b,
        "non_finite": non_finite,
        "all_changed": all_changed,
        "ok": all_changed and not non_finite,
        "method": "sha256 of each tensor's bytes before training vs. the saved weights; NaN and Inf checked",
    }


def is_peft(model: Any) -> bool:
    """A model with a PEFT adapter on it (LoRA, QLoRA), rather than one whose own weights train."""
    return hasattr(model, "peft_config")


def _trainable_tensors(model: Any) -> dict[str, Any]:
    """What training is meant to change, named as it will be saved."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        adapter: dict[str, Any] = get_peft_model_state_dict(model)
        return adapter
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def fingerprint_trainable(model: Any) -> dict[str, str]:
    return fingerprint(_trainable_tensors(model))


def compare_saved(before: dict[str, str], model: Any, run_dir: Path) -> dict[str, Any]:
    """Compare with the adapter file as written (full fine-tuning: with the weights in memory)."""
    if is_peft(model):
        from safetensors.torch import load_file

        return compare(before, load_file(str(run_dir / "adapter_model.safetensors")))
    return compare(before, _trainable_tensors(model))
