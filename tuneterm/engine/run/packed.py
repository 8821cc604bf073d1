"""Padding-free rows, checked on the model itself: do the examples flattened into one row stay apart?

Packing with best-fit decreasing, and padding_free, flatten each micro-batch into one row whose position ids
restart at every example; the attention must then keep each example to itself. Flash attention does it through
its variable-length kernel; for SDPA, eager and flex attention transformers builds a block-diagonal mask from the
position ids (measured: the logits of three examples in one row equal those of each alone, to 3e-6). A model whose
attention ignores the position ids (OPT's learned positions, remote code written before transformers did this)
would let every example attend to the ones before it in its row and train on the mixture without a sign. So before
such a run trains, one small forward pass asks the model: changing the first example of a row must leave the
others' logits exactly as they were.
"""

from __future__ import annotations

from typing import Any

from tuneterm.config import RunConfig
from tuneterm.errors import ConfigError, Location, Problem

_PROBE_LENGTHS = (7, 5, 6)
LEAK_TOLERANCE = 1e-3
"""Largest change of the other examples' logits, relative to the largest logit, still read as none: rows kept
apart change them by exactly nothing (the masked scores contribute exact zeros); rows that mix change them by
orders of magnitude more."""


def rows_mix(model: Any) -> bool:
    """Whether examples flattened into one row with restarting position ids see each other in this model."""
    import torch

    vocab = model.config.get_text_config().vocab_size
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    pieces = [torch.randint(0, vocab, (n,), generator=generator) for n in _PROBE_LENGTHS]
    positions = torch.cat([torch.arange(n) for n in _PROBE_LENGTHS]).unsqueeze(0).to(device)
    changed_first = [torch.remainder(pieces[0] + 1, vocab), *pieces[1:]]
    first = _PROBE_LENGTHS[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = [model(input_ids=torch.cat(row).unsqueeze(0).to(device), position_ids=positions,
                             use_cache=False).logits[0, first:].float() for row in (pieces, changed_first)]
    finally:
        model.train(was_training)
    change = (outputs[0] - outputs[1]).abs().max().item()
    return bool(change > LEAK_TOLERANCE * max(outputs[0].abs().max().item(), 1e-6))


def refuse_mixing_rows(model: Any, config: RunConfig) -> None:
    """ConfigError when this model would let the examples of a padding-free row attend to each other."""
    if not rows_mix(model):
        return
    attention = config.get("model.attn_implementation")
    key = "training.padding_free" if config.get("training.padding_free") else "training.packing"
    raise ConfigError([Problem(
        f"{model.config.model_type} with {attention} attention lets the examples flattened into one row attend to "
        "each other (the position ids that restart at each example do not keep them apart in this model), so "
        "packing with bfd or padding_free would train on examples mixed together: set training.packing: false and "
        "training.padding_free: false", Location(key=key))])
