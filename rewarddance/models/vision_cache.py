"""A cache of a frozen vision tower's per-image features, kept across training steps.

With ``freeze_vision`` the vision encoder's output for an image never changes, yet every step
recomputes it for every image of the batch, and a fine-tuning run sees each image many times (the
quickstart: 8 epochs of its pairs, each image in both orders of its pair). The cache keeps the
encoder's output per image (keyed by a digest of the image's pixels and patch grid) and computes
only the images it has not seen. What stays trainable (Qwen's merger, the projector) runs on the
cached features every step as before, with gradients.

A missing image is encoded alone, never batched with others, so its features are a function of
the image only: a run gives the same numbers whatever its batches held, whether the cache was warm
or empty (a resumed run starts empty), which keeps resume exact. They can differ from an uncached
run's batched encoding in the last bits (matrix products of another shape), so switching the cache
on or off is another numerical path, like another thread count.

Supported: Qwen2-VL (``model_type`` ``qwen2_vl``), the family of the bundled shapes backbones, whose
encoder attends within each image (``cu_seqlens``) and returns the pre-merger states as
``last_hidden_state``. Qwen2.5-VL permutes patches into windows across the merger and Qwen3-VL adds
deepstack features; they are refused rather than cached wrongly.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from rewarddance.models.lora import unwrap_peft

CACHEABLE_MODEL_TYPES = ("qwen2_vl",)


class VisionFeatureCache:
    """Replaces the ``forward`` of one frozen Qwen2-VL vision tower with a per-image cached one.

    Args:
        visual: The model's vision tower (``Qwen2VisionTransformerPretrainedModel``).
        max_bytes: Most bytes of features kept; the least recently used images go first beyond it.
    """

    def __init__(self, visual: nn.Module, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.visual = visual
        self.max_bytes = max_bytes
        self.bytes = 0
        self.encode = visual.forward  # the tower's own forward, bound before it is replaced
        self.features: OrderedDict[bytes, Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.enabled = True
        """False: every call runs the tower's own forward (benchmarks/vision_cache.py compares both)."""
        visual.forward = self.forward

    def forward(self, hidden_states: Tensor, grid_thw: Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        """The tower's forward: cached pre-merger states per image, the merger run on them."""
        if not self.enabled:
            return self.encode(hidden_states, grid_thw, **kwargs)
        patches_per_image = grid_thw.prod(-1).tolist()
        states = [
            self.image_features(pixels, grid, **kwargs)
            for pixels, grid in zip(hidden_states.split(patches_per_image), grid_thw)
        ]
        last_hidden_state = torch.cat(states)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state, pooler_output=self.visual.merger(last_hidden_state)
        )

    def image_features(self, pixels: Tensor, grid: Tensor, **kwargs: Any) -> Tensor:
        key = self.key(pixels, grid)
        cached = self.features.get(key)
        if cached is not None:
            self.hits += 1
            self.features.move_to_end(key)
            return cached
        self.misses += 1
        with torch.no_grad():
            cached = self.encode(pixels, grid[None], **kwargs).last_hidden_state
        self.features[key] = cached
        self.bytes += cached.numel() * cached.element_size()
        while self.bytes > self.max_bytes and len(self.features) > 1:
            _, evicted = self.features.popitem(last=False)
            self.bytes -= evicted.numel() * evicted.element_size()
        return cached

    @staticmethod
    def key(pixels: Tensor, grid: Tensor) -> bytes:
        # As raw bytes: numpy has no bfloat16.
        digest = hashlib.sha256(pixels.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        digest.update(f"{pixels.dtype}|{tuple(pixels.shape)}|{grid.tolist()}".encode())
        return digest.digest()

    def stats(self) -> dict[str, int]:
        """Images served from the cache, images encoded, images held and their bytes."""
        return {"hits": self.hits, "misses": self.misses, "held": len(self.features), "bytes": self.bytes}


def install_vision_cache(model: nn.Module, max_mb: float) -> VisionFeatureCache:
    """Cache the per-image features of ``model``'s frozen vision tower (see the module docstring).

    Args:
        model: A loaded transformers VLM, or its PeftModel (LoRA leaves the vision tower alone).
        max_mb: Most megabytes (2**20 bytes) of features kept, on the model's device. An image costs
            its patch count times the tower's width times the element size: 16 KiB for the bundled
            shapes backbones (64 patches x 64 x fp32).

    Returns:
        The installed cache (its ``stats()`` count hits and misses).

    Raises:
        ValueError: If the family is not supported, or the vision tower has a trainable parameter.
    """
    model = unwrap_peft(model)
    model_type = model.config.model_type
    if model_type not in CACHEABLE_MODEL_TYPES:
        raise ValueError(
            f"the vision-feature cache supports model_type {', '.join(CACHEABLE_MODEL_TYPES)}, not {model_type!r}"
        )
    visual = next(module for name, module in model.named_modules() if name.split(".")[-1] == "visual")
    trainable = [name for name, p in visual.named_parameters() if p.requires_grad and not name.startswith("merger.")]
    if trainable:
        raise ValueError(
            f"the vision-feature cache needs a frozen vision tower (freeze_vision: true); trainable: "
            f"{', '.join(trainable[:3])}"
        )
    return VisionFeatureCache(visual, int(max_mb * 2**20))
