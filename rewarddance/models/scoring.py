r"""Read the generative reward from the LM head: r = P("yes" | images, prompt, instruction).

RewardDance (arXiv 2509.08826) defines the reward as the probability of the token "yes" at the
answer position, with no regression head. Two normalisations are offered:

- ``"yes_no"`` (default): a softmax over the two answer logits only,
  :math:`r = \exp(z_y) / (\exp(z_y) + \exp(z_n)) = \sigma(z_y - z_n)`. It ignores the mass the
  model puts on other tokens, which is large for a backbone not yet tuned to answer yes/no, so the
  reward spans (0, 1) from the first step. The paper does not say which it uses; this is the
  project's choice.
- ``"vocab"``: the softmax over the whole vocabulary, :math:`r = \exp(z_y) / \sum_v \exp(z_v)`.

The model is run with ``logits_to_keep=1``: only the last position's logits are computed (the
inputs are left-padded, so position -1 is every sample's answer position), which avoids a
[batch, length, vocab] tensor that dominates memory for long image sequences.
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


def shared_prefix_length(
    input_ids: Tensor, image_token_id: int, images_in_prefix: int | None = None
) -> tuple[int, int]:
    """Length of the prefix that holds the first ``images_in_prefix`` images of every row (None:
    all but the last image, i.e. everything before the candidate).

    The prefix ends just before the token that opens the next image (the family's
    vision-start / ``<img>`` token sits right before the image's first placeholder token).
    Returns ``(prefix length, images in it)``. All rows must agree on it, and the rows must be unpadded: best-of-N scores N candidates for
    one prompt and one reference, so the sequences only differ after the shared prefix.
    """
    ids = input_ids[0]
    positions = (ids == image_token_id).nonzero().flatten().tolist()
    starts = [p for i, p in enumerate(positions) if i == 0 or p - positions[i - 1] > 1]
    if images_in_prefix is None:
        images_in_prefix = len(starts) - 1
    if len(starts) <= images_in_prefix or images_in_prefix < 1:
        raise ValueError(f"the sequences hold {len(starts)} images; a prefix of {images_in_prefix} leaves no candidate")
    split = starts[images_in_prefix] - 1
    if not torch.equal(input_ids[:, :split], input_ids[:1, :split].expand(input_ids.shape[0], -1)):
        raise ValueError(
            "the rows do not share their first tokens: shared-prefix scoring needs one prompt and reference"
        )
    return split, images_in_prefix


def rewards_with_shared_prefix(
    model: nn.Module,
    inputs: Mapping[str, Any],
    yes_token_id: int,
    no_token_id: int,
    image_token_id: int,
    images_in_prefix: int | None = None,
    normalization: Normalization = "yes_no",
) -> Tensor:
    """P("yes") for N sequences that share a prefix, encoding the prefix once.

    Best-of-N against one reference asks the same question N times: instruction, prompt and the
    reference image are identical, only the candidate differs. The prefix (up to the candidate)
    runs once with the KV cache on; its cache is repeated N times and only the candidates'
    suffixes run. Positions come from the full sequences, so Qwen's multimodal (3-D) rotary
    positions of the suffix are exactly those a from-scratch forward uses: the rewards equal
    :func:`yes_probability` on the full inputs to float tolerance (tested).

    Args:
        model: A Qwen-VL family model (pixel inputs described by ``image_grid_thw``) or one whose
            ``pixel_values`` hold one tile per image (InternVL without tiling).
        inputs: Processor output for the N full sequences, unpadded (same length), each with
            ``images_in_prefix`` shared images followed by its own candidate image(s).
        yes_token_id: Id of "yes".
        no_token_id: Id of "no".
        image_token_id: The image placeholder token id.
        images_in_prefix: How many leading images are shared; None: all but the last (the
            reference, and any in-context example images before it).
        normalization: See the module docstring.

    Returns:
        ``[N]`` float32 rewards.
    """
    input_ids = inputs["input_ids"]
    n, length = input_ids.shape
    if "attention_mask" in inputs and not bool(inputs["attention_mask"].all()):
        raise ValueError("shared-prefix scoring needs unpadded rows (one prompt, same-size candidates)")
    split, images_in_prefix = shared_prefix_length(input_ids, image_token_id, images_in_prefix)
    device = next(model.parameters()).device
    pixels = inputs["pixel_values"]
    grid = inputs.get("image_grid_thw")
    images_per_row = (grid.shape[0] if grid is not None else pixels.shape[0]) // n
    if grid is not None:
        rows_per_image = grid.prod(-1)
        per_row = pixels.split(rows_per_image.tolist())
        take = lambda sl: torch.cat([per_row[r * images_per_row + i] for r in sl[0] for i in sl[1]])  # noqa: E731
        prefix_pixels = take(([0], range(images_in_prefix)))
        suffix_pixels = take((range(n), range(images_in_prefix, images_per_row)))
        grid_rows = grid.view(n, images_per_row, -1)
        prefix_extra = {"image_grid_thw": grid_rows[0, :images_in_prefix]}
        suffix_extra = {"image_grid_thw": grid_rows[:, images_in_prefix:].reshape(-1, grid.shape[-1])}
        position_ids = _full_position_ids(model, inputs)
    else:
        shaped = pixels.view(n, images_per_row, *pixels.shape[1:])
        prefix_pixels = shaped[0, :images_in_prefix]
        suffix_pixels = shaped[:, images_in_prefix:].reshape(-1, *pixels.shape[1:])
        prefix_extra, suffix_extra = {}, {}
        position_ids = torch.arange(length).expand(n, -1)
    token_types = inputs.get("mm_token_type_ids")
    prefix = {
        "input_ids": input_ids[:1, :split],
        "pixel_values": prefix_pixels,
        **prefix_extra,
        **({"mm_token_type_ids": token_types[:1, :split]} if token_types is not None else {}),
    }
    suffix = {
        "input_ids": input_ids[:, split:],
        "pixel_values": suffix_pixels,
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "position_ids": position_ids[..., split:],
        "cache_position": torch.arange(split, length),
        **suffix_extra,
        **({"mm_token_type_ids": token_types[:, split:]} if token_types is not None else {}),
    }
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    cache = model(**to(prefix), use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(n)
    logits = model(**to(suffix), cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return yes_no_log_probs(logits, yes_token_id, no_token_id, normalization)[:, 0].exp()


def _full_position_ids(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """Qwen-VL multimodal rotary positions of the full sequences (no forward pass needed)."""
    inner = getattr(model, "model", model)
    kwargs = {"image_grid_thw": inputs["image_grid_thw"], "attention_mask": inputs.get("attention_mask")}
    if "mm_token_type_ids" in inputs:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    position_ids, _ = inner.get_rope_index(inputs["input_ids"], **kwargs)
    return position_ids
