"""The shapes world's rewards: a toy colour reward and the pixel oracle, registered by the shapes plug-in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from rewarddance.errors import UsageError
from rewarddance.rl.rewards import Reward
from rewarddance.shapes.scene import COLOR_NAMES, COLORS

__all__ = ["ShapesColorReward", "ShapesOracleReward"]


class ShapesColorReward(Reward):
    r"""**Toy** reward: the share of the image in each colour the prompt names (differentiable, from pixels).

    For a prompt naming colours :math:`c_1..c_m` (``metadata["include"][*]["color"]``), with a soft colour match
    :math:`k_c(p) = \exp(-\lVert p - c\rVert^2 / 2\sigma^2)` per pixel ``p`` (RGB in [0, 1]) and the covered share
    :math:`a_c = \mathrm{mean}_p\,k_c(p)`,

    .. math:: r = \frac1m \sum_{j} \big(1 - e^{-a_{c_j} / a_0}\big),

    saturating once a colour covers about ``coverage`` :math:`a_0` of the image. A prompt without colours scores
    the share of pixels close to *any* palette colour (a "draw something" signal). Videos use all frames.

    It ignores shapes, counts and positions: maximising it soon hacks the shapes oracle (fill the canvas with the
    colour), which is what it is for (the hacking diagnostics, tests, a metadata-aware example).

    Args:
        sigma: Colour match width in RGB units of [0, 1] (the palette's closest pair is ~0.29 apart).
        coverage: Covered share :math:`a_0` at which a colour's term reaches 63% of its maximum.
    """

    def __init__(self, sigma: float = 0.15, coverage: float = 0.05) -> None:
        if sigma <= 0 or coverage <= 0:
            raise UsageError(f"shapes-color reward: sigma and coverage must be > 0, got {sigma}, {coverage}")
        self.sigma, self.coverage = sigma, coverage
        self.palette = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32) / 255.0

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        if len(metadata) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(metadata)} metadata entries")
        channels_dim = images.ndim - 3  # [B, 3, H, W] or [B, T, 3, H, W]
        pixels = images.float().movedim(channels_dim, -1).reshape(images.shape[0], -1, 3)  # [B, P, 3]
        palette = self.palette.to(pixels.device)
        distance = (pixels.unsqueeze(2) - palette).square().sum(-1)  # [B, P, colours]
        match = torch.exp(-distance / (2 * self.sigma**2))
        wanted = torch.zeros(len(metadata), len(COLOR_NAMES), device=pixels.device)
        for i, meta in enumerate(metadata):
            for entry in meta.get("include", []):
                if entry.get("color") in COLORS:
                    wanted[i, COLOR_NAMES.index(entry["color"])] = 1.0
        per_colour = 1 - torch.exp(-match.mean(1) / self.coverage)  # [B, colours]
        any_colour = 1 - torch.exp(-match.amax(-1).mean(1) / self.coverage)  # [B]
        named = (per_colour * wanted).sum(1) / wanted.sum(1).clamp_min(1)
        return torch.where(wanted.sum(1) > 0, named, any_colour)

    def __repr__(self) -> str:
        return f"ShapesColorReward(sigma={self.sigma}, coverage={self.coverage})"


class ShapesOracleReward(Reward):
    """The shapes world's pixel oracle as a reward: GenEval's verdict, or its per-part score, of each image.

    The ground truth the learned reward models are measured against, so RL against it is the ceiling of what a
    reward model could give in a run's budget. Not differentiable (it detects blobs in the pixels): GRPO and
    best-of-N only; ReFL refuses it.

    Args:
        score: ``overall`` (1 iff the image matches the prompt, GenEval's all-or-nothing score) or ``mean`` (the
            mean of the constrained parts: colours, count, shape, position; a denser signal).
    """

    differentiable = False

    def __init__(self, score: Literal["overall", "mean"] = "mean") -> None:
        if score not in ("overall", "mean"):
            raise UsageError(f"shapes-oracle reward: score must be 'overall' or 'mean', got {score!r}")
        self.score = score

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        from rewarddance.shapes.oracle import evaluate_parts  # numpy/scipy detection, loaded on use

        if images.ndim != 4:
            raise ValueError(f"shapes-oracle judges images [B, 3, H, W], got shape {tuple(images.shape)}")
        if len(metadata) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(metadata)} metadata entries")
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        scores = [evaluate_parts(image.numpy(), dict(meta))[self.score] for image, meta in zip(pixels, metadata)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def __repr__(self) -> str:
        return f"ShapesOracleReward(score={self.score!r})"
