"""Loading the model a config names, on the device and in the precision the run resolves.

A model path is a local directory or a Hugging Face hub id; both go through `from_pretrained` (hub.py decides
whether the hub can be asked, so a machine without network fails at once with what to do). The tokenizer is
loaded by the data layer (data/tokenizer.py), which needs it before any model exists.
"""

from __future__ import annotations

from typing import Any

from tuneterm.config import RunConfig
from tuneterm.errors import LoadError
from tuneterm.hardware import CPU, Device
from tuneterm.hub import open_source
from tuneterm.plan.memory import SHARDED_WEIGHTS, Strategy


def detect_device() -> Device:
    """The device the Trainer will use, as torch sees it."""
    import torch

    if torch.cuda.is_available():
        return Device("cuda", torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Device("mps", "Apple MPS", False)
    return CPU


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_model(config: RunConfig, precision: str, device: Device, strategy: Strategy = "single") -> Any:
    """The model on this process's device; under FSDP or ZeRO-3 (`strategy`) placed by the launcher's sharding."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    method = config.method
    # Full fine-tuning keeps fp32 master weights under mixed precision; adapters train over a 16-bit base, or over
    # 4-bit weights packed in a floating-point dtype, which the whole model then shares (for FSDP and ZeRO-3).
    storage = config.get("quantization.bnb_4bit_quant_storage")
    dtype = torch.float32 if method == "full" else getattr(
        torch, storage if storage in _DTYPES.values() else _DTYPES[precision])
    path = config.get("model.path")
    source = open_source(path, config.get("model.revision"), config.get("model.trust_remote_code"),
                         needs=("config", "weights"))
    kwargs: dict[str, Any] = {**source.kwargs, "attn_implementation": config.get("model.attn_implementation"),
                              "dtype": dtype}
    if method == "qlora":
        quantization = config.section("quantization")
        compute = quantization.pop("bnb_4bit_compute_dtype")
        compute = _DTYPES[precision] if compute == "auto" else compute
        kwargs["quantization_config"] = BitsAndBytesConfig(bnb_4bit_compute_dtype=getattr(torch, compute),
                                                           **quantization)
        if device.kind == "cuda" and strategy not in SHARDED_WEIGHTS:
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ImportError as exc:
        raise LoadError(f"model.attn_implementation or quantization needs a package that is not installed: "
                        f"{exc}") from None
    except Exception as exc:  # noqa: BLE001 - damaged weights raise safetensors', torch's or pickle's own errors
        raise source.failure(exc) from None
