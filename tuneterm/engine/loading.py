"""Loading the tokenizer and the model a config names, on the device and in the precision the run resolves.

A model path is a local directory or a Hugging Face hub id; both go through `from_pretrained`, so real hub ids
work wherever the hub can be reached, and a machine without network gets an error that says what to do instead
of a stack trace.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneterm.config import RunConfig
from tuneterm.data.chat import DEFAULT_CHAT_TEMPLATE
from tuneterm.hardware import CPU, Device


class LoadError(RuntimeError):
    """The model or tokenizer cannot be loaded; the message says why and what to do."""


def detect_device() -> Device:
    """The device the Trainer will use, as torch sees it."""
    import torch

    if torch.cuda.is_available():
        return Device("cuda", torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Device("mps", "Apple MPS", False)
    return CPU


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all; a proxy is trusted to know better than a direct probe."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _source_kwargs(config: RunConfig) -> dict[str, Any]:
    """from_pretrained arguments shared by tokenizer, config and model. Without network, only the local cache is
    tried, so that an unreachable hub fails at once instead of after minutes of retries."""
    path = config.get("model.path")
    return {"revision": config.get("model.revision"), "trust_remote_code": config.get("model.trust_remote_code"),
            "local_files_only": not Path(path).exists() and not hub_reachable()}


def _hub_hint(path: str, exc: Exception) -> LoadError:
    if Path(path).exists():
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return LoadError(f"model.path: {path}: cannot load it: {first_line.rstrip(': ')}")
    if not hub_reachable():
        return LoadError(f"model.path: '{path}' is not a local directory, is not in the Hugging Face cache, and the "
                         "hub cannot be reached from this machine. Download it on a connected machine "
                         "(hf download ID --local-dir DIR), copy it here and set model.path to that directory.")
    return LoadError(f"model.path: '{path}' is not a local directory and could not be fetched from the Hugging "
                     f"Face hub: {exc}")


def load_tokenizer(config: RunConfig) -> tuple[Any, list[str]]:
    """The tokenizer with the chat template the run uses, and warnings about that template."""
    from transformers import AutoTokenizer

    path = config.get("model.path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_source_kwargs(config))
    except (OSError, ValueError) as exc:
        raise _hub_hint(path, exc) from None
    warnings = []
    template = config.get("model.chat_template")
    if template:
        tokenizer.chat_template = _read_template(template)
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        warnings.append(f"{path} has no chat template (a base model?): using tuneterm's default instruction "
                        "template (### Instruction / ### Response, each reply ended by the EOS token); set "
                        "model.chat_template to use another")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, warnings


def _read_template(value: str) -> str:
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise LoadError(f"model.chat_template: {value} is neither a template file nor a Jinja template")
    return path.read_text(encoding="utf-8")


def context_length(config: RunConfig) -> int | None:
    """The model's maximum position count from its config.json, if it declares one."""
    from transformers import AutoConfig

    path = config.get("model.path")
    try:
        model_config = AutoConfig.from_pretrained(path, **_source_kwargs(config))
    except (OSError, ValueError) as exc:
        raise _hub_hint(path, exc) from None
    text_config = model_config.get_text_config()
    return getattr(text_config, "max_position_embeddings", None)


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_model(config: RunConfig, precision: str, device: Device) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    method = config.method
    # Full fine-tuning keeps fp32 master weights under mixed precision; adapters train over a 16-bit base.
    dtype = torch.float32 if method == "full" else getattr(torch, _DTYPES[precision])
    kwargs: dict[str, Any] = {
        **_source_kwargs(config),
        "attn_implementation": config.get("model.attn_implementation"),
        "dtype": dtype,
    }
    if method == "qlora":
        quantization = config.section("quantization")
        compute = quantization.pop("bnb_4bit_compute_dtype")
        compute = _DTYPES[precision] if compute == "auto" else compute
        kwargs["quantization_config"] = BitsAndBytesConfig(bnb_4bit_compute_dtype=getattr(torch, compute),
                                                           **quantization)
        if device.kind == "cuda":
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    path = config.get("model.path")
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ImportError as exc:
        raise LoadError(f"model.attn_implementation or quantization needs a package that is not installed: "
                        f"{exc}") from None
    except (OSError, ValueError) as exc:
        raise _hub_hint(path, exc) from None
