"""Turn reward-model text and images into model inputs, the same way for every VLM family.

A sample is either a prompt string with placeholders or a chat conversation:

- ``"<image> <image> Is image 2 better than image 1?"``: each ``<image>`` takes the next image of
  the sample; each ``<video>`` takes the next item, which must be a list of frames. The string
  becomes one user turn.
- ``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}]``: used as
  is; ``{"type": "video"}`` items are expanded into one image item per frame.

The family's own chat template (from the processor) renders the turn, with the generation prompt,
so the last position is where the model would emit its answer: the reward reads "yes"/"no" there.
Video always goes through the image path, one image per sampled frame: transformers' video
processors need torchvision, which rewarddance does not depend on (see ``processors.py``), and the
image path works for every family.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

IMAGE_PLACEHOLDER = "<image>"
"""Marks where the next image of a sample goes in a prompt string."""

VIDEO_PLACEHOLDER = "<video>"
"""Marks where the next video (a list of frames) of a sample goes in a prompt string."""

_PLACEHOLDER_RE = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")

Message = Mapping[str, Any]
Visual = Image.Image | Sequence[Image.Image]
"""An image, or a video given as its (already sampled) frames."""


def sample_frames(frames: Sequence[Any], num_frames: int) -> list[Any]:
    """Pick ``num_frames`` frames spread uniformly over a clip.

    Takes the middle frame of each of ``num_frames`` equal segments (the TSN-style sampling most
    video reward models use), so the first and last frames of a short clip are not over-weighted.

    Args:
        frames: All frames of the clip (PIL images, arrays, anything indexable).
        num_frames: How many to keep; clips with fewer frames are returned whole.

    Returns:
        The chosen frames, in temporal order.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    n = len(frames)
    if n <= num_frames:
        return list(frames)
    return [frames[int((i + 0.5) * n / num_frames)] for i in range(num_frames)]


def prompt_to_messages(prompt: str, visuals: Sequence[Visual] = ()) -> list[dict[str, Any]]:
    """Split a prompt with ``<image>``/``<video>`` placeholders into one user turn.

    Args:
        prompt: Text with one placeholder per entry of ``visuals``.
        visuals: The sample's images and videos, in placeholder order; only used to check counts
            and to expand each video into one image item per frame.

    Returns:
        A one-message conversation with ``{"type": "image"}`` and ``{"type": "text"}`` items.

    Raises:
        ValueError: If placeholders and visuals disagree in number or kind.
    """
    content: list[dict[str, Any]] = []
    visual_index = 0
    for piece in _PLACEHOLDER_RE.split(prompt):
        if piece in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            if visual_index >= len(visuals):
                raise ValueError(f"Prompt has more placeholders than the {len(visuals)} visuals given: {prompt!r}")
            visual = visuals[visual_index]
            is_video = not isinstance(visual, Image.Image)
            if is_video != (piece == VIDEO_PLACEHOLDER):
                kind = "a list of frames" if is_video else "an image"
                raise ValueError(f"Placeholder {piece} number {visual_index + 1} was given {kind}: {prompt!r}")
            content.append({"type": "video"} if is_video else {"type": "image"})
            visual_index += 1
        elif piece:
            content.append({"type": "text", "text": piece})
    if visual_index != len(visuals):
        raise ValueError(f"Prompt has {visual_index} placeholders but {len(visuals)} visuals were given: {prompt!r}")
    return [{"role": "user", "content": content}]


def _expand_videos(messages: Sequence[Message], visuals: Sequence[Visual]) -> tuple[list[dict], list[Image.Image]]:
    """Replace each video item by one image item per frame and flatten the visuals to images."""
    expanded: list[dict] = []
    images: list[Image.Image] = []
    visual_iter = iter(visuals)
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            expanded.append(dict(message))
            continue
        items: list[dict] = []
        for item in content:
            kind = item.get("type")
            if kind in ("image", "video"):
                visual = next(visual_iter, None)
                if visual is None:
                    raise ValueError("A conversation has more image/video items than visuals were given.")
                if kind == "video":
                    if isinstance(visual, Image.Image):
                        raise ValueError("A video item was given a single image; pass its frames as a list.")
                    items += [{"type": "image"}] * len(visual)
                    images += list(visual)
                else:
                    if not isinstance(visual, Image.Image):
                        raise ValueError("An image item was given a list; use a video item for frames.")
                    items.append({"type": "image"})
                    images.append(visual)
            else:
                items.append(dict(item))
        expanded.append({**message, "content": items})
    if next(visual_iter, None) is not None:
        raise ValueError("More visuals were given than image/video items in the conversation.")
    return expanded, images


