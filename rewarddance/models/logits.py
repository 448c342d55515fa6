r"""Next-token log-probabilities of two given tokens at the last position: the kernel every reward read-out uses.

A VLM asked a yes/no question answers with its next token; :func:`yes_no_log_probs` turns the
logits at that position into log P(token a), log P(token b) under one of two normalisations:

- ``"yes_no"``: a softmax over the two logits only,
  :math:`P(a) = \exp(z_a) / (\exp(z_a) + \exp(z_b)) = \sigma(z_a - z_b)`;
- ``"vocab"``: the softmax over the whole vocabulary, :math:`P(a) = \exp(z_a) / \sum_v \exp(z_v)`.

The model is run with ``logits_to_keep=1``: only the last position's logits are computed (the
inputs are left-padded, so position -1 is every sample's answer position), which avoids a
[batch, length, vocab] tensor that dominates memory for long image sequences. The judge's reading
of these numbers as a reward, P("yes"), is :mod:`rewarddance.judge.readout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

Normalization = Literal["yes_no", "vocab"]

# Keys that are training targets, not model inputs.
_NON_MODEL_KEYS = ("labels",)


def last_token_logits(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """Logits of the last position only.

    Args:
        model: An ``AutoModelForImageTextToText`` model (or a PEFT wrapper around one).
        inputs: Left-padded processor output (see ``rewarddance.models.inputs.encode``); tensors
            are moved to the model's device, ``labels`` are ignored.

    Returns:
        Tensor ``[batch, vocab]`` in the model's dtype.
    """
    device = next(model.parameters()).device
    # The processor returns CPU tensors; moving them here lets callers keep one code path for CPU
    # and GPU. Pixel dtypes are left to the model, which casts them to its vision tower's dtype.
    model_inputs = {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
        for k, v in inputs.items()
        if k not in _NON_MODEL_KEYS
    }
    output = model(**model_inputs, logits_to_keep=1, use_cache=False)
    return output.logits[:, -1, :]


def yes_no_log_probs(
    logits: Tensor, yes_token_id: int, no_token_id: int, normalization: Normalization = "yes_no"
) -> Tensor:
    """Log-probabilities of "yes" and "no" from answer-position logits.

    Args:
        logits: ``[batch, vocab]`` logits at the answer position.
        yes_token_id: Id of the single token "yes".
        no_token_id: Id of the single token "no".
        normalization: ``"yes_no"`` normalises over the two tokens, ``"vocab"`` over the vocabulary.

    Returns:
        ``[batch, 2]`` tensor: column 0 is log P(yes), column 1 log P(no). Computed in float32,
        since a bf16 log-softmax loses the small reward differences RL relies on.
    """
    logits = logits.float()
    if normalization == "yes_no":
        return torch.log_softmax(logits[:, [yes_token_id, no_token_id]], dim=-1)
    if normalization == "vocab":
        return torch.log_softmax(logits, dim=-1)[:, [yes_token_id, no_token_id]]
    raise ValueError(f"normalization must be 'yes_no' or 'vocab', got {normalization!r}")


def yes_probability(
    model: nn.Module,
    inputs: Mapping[str, Any],
    yes_token_id: int,
    no_token_id: int,
    normalization: Normalization = "yes_no",
) -> Tensor:
    """The reward: P("yes") at the last position of each (left-padded) sample.

    Gradients flow when called outside ``torch.no_grad`` (ReFL backpropagates through it).

    Args:
        model: The VLM.
        inputs: Left-padded processor output ending at the generation prompt.
        yes_token_id: Id of "yes".
        no_token_id: Id of "no".
        normalization: See the module docstring.

    Returns:
        ``[batch]`` float32 rewards in (0, 1).
    """
    logits = last_token_logits(model, inputs)
    return yes_no_log_probs(logits, yes_token_id, no_token_id, normalization)[:, 0].exp()
