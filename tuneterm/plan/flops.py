"""Model FLOPs per trained token: the numerator of MFU (model FLOPs utilisation).

MFU is the share of the device's peak that the run turns into useful model arithmetic: real tokens per second x
the FLOPs training one token needs, over the peak. Useful means what the model requires, the PaLM paper's
convention: padding, the recomputation of gradient checkpointing and the masked blocks of a dense attention mask
do not count, so MFU says how much of the GPU the data and the settings actually use.

Per token, a forward pass multiplies by every weight matrix once (2 FLOPs per weight: the linear layers and the
output layer; an embedding lookup costs nothing) and, in each layer, attends to the tokens before it (QK^T and the
weighted sum of V: 2 x 2 x query width per attended token). Backward costs twice the forward for what is trained
(gradients of the inputs and of the weights) and once for a frozen weight (only the gradient of its input is
needed): full fine-tuning is 3x the forward, LoRA about 2x plus its adapters' own arithmetic. Attention has no
weights: its backward is twice its forward either way.
"""

from __future__ import annotations

import numpy as np

from tuneterm.plan.model import LoraShape, ModelFacts, trainable_params


def mean_context(lengths: np.ndarray) -> float:
    """The average number of tokens a token attends to under causal attention (itself and those before it), over
    examples of these lengths; packing keeps the examples apart, so it is the same packed or not."""
    values = np.asarray(lengths, dtype=np.float64)
    return float((values * (values + 1) / 2).sum() / values.sum()) if values.sum() else 0.0


def training_flops_per_token(facts: ModelFacts, method: str, lora: LoraShape, context: float) -> float:
    """Model FLOPs of one optimizer step's work on one real token, `context` tokens attended on average."""
    output_layer = facts.hidden_size * facts.vocab_size  # tied or not, the output layer multiplies
    matmul_weights = facts.linear_params + output_layer
    attention = 4.0 * facts.layers * facts.heads * facts.head_dim * context
    forward = 2.0 * matmul_weights + attention
    if method == "full":
        return 3 * forward
    adapters = trainable_params(facts, method, lora)
    return 2 * 2.0 * matmul_weights + 3 * attention + 6.0 * adapters
