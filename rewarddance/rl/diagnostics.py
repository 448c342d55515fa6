r"""Reward-hacking diagnostics: reward vs oracle trends, and sample diversity per prompt.

The reward model is a proxy. In the shapes world the oracle (the renderer's ground truth) is the real objective,
so hacking is visible: the reward keeps rising while the oracle score falls or stalls. The paper's own measure, the
reward std in a sliding window, is :class:`rewarddance.metrics.RewardVariance`; a collapse of diversity per prompt
(:func:`sample_diversity`) is the other symptom (the policy settles on one high-reward mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F


def trend_slope(values: Sequence[float] | Tensor, steps: Sequence[float] | Tensor | None = None) -> float:
    r"""Least-squares slope of ``values`` against ``steps``: :math:`\sum (t-\bar t)(y-\bar y) / \sum (t-\bar t)^2`.

    Args:
        values: The series.
        steps: Their x positions (None: 0, 1, 2, ...).

    Returns:
        The slope (units of ``values`` per step); NaN with fewer than two distinct steps.
    """
    y = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    t = torch.arange(len(y), dtype=torch.float64) if steps is None else torch.as_tensor(steps, dtype=torch.float64)
    if t.shape != y.shape:
        raise ValueError(f"{len(t)} steps for {len(y)} values")
    dt = t - t.mean()
    denominator = (dt * dt).sum()
    if len(y) < 2 or denominator == 0:
        return float("nan")
    return float((dt * (y - y.mean())).sum() / denominator)


@dataclass
class HackingCheck:
    """The verdict of :func:`detect_reward_hacking` and the numbers behind it.

    Attributes:
        hacking: True when the reward rose and the oracle did not.
        reward_gain: Fitted reward change over the window (slope x window span).
        oracle_gain: Fitted oracle change over the same window.
        reward_points: Reward points inside the window.
        oracle_points: Oracle points inside the window.
    """

    hacking: bool
    reward_gain: float
    oracle_gain: float
    reward_points: int
    oracle_points: int


def _window(steps: Sequence[float] | Tensor, values: Sequence[float] | Tensor, start: float) -> tuple[Tensor, Tensor]:
    t = torch.as_tensor(steps, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.shape != y.shape:
        raise ValueError(f"{len(t)} steps for {len(y)} values")
    keep = (t >= start) & ~torch.isnan(y)
    return t[keep], y[keep]


def detect_reward_hacking(
    reward_steps: Sequence[float] | Tensor,
    rewards: Sequence[float] | Tensor,
    oracle_steps: Sequence[float] | Tensor,
    oracle_scores: Sequence[float] | Tensor,
    *,
    window: float,
    min_reward_gain: float = 0.02,
    max_oracle_gain: float = 0.0,
    min_points: int = 3,
) -> HackingCheck:
    r"""Flag reward hacking: over the last ``window`` steps the reward trends up while the oracle trends down or flat.

    Rule (decided here; the issue asks for "reward keeps rising while the oracle falls or stalls"): fit a
    least-squares line to each series over the steps :math:`[t_{last} - \text{window}, t_{last}]`
    (:math:`t_{last}` = the latest step of either series) and convert slopes into gains over the window,
    :math:`\Delta = \text{slope} \times \text{window}`. Then

    .. math:: \text{hacking} \iff \Delta_{reward} \ge \text{min\_reward\_gain} \;\wedge\;
              \Delta_{oracle} \le \text{max\_oracle\_gain}.

    Gains rather than raw slopes keep the thresholds in the scores' own units (both in [0, 1] here) whatever
    the logging interval. ``max_oracle_gain = 0`` means "did not improve"; raise it slightly (e.g. 0.01) to also
    call a noisy near-flat oracle a stall. Oracle scores are usually logged less often than rewards: each series
    uses its own steps. With fewer than ``min_points`` points in either series, the verdict is False.

    Args:
        reward_steps: Steps of the reward series (e.g. the logged mean reward per iteration).
        rewards: Reward values.
        oracle_steps: Steps at which the oracle was evaluated.
        oracle_scores: Oracle scores (NaNs are skipped).
        window: Window length in steps.
        min_reward_gain: Least reward rise that counts as "up".
        max_oracle_gain: Largest oracle change that still counts as "down or flat".
        min_points: Points needed in each series.

    Returns:
        The :class:`HackingCheck`.
    """
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
    last_candidates = [
        float(torch.as_tensor(s, dtype=torch.float64).max()) for s in (reward_steps, oracle_steps) if len(s)
    ]
    if not last_candidates:
        return HackingCheck(False, float("nan"), float("nan"), 0, 0)
    start = max(last_candidates) - window
    rt, ry = _window(reward_steps, rewards, start)
    ot, oy = _window(oracle_steps, oracle_scores, start)
    reward_gain = trend_slope(ry, rt) * window
    oracle_gain = trend_slope(oy, ot) * window
    enough = len(ry) >= min_points and len(oy) >= min_points
    hacking = enough and reward_gain >= min_reward_gain and oracle_gain <= max_oracle_gain
    return HackingCheck(bool(hacking), reward_gain, oracle_gain, len(ry), len(oy))


def sample_diversity(samples: Tensor, metric: Literal["l2", "cosine"] = "l2") -> Tensor:
    r"""Diversity of the samples of each prompt: mean over pairs :math:`i < j` of a distance between flattened samples.

    - ``"l2"``: root-mean-square pixel difference :math:`\|x_i - x_j\|_2 / \sqrt{D}` (``D`` = elements per sample),
      in pixel units (0 = identical, 1 = black vs white for [0, 1] images) whatever the resolution.
    - ``"cosine"``: :math:`1 - \cos(x_i, x_j)`; insensitive to brightness scaling. Centre the pixels first
      (e.g. ``2 x - 1``) if a shared white background should not dominate.

    Computed in float64 (pairs of nearly identical samples would lose the difference in float32).

    Args:
        samples: ``[P, N, ...]``: ``N`` samples (images, videos, latents) for each of ``P`` prompts. For one prompt
            pass ``samples[None]``.
        metric: ``"l2"`` or ``"cosine"``.

    Returns:
        ``[P]`` float32 diversities; NaN where ``N < 2``.
    """
    if samples.ndim < 3:
        raise ValueError(f"samples must be [P, N, ...] (at least 3-D), got shape {tuple(samples.shape)}")
    p, n = samples.shape[:2]
    if n < 2:
        return torch.full((p,), float("nan"))
    flat = samples.reshape(p, n, -1).double()
    i, j = torch.triu_indices(n, n, offset=1, device=samples.device)
    if metric == "l2":
        distance = (flat[:, i] - flat[:, j]).square().mean(dim=-1).sqrt()
    elif metric == "cosine":
        distance = 1 - F.cosine_similarity(flat[:, i], flat[:, j], dim=-1, eps=1e-12)
    else:
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    return distance.mean(dim=1).float()
