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


class PrefixNotShared(ValueError):
    """The candidates do not encode to sequences that differ only in their pixels (e.g. different sizes)."""


def image_starts(input_ids: Tensor, image_token_id: int) -> list[int]:
    """Positions of the first placeholder token of each image in one sequence (``[length]`` ids)."""
    positions = (input_ids == image_token_id).nonzero().flatten().tolist()
    return [p for i, p in enumerate(positions) if i == 0 or p - positions[i - 1] > 1]


def rewards_with_shared_prefix(
    model: nn.Module,
    pair: Mapping[str, Any],
    others: Mapping[str, Any],
    yes_token_id: int,
    no_token_id: int,
    image_token_id: int,
    candidate_images: int = 1,
    normalization: Normalization = "yes_no",
) -> Tensor:
    """P("yes") for N candidates asked the same question, encoding what they share once.

    Best-of-N against one reference asks the same question N times: instruction, prompt and the
    reference image are identical, only the candidate differs. Same-size candidates even give
    identical token sequences; only their pixels differ. So the processor runs once on the first
    full question (``pair``) and on the other candidates' images alone (``others``, from
    :func:`rewarddance.models.inputs.encode_images`); the model runs the shared prefix (everything
    before the first candidate image) once with the KV cache on, repeats that cache N times and
    runs only the N suffixes (candidate images and the rest of the question) as one batch.
    Positions come from the full sequence, so Qwen's multimodal (3-D) rotary positions of the
    suffix are exactly those a from-scratch forward uses: the rewards equal :func:`yes_probability`
    on the N full sequences to float tolerance (tested).

    Args:
        model: A Qwen-VL family model (pixel inputs described by ``image_grid_thw``) or one whose
            ``pixel_values`` hold one tile per image (InternVL without tiling).
        pair: Processor output of one question (one row): the shared images, then the first
            candidate's ``candidate_images`` images, then the rest of the question.
        others: Pixel inputs of the other N - 1 candidates, ``candidate_images`` images each, in order.
        yes_token_id: Id of "yes".
        no_token_id: Id of "no".
        image_token_id: The image placeholder token id.
        candidate_images: Images per candidate (a video candidate has one per frame).
        normalization: See the module docstring.

    Returns:
        ``[N]`` float32 rewards.

    Raises:
        PrefixNotShared: The other candidates' images differ in size from the first's (their
            sequences would differ in length), or nothing precedes the candidate.
    """
    input_ids = pair["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"pair must be one encoded question, got {input_ids.shape[0]} rows")
    length = input_ids.shape[1]
    starts = image_starts(input_ids[0], image_token_id)
    shared_images = len(starts) - candidate_images
    if shared_images < 1:
        raise PrefixNotShared(
            f"the question holds {len(starts)} images: none precedes the {candidate_images} of the candidate"
        )
    # The family's vision-start / <img> token sits right before an image's first placeholder.
    split = starts[shared_images] - 1
    pixels, others_pixels = pair["pixel_values"], others["pixel_values"]
    grid = pair.get("image_grid_thw")
    if grid is not None:
        candidate_grid = grid[shared_images:]
        n = 1 + others["image_grid_thw"].shape[0] // candidate_images
        if not torch.equal(others["image_grid_thw"], candidate_grid.repeat(n - 1, 1)):
            raise PrefixNotShared("the candidates differ in size, so their sequences differ in length")
        prefix_rows = int(grid[:shared_images].prod(-1).sum())
        prefix_extra = {"image_grid_thw": grid[:shared_images]}
        suffix_extra = {"image_grid_thw": candidate_grid.repeat(n, 1)}
        position_ids = _full_position_ids(model, pair)
    else:
        n = 1 + others_pixels.shape[0] // candidate_images
        if pixels.shape[0] != len(starts) or others_pixels.shape[0] != (n - 1) * candidate_images:
            raise PrefixNotShared("one pixel tile per image is needed (InternVL without tiling)")
        if others_pixels.shape[1:] != pixels.shape[1:]:
            raise PrefixNotShared("the candidates differ in size, so their sequences differ in length")
        prefix_rows = shared_images
        prefix_extra, suffix_extra = {}, {}
        position_ids = torch.arange(length)[None]
    suffix_positions = position_ids[..., split:]
    token_types = pair.get("mm_token_type_ids")
    prefix = {
        "input_ids": input_ids[:, :split],
        "pixel_values": pixels[:prefix_rows],
        **prefix_extra,
        **({"mm_token_type_ids": token_types[:, :split]} if token_types is not None else {}),
    }
    suffix = {
        "input_ids": input_ids[:, split:].expand(n, -1),
        # Row i's images: the first candidate's come from the pair, the others' from ``others``.
        "pixel_values": torch.cat([pixels[prefix_rows:], others_pixels]),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "position_ids": suffix_positions.expand(*suffix_positions.shape[:-2], n, -1),
        "cache_position": torch.arange(split, length),
        **suffix_extra,
        **({"mm_token_type_ids": token_types[:, split:].expand(n, -1)} if token_types is not None else {}),
    }
    device = next(model.parameters()).device
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    cache = model(**to(prefix), use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(n)
    logits = model(**to(suffix), cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return yes_no_log_probs(logits, yes_token_id, no_token_id, normalization)[:, 0].exp()


def _full_position_ids(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """Qwen-VL multimodal rotary positions of full sequences (no forward pass needed)."""
    inner = getattr(model, "model", model)
    kwargs = {"image_grid_thw": inputs["image_grid_thw"], "attention_mask": inputs.get("attention_mask")}
    if "mm_token_type_ids" in inputs:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    position_ids, _ = inner.get_rope_index(inputs["input_ids"], **kwargs)
    return position_ids
