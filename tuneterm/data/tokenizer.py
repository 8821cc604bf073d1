"""The tokenizer a run uses, with the chat template it renders conversations with.

Loaded from the model's directory or hub id (only the tokenizer files are needed, so data can be checked before
any weights are downloaded). A model without a chat template gets tuneterm's default (the Alpaca layout, each
reply closed by EOS), with a warning; `model.chat_template` replaces the template with a file or a template
string. A tokenizer without a pad token pads with EOS: the masks mark replies by character spans, so EOS at the
end of a reply is still trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig
from tuneterm.data.template import DEFAULT_CHAT_TEMPLATE
from tuneterm.errors import LoadError
from tuneterm.hub import open_source
from tuneterm.work import import_training_libraries


def load_tokenizer(config: RunConfig) -> tuple[Any, list[str]]:
    """The tokenizer with the chat template the run uses, and warnings about that template."""
    import_training_libraries()
    from transformers import AutoTokenizer

    path = config.get("model.path")
    source = open_source(path, config.get("model.revision"), config.get("model.trust_remote_code"),
                         needs=("tokenizer",))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **source.kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise source.failure(exc) from None
    warnings = []
    template = config.get("model.chat_template")
    if template:
        tokenizer.chat_template = read_template(template)
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        warnings.append(f"{path} has no chat template (a base model?): using tuneterm's default instruction "
                        "template (### Instruction / ### Response, each reply ended by the EOS token); set "
                        "model.chat_template to use another")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, warnings


def read_template(value: str) -> str:
    """A Jinja template given inline, or the text of a template file."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise LoadError(f"model.chat_template: {value} is neither a template file nor a Jinja template")
    return path.read_text(encoding="utf-8")