def encode(
    processor: ProcessorMixin,
    samples: Sequence[str | Sequence[Message]],
    visuals: Sequence[Sequence[Visual]],
    *,
    answers: Sequence[str] | None = None,
    max_length: int | None = None,
) -> BatchFeature:
    """Build a left-padded batch of model inputs from prompts (or conversations) and images.

    Args:
        processor: The backbone's multimodal processor (its chat template renders the turns).
        samples: One prompt string (with ``<image>``/``<video>`` placeholders) or conversation per sample.
        visuals: Per sample, its images and videos (a video is a list of frames, see :func:`sample_frames`).
        answers: Optional target text per sample (``"yes"``, or ``"yes. The colours match ..."``).
            Appended after the generation prompt, followed by the tokenizer's end-of-turn (EOS) token,
            and returned as ``labels`` (-100 elsewhere) for teacher forcing. Labels are aligned with
            ``input_ids`` (transformers convention: logits at position t predict labels at t+1).
            Without answers the sequence ends at the generation prompt, where the reward is read.
        max_length: Raise if a sequence is longer (image tokens included); truncating would cut
            image tokens and break the model's image/token alignment, so there is no truncation.

    Returns:
        The processor output (``input_ids``, ``attention_mask``, pixel inputs, and for Qwen families
        ``mm_token_type_ids``/``image_grid_thw``), plus ``labels`` when ``answers`` is given.

    Raises:
        ValueError: On placeholder/visual mismatches, a sequence over ``max_length``, or an answer
            whose tokens do not line up with the end of the sequence.
    """
    if len(samples) != len(visuals):
        raise ValueError(f"Got {len(samples)} samples but {len(visuals)} visual lists.")
    if answers is not None and len(answers) != len(samples):
        raise ValueError(f"Got {len(samples)} samples but {len(answers)} answers.")
    tokenizer = processor.tokenizer
    if tokenizer.padding_side != "left":
        # The reward is read at position -1; right padding would put a pad token there.
        raise ValueError(f"The tokenizer pads on the {tokenizer.padding_side}; rewarddance needs left padding.")

    conversations: list[list[dict]] = []
    images: list[list[Image.Image]] = []
    for sample, sample_visuals in zip(samples, visuals):
        messages = prompt_to_messages(sample, sample_visuals) if isinstance(sample, str) else sample
        messages, sample_images = _expand_videos(messages, sample_visuals)
        conversations.append(messages)
        images.append(sample_images)

    texts = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    answer_ids: list[list[int]] = []
    if answers is not None:
        eos = tokenizer.eos_token or ""
        answer_ids = [tokenizer.encode(a + eos, add_special_tokens=False) for a in answers]
        texts = [t + a + eos for t, a in zip(texts, answers)]

    # Every family's processor takes one flat image list and assigns images to placeholders in
    # order, which also covers samples without images in a mixed batch.
    flat_images = [im for sample_images in images for im in sample_images]
    batch = processor(
        text=texts,
        images=flat_images or None,
        padding=True,
        return_tensors="pt",
    )
    if max_length is not None and batch["input_ids"].shape[1] > max_length:
        raise ValueError(f"Longest sequence has {batch['input_ids'].shape[1]} tokens (> max_length={max_length}).")

    if answers is not None:
        labels = torch.full_like(batch["input_ids"], -100)
        for i, ids in enumerate(answer_ids):
            tail = batch["input_ids"][i, -len(ids) :].tolist()
            if tail != ids:
                # Byte-level BPE can merge across the prompt/answer boundary; then "answer tokens"
                # are ill-defined and the loss would train the wrong targets.
                raise ValueError(
                    f"Answer {answers[i]!r} does not tokenize on its own at the end of sample {i} "
                    f"(expected {ids}, found {tail}); start the answer on a token boundary."
                )
            labels[i, -len(ids) :] = torch.tensor(ids)
        batch["labels"] = labels
    return batch


_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def encode_images(processor: ProcessorMixin, images: Sequence[Image.Image]) -> BatchFeature:
    """The pixel inputs :func:`encode` would make for ``images``, without any text.

    Best-of-N needs the candidates' pixels alone: their prompt and reference are encoded once
    with the first candidate (see ``RewardModel.score_candidates``). The images go through the
    processor itself, behind one image placeholder each, so its own image settings apply (a
    family's processor may pass options to its image processor); the placeholder tokens are
    dropped.

    Args:
        processor: The backbone's multimodal processor.
        images: The images, in order.

    Returns:
        ``pixel_values`` and, for Qwen families, ``image_grid_thw`` (one row per image).
    """
    # One short row per image: a single row of all their tokens would pass the tokenizer's length limit and warn.
    texts = [processor.image_token] * len(images)
    batch = processor(text=texts, images=list(images), padding=True, return_tensors="pt")
    return BatchFeature({k: v for k, v in batch.items() if k not in _TEXT_KEYS})
