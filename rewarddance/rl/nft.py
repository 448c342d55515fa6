r"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): online RL on the forward process, likelihood-free.

One update, for a batch of prompts:

1. sample ``group_size`` images per prompt with the current policy and the ordinary deterministic sampler (any
   sampler works: nothing of the trajectory is kept), keep the clean latents :math:`x_0` and score them;
2. turn each reward into an optimality probability :math:`r \in [0, 1]` (:func:`optimality_probability`:
   the group-normalised advantage, clipped and mapped linearly; equal rewards give 0.5);
3. noise each :math:`x_0` to a random step with the family's exact forward process and predict it back, once with
   the policy as it was when sampling (:math:`x_0^{old}`, no gradient) and once with gradient
   (:math:`x_0^\theta`); minimise :func:`nft_loss`, the denoising loss of an implicit positive policy weighted by
   :math:`r` plus that of an implicit negative policy weighted by :math:`1 - r`.

The gradient of :func:`nft_loss` at :math:`\theta = \theta_{old}` is
:math:`2\beta(2r - 1)(x_0^{old} - x_0)\,\partial x_0^\theta`: the plain denoising loss's, scaled by
:math:`\beta(2r - 1)`. Samples better than their group's mean are fitted, worse ones pushed away, samples at the
mean are ignored. Written in :math:`x_0` (as :func:`rewarddance.rl.refl.anchor_loss`), one loss serves epsilon,
v-prediction and flow-velocity denoisers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch
from torch import Tensor

from rewarddance.rl.grpo import group_advantages

__all__ = ["nft_chunks", "nft_loss", "optimality_probability"]


def optimality_probability(
    rewards: Tensor,
    groups: int | Sequence[Hashable] | Tensor,
    *,
    adv_clip_max: float = 5.0,
    global_std: bool = False,
) -> Tensor:
    r"""DiffusionNFT's optimality probability :math:`r = \tfrac12 + \tfrac12\,\mathrm{clip}(A / A_{max}, -1, 1)`.

    :math:`A` is the group-normalised advantage (:func:`~rewarddance.rl.grpo.group_advantages`): a group of equal
    rewards gives :math:`r = 0.5` (no gradient), and :math:`r` rises with the reward within a group. The official
    configs divide by ``adv_clip_max = 5``; with std-normalised advantages of small groups (|A| < sqrt(G - 1)) this
    keeps :math:`r` near 0.5, i.e. a small effective step that the learning rate and ``beta`` scale.

    Args:
        rewards: ``[N]`` rewards.
        groups: Group size for contiguous groups, or one label per reward (as :func:`group_advantages`).
        adv_clip_max: :math:`A_{max}` (> 0).
        global_std: Normalise by the batch's std instead of each group's.

    Returns:
        ``[N]`` probabilities in [0, 1], float32 (or wider).
    """
    if adv_clip_max <= 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    advantages = group_advantages(rewards, groups, global_std=global_std)
    return 0.5 + 0.5 * (advantages / adv_clip_max).clamp(-1.0, 1.0)


def nft_loss(
    x0_theta: Tensor,
    x0_old: Tensor,
    x0: Tensor,
    r: Tensor,
    *,
    beta: float = 1.0,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    r"""The DiffusionNFT loss :math:`r\lVert x_0^+ - x_0\rVert^2 + (1 - r)\lVert x_0^- - x_0\rVert^2`.

    The implicit policies are :math:`x_0^+ = (1 - \beta)x_0^{old} + \beta x_0^\theta` and
    :math:`x_0^- = (1 + \beta)x_0^{old} - \beta x_0^\theta`. With :math:`\beta = 1` and :math:`r = 1` this is the plain
    denoising loss :math:`\lVert x_0^\theta - x_0\rVert^2`.

    Args:
        x0_theta: ``[B, ...]`` the current policy's prediction of the clean latents (differentiable).
        x0_old: ``[B, ...]`` the sampling policy's prediction from the same noisy latents (detached here).
        x0: ``[B, ...]`` the sampled clean latents (the targets).
        r: ``[B]`` optimality probabilities (:func:`optimality_probability`).
        beta: Strength of the implicit guidance :math:`\beta > 0` (the paper: 1; 0.1 for some rewards).
        reduction: ``"mean"`` over samples, or ``"none"`` for the per-sample loss; latent elements are averaged.

    Returns:
        The loss, float32.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    old, theta, target = x0_old.detach().float(), x0_theta.float(), x0.detach().float()
    positive = (1.0 - beta) * old + beta * theta
    negative = (1.0 + beta) * old - beta * theta
    dims = tuple(range(1, target.ndim))
    r = r.detach().float().reshape(-1)
    per_sample = r * (positive - target).square().mean(dims) + (1.0 - r) * (negative - target).square().mean(dims)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def nft_chunks(steps: Tensor, chunk_size: int | None = None) -> list[tuple[int, Tensor]]:
    """Split samples by their drawn step, for one denoiser call per chunk (the adapters take one step per call).

    Args:
        steps: ``[N]`` step index per sample.
        chunk_size: Most samples per chunk; None: all samples of a step together.

    Returns:
        ``(step, sample indices)`` pairs in increasing step order, each index tensor sorted.
    """
    chunks = []
    for step in torch.unique(steps).tolist():
        index = torch.nonzero(steps == step).flatten()
        size = len(index) if chunk_size is None else chunk_size
        chunks += [(int(step), part) for part in index.split(size)]
    return chunks
