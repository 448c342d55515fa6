"""Endless (prompt, image) pairs of the shapes world, rendered on the fly, for pretraining generators.

Each item is a GenEval-style prompt (tags drawn uniformly) and a render of a scene that satisfies it, drawn
from the same distribution as the reward-model shards of the split (held-out colour-shape and relation
combinations excluded outside test-ood). Rendering costs ~2 ms per 64 px image, so a generator never sees
the same image twice and no shards need building.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rewarddance.shapes.prompts import TAGS, sample_prompt, sample_scene
from rewarddance.shapes.render import RenderOptions, render
from rewarddance.shapes.splits import SPLIT_IDS

TextImage = dict[str, Any]
"""``{"prompt": str, "image": uint8 tensor [3, H, W], "metadata": GenEval metadata}``."""


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class TextImageStream(IterableDataset):
    """Endless prompt-image pairs; every rank and DataLoader worker draws its own stream.

    Args:
        split: Prompt and scene distribution (``train`` excludes the held-out combinations).
        canvas: Image side in pixels.
        tags: GenEval tags to draw prompts from, uniformly.
        seed: Base seed; mixed with the split, the rank and the worker id.
        options: Render options. The default draws clean renders (no pixel noise, the plain background):
            a generator should learn the shapes, not to reproduce sensor noise.
    """

    def __init__(
        self,
        split: str = "train",
        canvas: int = 64,
        tags: Sequence[str] = TAGS,
        seed: int = 0,
        options: RenderOptions | None = None,
    ) -> None:
        unknown = sorted(set(tags) - set(TAGS))
        if unknown:
            raise ValueError(f"unknown tags {unknown}; choose from {TAGS}")
        self.split, self.canvas, self.tags, self.seed = split, canvas, tuple(tags), seed
        self.options = options or RenderOptions(noise=0.0, background_variation=False)

    def __iter__(self) -> Iterator[TextImage]:
        worker = get_worker_info()
        stream_id = [self.seed, SPLIT_IDS[self.split], _rank(), worker.id if worker else 0]
        rng = np.random.default_rng(np.random.SeedSequence(stream_id))
        while True:
            meta = sample_prompt(self.tags[rng.integers(len(self.tags))], rng, self.split)
            scene = sample_scene(meta, rng, split=self.split, canvas=self.canvas)
            pixels = np.array(render(scene, rng, self.options))  # a writable copy for torch
            yield {"prompt": meta["prompt"], "image": torch.from_numpy(pixels).permute(2, 0, 1), "metadata": meta}


def collate_text_images(items: list[TextImage]) -> dict[str, Any]:
    """Stack images (uint8 ``[B, 3, H, W]``); prompts and metadata stay lists."""
    return {
        "images": torch.stack([i["image"] for i in items]),
        "prompts": [i["prompt"] for i in items],
        "metadata": [i["metadata"] for i in items],
    }


class TextImageDataModule(L.LightningDataModule):
    """Training batches of :class:`TextImageStream` (an endless stream: bound the run with ``max_steps``).

    Args:
        batch_size: Pairs per batch (per rank).
        split: See :class:`TextImageStream`.
        canvas: Image side in pixels.
        tags: GenEval tags to draw from.
        seed: Base seed.
        noise: Largest pixel-noise standard deviation of the renders (0-255 scale).
        background_variation: Random background tint and gradient instead of the plain grey.
        num_workers: DataLoader worker processes (0 renders in the training process).
    """

    def __init__(
        self,
        batch_size: int = 32,
        split: str = "train",
        canvas: int = 64,
        tags: Sequence[str] = TAGS,
        seed: int = 0,
        noise: float = 0.0,
        background_variation: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        stream = TextImageStream(
            h.split, h.canvas, h.tags, h.seed, RenderOptions(noise=h.noise, background_variation=h.background_variation)
        )
        return DataLoader(stream, batch_size=h.batch_size, collate_fn=collate_text_images, num_workers=h.num_workers)
