"""Rewards with gradients to the image tensors: what ReFL backpropagates into a generator.

:func:`differentiable_rewards` scores like :meth:`rewarddance.judge.reward_model.RewardModel.score`,
but the images are tensors and the reward is a torch function of them. The text side goes through
the judge's normal encoding path with blank PIL placeholders of the images' sizes; the pixel
inputs the processor made of the placeholders are then replaced by
:func:`rewarddance.models.pixels.pixel_inputs_from_tensor` of the tensors (the processor's
arithmetic, re-implemented in torch there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers import BatchFeature, ProcessorMixin

from rewarddance.judge.prompting import encode_queries
from rewarddance.judge.readout import last_hidden_state
from rewarddance.judge.reward_model import RewardModel
from rewarddance.models import Backbone
from rewarddance.models.logits import Normalization, last_token_logits, yes_no_log_probs
from rewarddance.models.pixels import join_pixel_inputs, per_image_pixel_inputs, pil_to_tensor

__all__ = ["differentiable_rewards"]


class _RecordingProcessor:
    """Forwards everything to a processor and records the images of its last call.

    The reward model's own encoding path decides which images go where (template order,
    in-context examples, sampled video frames, truncation retries); recording the flat image
    list it hands to the processor maps each processor image back to its source tensor without
    re-implementing that logic.
    """

    def __init__(self, processor: ProcessorMixin) -> None:
        self._processor = processor
        self.images: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, *args: Any, images: Any = None, **kwargs: Any) -> BatchFeature:
        self.images = list(images) if images is not None else []
        return self._processor(*args, images=images, **kwargs)


def _placeholders(tensor: Tensor, sources: dict[int, tuple[Tensor, int]]) -> list[Any]:
    """One blank PIL image (or list of frames) per sample, registered as standing for ``tensor``'s rows."""
    if tensor.dim() not in (4, 5) or tensor.shape[-3] != 3:
        raise ValueError(f"Expected images [B, 3, H, W] or videos [B, T, 3, H, W], got shape {tuple(tensor.shape)}")
    flat = tensor.flatten(0, 1) if tensor.dim() == 5 else tensor
    height, width = flat.shape[-2:]
    blanks = []
    for row in range(flat.shape[0]):
        blank = Image.new("RGB", (width, height))  # a distinct object per image: mapped back by identity
        sources[id(blank)] = (flat, row)
        blanks.append(blank)
    if tensor.dim() == 5:
        frames = tensor.shape[1]
        return [blanks[b * frames : (b + 1) * frames] for b in range(tensor.shape[0])]
    return blanks


def _references(references: Any, sources: dict[int, tuple[Tensor, int]]) -> list[Any] | None:
    if references is None:
        return None
    if isinstance(references, Tensor):
        return _placeholders(references, sources)
    out = []
    for ref in references:
        if isinstance(ref, Tensor):
            out.append(_placeholders(ref.unsqueeze(0), sources)[0])
        else:
            out.append(ref)  # PIL image or list of PIL frames: processed from the PIL image itself
    return out


def _substituted_pixels(
    processor: ProcessorMixin,
    recorded: Sequence[Any],
    batch: Mapping[str, Any],
    sources: Mapping[int, tuple[Tensor, int]],
    quantize: bool,
    device: torch.device,
) -> dict[str, Tensor]:
    """The pixel inputs of the recorded processor images, tensors where they stand for one."""
    computed: dict[int, list[tuple[Tensor, Tensor | None]]] = {}
    per_image: list[tuple[Tensor, Tensor | None]] = []
    for image in recorded:
        source = sources.get(id(image))
        if source is None:  # a fixed PIL image (reference, in-context example): no gradient
            per_image += per_image_pixel_inputs(processor, [pil_to_tensor(image).to(device)], quantize=quantize)
            continue
        tensor, row = source
        if id(tensor) not in computed:
            computed[id(tensor)] = per_image_pixel_inputs(processor, tensor, quantize=quantize)
        per_image.append(computed[id(tensor)][row])
    pixels = join_pixel_inputs(per_image)
    # The processor ran on same-size placeholders: its shapes and grids must be ours, or the
    # settings read from the processor are not the ones it used.
    if tuple(pixels["pixel_values"].shape) != tuple(batch["pixel_values"].shape) or (
        "image_grid_thw" in batch and not torch.equal(pixels["image_grid_thw"], batch["image_grid_thw"].cpu())
    ):
        raise RuntimeError(
            f"The differentiable pixels ({tuple(pixels['pixel_values'].shape)}) do not line up with the "
            f"processor's ({tuple(batch['pixel_values'].shape)}): unsupported processor settings."
        )
    return pixels


