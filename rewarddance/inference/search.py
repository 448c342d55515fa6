r"""Inference-time scaling by search over paths (RewardDance, "inference-time scaling"; Ma et al. 2025,
"Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps", Sec. 3.2).

``N`` trajectories are denoised to the first branch step. At each branch step ``s`` every kept path is re-noised
``M`` times back to step ``s - r`` (fresh noise: the paths spread out), each copy is denoised forward to the next
branch step (or the end), the verifier scores the ``N M`` candidates there and the best ``N`` are kept:

.. code-block:: text

    x ~ N(0, I)  [N]      -- denoise 0 -> s_1 -->  paths [N]
    for s_i, s_{i+1}:     paths --repeat M--> renoise s_i -> s_i - r --> denoise -> s_{i+1} --> verifier --> top N
    return paths sorted by their last verifier score (best first)

In Ma et al.'s notation the noise goes up by :math:`\Delta f` (``r`` steps here) and the ODE comes down by
:math:`\Delta b` (``r + s_{i+1} - s_i`` steps). With ``keep_parents`` the un-renoised continuation of each path
competes too, so a deterministic verifier's best score can never drop. The paper uses the pointwise generative
RM as verifier (no reference image needed, faster); any ``latents -> scores`` callable works, e.g. decoding
:math:`\hat x_0` and scoring it. Compute is reported as denoiser steps x samples (``nfe``) for scaling plots.

Everything is generic over two callables, so the toy 1-D tests and real generators share the code; for a
diffusers generator use ``adapter.denoise`` / ``adapter.renoise`` (:mod:`rewarddance.models.adapters`) bound to a
context, with a first-order scheduler.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rewarddance.models.seeding import RandomSource, as_generator

Denoise = Callable[[Tensor, int, int], Tensor]
"""``denoise(latents, from_step, to_step) -> latents`` runs the sampler forward (``from_step < to_step``)."""

Renoise = Callable[[Tensor, int, int, "torch.Generator | None"], Tensor]
"""``renoise(latents, from_step, to_step, generator) -> latents`` adds noise back to the earlier ``to_step``."""

Verifier = Callable[[Tensor, int], Tensor]
"""``verifier(latents, step) -> [B]`` scores, higher is better."""


@dataclass
class PathSearchResult:
    """Outcome of :func:`search_over_paths`.

    Attributes:
        latents: ``[N, ...]`` final samples, best first.
        scores: ``[N]`` their verifier scores at the last step.
        nfe: Denoiser steps x samples spent (multiply by 2 for CFG if the denoiser runs twice per step).
        best_scores: Best verifier score after each branching round.
        chosen: ``[N]`` where each returned sample was in the verifier's last call (its candidates in order),
            so what that call produced besides the scores (a rationale per candidate) can follow the samples.
    """

    latents: Tensor
    scores: Tensor
    nfe: int
    best_scores: list[float] = field(default_factory=list)
    chosen: Tensor | None = None


def _top(scores: Tensor, k: int) -> Tensor:
    # Stable: equal scores keep candidate order, so results do not depend on the sort implementation.
    return torch.sort(scores, descending=True, stable=True).indices[:k]


def search_over_paths(
    latents: Tensor,
    *,
    denoise: Denoise,
    renoise: Renoise,
    verifier: Verifier,
    num_steps: int,
    branch_steps: Sequence[int],
    num_branches: int,
    renoise_steps: int,
    keep: int | None = None,
    keep_parents: bool = False,
    generator: RandomSource = None,
) -> PathSearchResult:
    """Search over denoising paths with re-noising, branching and verifier pruning.

    Args:
        latents: ``[N, ...]`` initial noise at step 0 (``N`` paths).
        denoise: See :data:`Denoise`.
        renoise: See :data:`Renoise`.
        verifier: See :data:`Verifier` (called at each branch round's end step and thus at ``num_steps``).
        num_steps: Steps of the full schedule (the final sample is at step ``num_steps``).
        branch_steps: Strictly increasing steps at which paths branch, each in ``[renoise_steps, num_steps - 1]``.
        num_branches: ``M`` re-noised copies per path.
        renoise_steps: ``r``: how many steps back each copy is re-noised (>= 1).
        keep: Paths kept after each round (default ``N``).
        keep_parents: Let each path's un-renoised continuation compete with its copies (elitism).
        generator: Seed or generator passed to ``renoise``.

    Returns:
        The :class:`PathSearchResult` (with no ``branch_steps``, plain sampling of ``N`` paths).
    """
    steps = list(branch_steps)
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"branch_steps must be strictly increasing, got {steps}")
    if renoise_steps < 1 or num_branches < 1:
        raise ValueError("renoise_steps and num_branches must be >= 1")
    if steps and not (steps[0] >= renoise_steps and steps[-1] < num_steps):
        raise ValueError(f"branch_steps must lie in [{renoise_steps}, {num_steps - 1}], got {steps}")
    keep = latents.shape[0] if keep is None else keep
    rng = as_generator(generator)
    nfe = 0

    def run(x: Tensor, a: int, b: int) -> Tensor:
        nonlocal nfe
        nfe += x.shape[0] * (b - a)
        return denoise(x, a, b) if b > a else x

    paths = run(latents, 0, steps[0] if steps else num_steps)
    best_scores: list[float] = []
    scores: Tensor | None = None
    chosen: Tensor | None = None
    for index, step in enumerate(steps):
        end = steps[index + 1] if index + 1 < len(steps) else num_steps
        copies = paths.repeat_interleave(num_branches, dim=0)
        candidates = run(renoise(copies, step, step - renoise_steps, rng), step - renoise_steps, end)
        if keep_parents:
            candidates = torch.cat([run(paths, step, end), candidates])
        candidate_scores = torch.as_tensor(verifier(candidates, end)).reshape(-1)
        chosen = _top(candidate_scores, min(keep, len(candidate_scores)))
        paths, scores = candidates[chosen.to(candidates.device)], candidate_scores[chosen]
        best_scores.append(float(scores[0]))
    if scores is None:
        scores = torch.as_tensor(verifier(paths, num_steps)).reshape(-1)
        chosen = _top(scores, len(scores))
        paths, scores = paths[chosen.to(paths.device)], scores[chosen]
    return PathSearchResult(latents=paths, scores=scores, nfe=nfe, best_scores=best_scores, chosen=chosen)
