"""Reward statistics for RL: the reward's spread over a sliding window of iterations."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric


class RewardVariance(Metric):
    """Standard deviation of the reward over a sliding window of the last ``window`` RL iterations.

    The paper reports the reward std within a window of 1,000 RL iterations as a proxy for the
    diversity the policy keeps. Call ``update(rewards)`` once per iteration with that
    iteration's rewards (any shape; a scalar for one logged reward per iteration). The last
    ``window`` iterations are kept as per-iteration ``(n_t, sum_t, sumsq_t)`` in a ring buffer.

    * ``over="samples"`` (default): the std of every individual reward in the window,
      ``N = sum n_t``, ``mean = sum sum_t / N``,
      ``std = sqrt((sum sumsq_t - N mean^2) / (N - ddof))``.
    * ``over="iterations"``: the std of the per-iteration mean rewards ``m_t = sum_t / n_t`` over
      the window (how much the reward curve moves). The paper does not say which it means; with
      one reward per iteration the two coincide.

    ``ddof = 1`` (unbiased) by default. Sums are float64; the cancellation error in
    ``sumsq - N mean^2`` is about ``1e-16 * mean^2 / var`` relative, negligible for rewards in
    [0, 1]. Under DDP the per-iteration sums add across ranks (each iteration then pools all
    ranks' rewards), which assumes every rank calls ``update`` once per iteration, as in
    synchronous RL; the iteration counter is reduced with ``max``.

    Args:
        window: Number of most recent iterations kept.
        over: ``"samples"`` or ``"iterations"``.
        unbiased: Divide by ``N - 1`` instead of ``N``.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns a scalar float64 tensor (NaN with fewer than ``1 + ddof`` values).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    counts: Tensor
    sums: Tensor
    sumsqs: Tensor
    step: Tensor

    def __init__(
        self,
        window: int = 1000,
        over: Literal["samples", "iterations"] = "samples",
        unbiased: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if over not in ("samples", "iterations"):
            raise ValueError(f"over must be 'samples' or 'iterations', got {over!r}")
        self.window = int(window)
        self.over = over
        self.ddof = 1 if unbiased else 0
        for name in ("counts", "sums", "sumsqs"):
            self.add_state(name, default=torch.zeros(self.window, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("step", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="max")

    def update(self, rewards: Tensor | float) -> None:
        """Record one RL iteration's rewards (overwrites the iteration ``window`` steps back)."""
        r = torch.as_tensor(rewards).detach().reshape(-1).to(device=self.sums.device, dtype=torch.float64)
        slot = torch.arange(self.window, device=self.sums.device) == (self.step % self.window)
        self.counts = torch.where(
            slot, torch.tensor(float(r.numel()), dtype=torch.float64, device=r.device), self.counts
        )
        self.sums = torch.where(slot, r.sum(), self.sums)
        self.sumsqs = torch.where(slot, (r * r).sum(), self.sumsqs)
        self.step = self.step + 1

    def compute(self) -> Tensor:
        """Return the windowed reward std."""
        if self.over == "samples":
            n, s, ss = self.counts.sum(), self.sums.sum(), self.sumsqs.sum()
        else:
            filled = self.counts > 0
            means = self.sums[filled] / self.counts[filled]
            n = filled.sum().double()
            s, ss = means.sum(), (means * means).sum()
        if n <= self.ddof:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.sums.device)
        var = (ss - s * s / n) / (n - self.ddof)
        return var.clamp_min(0).sqrt()