def differentiable_rewards(
    model: RewardModel | Backbone,
    prompts: Sequence[Any],
    images: Tensor,
    references: Tensor | Sequence[Any] | None = None,
    *,
    criteria: str | None = None,
    normalization: Normalization | None = None,
    quantize: bool = True,
    tags: Sequence[str | None] | None = None,
    conditions: Sequence[Image.Image | None] | None = None,
) -> Tensor:
    """Rewards with gradients to the image tensor: what ReFL backpropagates into a generator.

    The text side goes through the normal path (templates, chat template, tokenisation, image
    token counts) with blank PIL placeholders of the images' sizes; the placeholders' pixel inputs
    are then replaced by :func:`rewarddance.models.pixels.pixel_inputs_from_tensor` of the tensors. The rewards
    equal :meth:`RewardModel.score` on :func:`rewarddance.models.pixels.to_pil_images` of the same tensors to float tolerance.

    The reward model's parameters get gradients too unless frozen: for ReFL call
    ``model.backbone.model.requires_grad_(False)`` once (it saves their gradient memory).

    Args:
        model: An exported :class:`~rewarddance.judge.reward_model.RewardModel` (generative, without
            reasons-first rationales, or regressive), or a :class:`Backbone`.
        prompts: RewardModel: the generation prompt of each image. Backbone: each sample's full
            prompt string (or conversation) with ``<image>`` placeholders, filled by the reference
            (if given) and then the image.
        images: ``[B, 3, H, W]`` RGB in ``[0, 1]`` (e.g. decoded latents), or videos as frames
            ``[B, T, 3, H, W]``; any float dtype and device.
        references: Pairwise models: each image's reference, as a tensor like ``images`` or a
            sequence of PIL images (frame lists) and ``[3, H, W]`` tensors.
        criteria: RewardModel: criteria name or text (default: the exported one).
        normalization: Backbone: ``"yes_no"`` (default) or ``"vocab"``; a RewardModel uses its own.
        quantize: See :func:`rewarddance.models.pixels.pixel_inputs_from_tensor`.
        tags: RewardModel: each image's tag, for a model that retrieves its in-context examples by tag.
        conditions: RewardModel, image-to-video: each image's condition image (PIL, None where none), shown
            before the clips as :meth:`RewardModel.score` shows it; fixed inputs, without gradients.

    Returns:
        ``[B]`` float32 rewards on the model's device, differentiable w.r.t. ``images`` (and
        ``references`` tensors).

    Raises:
        NotImplementedError: For a reasons-first model (its rationale is generated, not differentiable).
        UsageError: Condition images a RewardModel was not trained with, or none where it was
            (:meth:`RewardModel.check_conditions`).
        RuntimeError: If the processor's settings could not be reproduced.
    """
    sources: dict[int, tuple[Tensor, int]] = {}
    candidates = _placeholders(images, sources)
    refs = _references(references, sources)
    if len(prompts) != len(candidates):
        raise ValueError(f"Got {len(prompts)} prompts but {len(candidates)} images.")

    if isinstance(model, RewardModel):
        if model.config.get("rationale_format") == "reasons_first":
            raise NotImplementedError(
                "A reasons-first model generates its rationale before the judgment; that step has no "
                "gradient. Use a judgment-first (or no-rationale) reward model for ReFL."
            )
        backbone = model.backbone
        backbone.model.eval()  # as RewardModel.score: a frozen judge, no dropout
        recorder = _RecordingProcessor(backbone.processor)
        queries = model.queries(list(prompts), candidates, refs, criteria, tags=tags, conditions=conditions)
        batch, _ = encode_queries(
            dataclasses.replace(backbone, processor=recorder),
            model.template,
            queries,
            # The regressive baseline has no answer request (its reward is read by the head).
            rationale_format=model.config["rationale_format"] if model.kind == "generative" else "none",
            max_length=model.config.get("max_length"),
        )
        normalization = model.config.get("normalization")
    elif isinstance(model, Backbone):
        if conditions is not None:
            raise ValueError(
                "conditions= needs a RewardModel (its template shows them before the clips); a Backbone's "
                "prompts are full strings showing the reference (if any) and the image only"
            )
        backbone = model
        recorder = _RecordingProcessor(backbone.processor)
        visuals = [[r, c] for r, c in zip(refs, candidates)] if refs is not None else [[c] for c in candidates]
        batch = dataclasses.replace(backbone, processor=recorder).encode(list(prompts), visuals)
    else:
        raise TypeError(f"Expected a RewardModel or a Backbone, got {type(model).__name__}")

    inputs = dict(batch)
    inputs.update(_substituted_pixels(backbone.processor, recorder.images, batch, sources, quantize, images.device))
    if isinstance(model, RewardModel) and model.kind == "regressive":
        assert model.head is not None
        return model.head(last_hidden_state(backbone.model, inputs)).float()
    logits = last_token_logits(backbone.model, inputs)
    return yes_no_log_probs(logits, backbone.yes_token_id, backbone.no_token_id, normalization or "yes_no")[:, 0].exp()
