"""Pairwise preference metrics: accuracy (overall, per category, with and without ties), calibration,
position bias.

Conventions used throughout:

* A pair is ``(first, second)``. The model's output is ``prob_second = P(second is better)`` in
  ``[0, 1]``. The pairwise generative RM answers "is image 2 better than image 1?", so
  ``prob_second = P("yes")``; a pointwise or regressive model gives ``sigmoid(r_2 - r_1)``.
* The target is ``target = 1.0`` (second better), ``0.0`` (first better) or ``0.5`` (tie). Soft
  targets (vote fractions) are thresholded at 0.5: ``> 0.5`` second, ``< 0.5`` first, ``== 0.5`` tie.
* The model's decision is the side of 0.5: ``prob_second > 0.5`` picks the second item,
  ``< 0.5`` the first. A prediction of exactly 0.5 picks neither; unless a metric says otherwise
  it counts as wrong on a non-tie pair (the ImageReward convention, and the conservative one).
* A prediction counts as a *predicted tie* when ``|prob_second - 0.5| <= tie_threshold``. In
  margin terms, ``|sigmoid(r_2 - r_1) - 0.5| <= eps`` is a threshold on ``|r_2 - r_1|``: a sweep
  over one is a sweep over the other.

The ``torchmetrics.Metric`` classes keep only summable states (``dist_reduce_fx="sum"``) except
``TieCalibratedAccuracy`` and ``CalibrationError``, which must see every prediction and keep
concatenated lists; all of them sync under DDP. The plain functions take lists, numpy arrays or
tensors and return Python numbers.

The dict-valued metrics are logged from a LightningModule with
``self.log_dict({f"val/{k}": v for k, v in metric.compute().items()}, sync_dist=False)`` at epoch
end, then ``metric.reset()`` (``compute`` already syncs across processes; ``sync_dist=True`` would
average the already-global values again, harmlessly but needlessly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryCalibrationError
from torchmetrics.utilities import dim_zero_cat

ArrayLike = Tensor | np.ndarray | Sequence[float]

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_float_tensor(x: ArrayLike) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not t.is_floating_point():
        t = t.double()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.reshape(-1)


def _check_probs(name: str, p: Tensor) -> None:
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (no NaN); for scalar rewards pass sigmoid(r2 - r1), not the margin"
        )


def check_pairs(
    prob_second: ArrayLike, target: ArrayLike, validate: bool = True, names: tuple[str, str] = ("prob_second", "target")
) -> tuple[Tensor, Tensor]:
    """Flatten two per-pair inputs to 1-D float tensors on the device of the first, checking sizes and ranges."""
    p = _as_float_tensor(prob_second)
    t = _as_float_tensor(target).to(p.device)
    if p.shape != t.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of elements, got {p.numel()} and {t.numel()}"
        )
    if validate:
        _check_probs(names[0], p)
        if names[1] == "target":
            if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
                raise ValueError("target must be in [0, 1]: 1 = second better, 0 = first better, 0.5 = tie")
        else:
            _check_probs(names[1], t)
    return p, t


def target_class(target: Tensor) -> Tensor:
    """-1 (first better), 0 (tie), +1 (second better)."""
    return torch.sign(target - 0.5).to(torch.int8)


def predicted_class(prob_second: Tensor, tie_threshold: float) -> Tensor:
    """-1 (first), 0 (predicted tie: ``|p - 0.5| <= tie_threshold``), +1 (second).

    An exact 0.5 outside the tie band (only possible with a negative threshold) is 2, "undecided":
    it matches no true class and counts as a non-tie prediction.
    """
    side = torch.sign(prob_second - 0.5).to(torch.int8)
    side = torch.where(side == 0, torch.full_like(side, 2), side)
    return torch.where((prob_second - 0.5).abs() <= tie_threshold, torch.zeros_like(side), side)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float64; NaN when ``den == 0`` (nothing to average)."""
    return num.double() / den.double()


def _cat_state(state: list[Tensor] | Tensor) -> Tensor:
    """A ``cat`` state as one tensor: a list before a DDP sync, already a tensor after it."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.zeros(0, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# pairwise accuracy
# --------------------------------------------------------------------------------------------


class PairwiseAccuracy(Metric):
    """Pairwise preference accuracy, without and with ties.

    With ``c_k`` the true class of pair ``k`` (first / tie / second, from ``target``) and ``ĉ_k`` the
    predicted class (tie when ``|p_k - 0.5| <= tie_threshold``, otherwise the side of 0.5):

    * ``acc`` (what most papers report): ties in the ground truth are excluded,
      ``acc = #{k : c_k != tie, sign(p_k - 0.5) = c_k} / #{k : c_k != tie}``. It ignores
      ``tie_threshold``: only the side of 0.5 matters, and ``p_k = 0.5`` exactly counts as wrong.
    * ``acc_with_ties``: three-class accuracy over all pairs with partial credit,
      ``acc_with_ties = (#{ĉ_k = c_k} + tie_credit * #{exactly one of ĉ_k, c_k is a tie}) / n``.
      ``tie_credit = 0`` is plain three-class accuracy (the accuracy of "Ties Matter",
      Deutsch et al. 2023, used by VideoAlign / VideoGen-RewardBench at a fixed threshold);
      ``tie_credit = 0.5`` is PickScore's convention: a true tie scores 0.5 for any non-tie
      prediction, and a predicted tie scores 0.5 on a non-tie pair.

    Default ``tie_threshold = 0.0``: only an exact 0.5 is a predicted tie, i.e. the model is never
    assumed to abstain. Any positive threshold is a tuned hyperparameter; pick it on a validation
    split with :func:`accuracy_with_and_without_ties` (or :class:`TieCalibratedAccuracy`) and pass
    it here (a negative value, such as the ``-inf`` that calibration returns when predicting no
    ties is best, means that not even an exact 0.5 is a tie). PickScore states its threshold on
    ``|p_0 - p_1| = 2 |p - 0.5|``: halve it.

    All states are integer counts summed across processes (DDP-safe).

    Args:
        tie_threshold: Half-width of the band around 0.5 counted as a predicted tie (< 0.5).
        tie_credit: Credit in ``acc_with_ties`` when exactly one of prediction and target is a tie.
        validate_args: Check shapes and ranges on every update (one host sync per update).
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns a dict of tensors: ``acc``, ``acc_with_ties``, ``n`` (pairs),
    ``n_ties`` (pairs with ``target == 0.5``), ``n_pred_ties`` (predicted ties at ``tie_threshold``).
    Rates over zero pairs are NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    n: Tensor
    n_ties: Tensor
    n_correct: Tensor
    n_exact: Tensor
    n_half: Tensor
    n_pred_ties: Tensor

    def __init__(
        self, tie_threshold: float = 0.0, tie_credit: float = 0.0, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not tie_threshold < 0.5:
            raise ValueError(f"tie_threshold must be < 0.5 (negative: never predict a tie), got {tie_threshold}")
        if not 0.0 <= tie_credit <= 1.0:
            raise ValueError(f"tie_credit must be in [0, 1], got {tie_credit}")
        self.tie_threshold = float(tie_threshold)
        self.tie_credit = float(tie_credit)
        self.validate_args = validate_args
        for name in ("n", "n_ties", "n_correct", "n_exact", "n_half", "n_pred_ties"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prob_second: Tensor, target: Tensor) -> None:
        """Add a batch of pairs.

        Args:
            prob_second: ``P(second is better)``, any shape.
            target: 1 (second better), 0 (first better), 0.5 (tie); same number of elements.
        """
        p, t = check_pairs(prob_second, target, self.validate_args)
        true = target_class(t)
        pred = predicted_class(p, self.tie_threshold)
        side = torch.sign(p - 0.5).to(torch.int8)
        true_tie, pred_tie = true == 0, pred == 0
        self.n += p.numel()
        self.n_ties += true_tie.sum()
        self.n_correct += ((side == true) & ~true_tie).sum()
        self.n_exact += (pred == true).sum()
        self.n_half += (true_tie ^ pred_tie).sum()
        self.n_pred_ties += pred_tie.sum()

    def compute(self) -> dict[str, Tensor]:
        """Return ``acc``, ``acc_with_ties``, ``n``, ``n_ties``, ``n_pred_ties`` (see the class docstring)."""
        return {
            "acc": _ratio(self.n_correct, self.n - self.n_ties),
            "acc_with_ties": (self.n_exact.double() + self.tie_credit * self.n_half.double()) / self.n.double(),
            "n": self.n,
            "n_ties": self.n_ties,
            "n_pred_ties": self.n_pred_ties,
        }


class CategoryAccuracy(Metric):
    """Non-tie pairwise accuracy (``acc`` of :class:`PairwiseAccuracy`) per category.

    ``acc[c] = #{k in c : target_k != 0.5, sign(p_k - 0.5) = sign(target_k - 0.5)} / #{k in c : target_k != 0.5}``.
    Categories are fixed at construction (states are per-category count vectors, summed under
    DDP). A category never seen, or seen only with ties, reports NaN.

    Args:
        categories: The category names, unique.
        unknown: What to do with a category not in ``categories``: ``"error"`` raises a
            ``ValueError`` naming it; ``"other"`` counts it under ``other_name`` (added to the
            categories if absent).
        other_name: The bucket for unknown categories when ``unknown="other"``.
        with_counts: Also return ``"<category>/n"``, the number of non-tie pairs per category.
        validate_args: Check shapes and ranges on every update.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns ``{category: acc}`` (plus ``{category}/n`` with ``with_counts``), in
    the order of ``categories``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(
        self,
        categories: Sequence[str],
        unknown: Literal["error", "other"] = "error",
        other_name: str = "other",
        with_counts: bool = False,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(categories, str):
            raise TypeError("categories must be a sequence of names, not a single string")
        names = [str(c) for c in categories]
        if len(set(names)) != len(names):
            raise ValueError(f"categories must be unique, got {names}")
        if unknown not in ("error", "other"):
            raise ValueError(f"unknown must be 'error' or 'other', got {unknown!r}")
        if unknown == "other" and other_name not in names:
            names.append(other_name)
        if not names:
            raise ValueError("categories must not be empty")
        self.categories = names
        self.unknown = unknown
        self.other_name = other_name
        self.with_counts = with_counts
        self.validate_args = validate_args
        self._index = {c: i for i, c in enumerate(names)}
        self.add_state("correct", default=torch.zeros(len(names), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(names), dtype=torch.long), dist_reduce_fx="sum")

    def _indices(self, categories: Sequence[str]) -> list[int]:
        if self.unknown == "other":
            other = self._index[self.other_name]
            return [self._index.get(c, other) for c in categories]
        missing = sorted({c for c in categories if c not in self._index})
        if missing:
            raise ValueError(f"unknown categories {missing}; known: {self.categories} (or use unknown='other')")
        return [self._index[c] for c in categories]

    def update(self, prob_second: Tensor, target: Tensor, categories: Sequence[str]) -> None:
        """Add a batch of pairs with one category name per pair.

        Args:
            prob_second: ``P(second is better)``, shape ``[B]``.
            target: 1 / 0 / 0.5, shape ``[B]``.
            categories: ``B`` category names.
        """
        p, t = check_pairs(prob_second, target, self.validate_args)
        if isinstance(categories, str):
            raise TypeError("categories must be a sequence of names (one per pair), not a single string")
        if len(categories) != p.numel():
            raise ValueError(f"got {len(categories)} categories for {p.numel()} pairs")
        idx = torch.tensor(self._indices(categories), dtype=torch.long, device=self.total.device)
        true = target_class(t).to(self.total.device)
        side = torch.sign(p - 0.5).to(torch.int8).to(self.total.device)
        keep = true != 0
        k = len(self.categories)
        self.total = self.total + torch.bincount(idx[keep], minlength=k)
        self.correct = self.correct + torch.bincount(idx[keep & (side == true)], minlength=k)

    def compute(self) -> dict[str, Tensor]:
        """Return ``{category: acc}`` (and ``{category}/n`` with ``with_counts``)."""
        acc = _ratio(self.correct, self.total)
        out = {c: acc[i] for i, c in enumerate(self.categories)}
        if self.with_counts:
            out.update({f"{c}/n": self.total[i] for i, c in enumerate(self.categories)})
        return out


# --------------------------------------------------------------------------------------------
# ties: calibrated accuracy
# --------------------------------------------------------------------------------------------


def accuracy_with_and_without_ties(
    prob_second: ArrayLike, target: ArrayLike, tie_threshold: float | None = None
) -> dict[str, float]:
    """Accuracy without ties and with ties, the VideoGen-RewardBench / GenAI-Bench way.

    * ``acc_without_ties``: pairs with ``target == 0.5`` are dropped; a pair is correct when
      ``prob_second`` is on the side of 0.5 of the target (exactly 0.5 counts as wrong).
    * ``acc_with_ties``: three-class accuracy over *all* pairs at a tie threshold ``eps``
      (predicted tie iff ``|p - 0.5| <= eps``):
      ``acc(eps) = (#{true non-tie, |p - 0.5| > eps, right side} + #{true tie, |p - 0.5| <= eps}) / n``.

    With ``tie_threshold=None`` the threshold is *tie-calibrated* (Deutsch et al. 2023, "Ties
    Matter", Algorithm 1; the VideoGen-RewardBench "w/ Ties" number): ``acc_with_ties =
    max_eps acc(eps)``. ``acc(eps)`` only changes where ``eps`` crosses some ``|p_k - 0.5|``, so the
    candidates are "no predicted ties" (``eps = -inf``) and every distinct ``|p_k - 0.5|``; all pairs
    with the same ``|p - 0.5|`` switch together. Among equally good thresholds the smallest wins.
    Sorting once and cumulative counts make it O(n log n). Two details differ from VideoAlign's
    ``calc_accuracy.py``: it never evaluates "no predicted ties" and it scores a threshold while
    only some of the pairs sharing that ``|margin|`` have been switched to ties; the first matters
    when ties never help (it forces at least one predicted tie), the second with many equal
    margins (quantised scores). The calibrated threshold is fitted on the data it scores (as the
    benchmark does), so it is optimistic; for an honest number fit it on a validation split and
    pass it as ``tie_threshold``.

    Args:
        prob_second: ``P(second is better)`` per pair (for scalar rewards pass
            ``sigmoid(r_2 - r_1)`` in float64; the sweep only uses the order of ``|r_2 - r_1|``).
        target: 1 / 0 / 0.5 per pair.
        tie_threshold: A fixed threshold, or ``None`` to calibrate it.

    Returns:
        ``acc_without_ties``, ``acc_with_ties``, ``tie_threshold`` (the one used; ``-inf`` when
        predicting no ties is best), ``n``, ``n_ties`` (true ties), ``n_pred_ties`` (at that threshold).
    """
    p, t = check_pairs(prob_second, target)
    p_np, t_np = p.cpu().double().numpy(), t.cpu().double().numpy()
    n = p_np.size
    true = np.sign(t_np - 0.5)
    true_tie = true == 0
    d = np.abs(p_np - 0.5)
    right_side = (~true_tie) & (np.sign(p_np - 0.5) == true)
    n_ties = int(true_tie.sum())
    n_right = int(right_side.sum())
    acc_without = n_right / (n - n_ties) if n > n_ties else math.nan
    if n == 0:
        return {
            "acc_without_ties": math.nan,
            "acc_with_ties": math.nan,
            "tie_threshold": math.nan if tie_threshold is None else float(tie_threshold),
            "n": 0,
            "n_ties": 0,
            "n_pred_ties": 0,
        }

    if tie_threshold is not None:
        pred_tie = d <= tie_threshold
        hits = int((right_side & ~pred_tie).sum() + (true_tie & pred_tie).sum())
        eps, n_pred = float(tie_threshold), int(pred_tie.sum())
    else:
        order = np.argsort(d, kind="stable")
        d_sorted = d[order]
        cum_right = np.cumsum(right_side[order])
        cum_tie = np.cumsum(true_tie[order])
        thresholds = np.unique(d_sorted)
        k = np.searchsorted(d_sorted, thresholds, side="right")  # pairs with |p - 0.5| <= threshold
        hits_at = n_right - cum_right[k - 1] + cum_tie[k - 1]  # integer numerators: exact comparisons
        best = int(np.argmax(hits_at))
        if hits_at[best] > n_right:  # strictly better than predicting no ties
            hits, eps, n_pred = int(hits_at[best]), float(thresholds[best]), int(k[best])
        else:
            hits, eps, n_pred = n_right, -math.inf, 0
    return {
        "acc_without_ties": acc_without,
        "acc_with_ties": hits / n,
        "tie_threshold": eps,
        "n": n,
        "n_ties": n_ties,
        "n_pred_ties": n_pred,
    }


class TieCalibratedAccuracy(Metric):
    """:func:`accuracy_with_and_without_ties` as a metric (keeps every prediction; DDP gathers them).

    Args:
        tie_threshold: A fixed threshold, or ``None`` to calibrate it on the accumulated pairs.
        validate_args: Check shapes and ranges on every update.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns tensors ``acc_without_ties``, ``acc_with_ties``, ``tie_threshold``,
    ``n``, ``n_ties``, ``n_pred_ties``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    probs: list[Tensor]
    targets: list[Tensor]

    def __init__(self, tie_threshold: float | None = None, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tie_threshold = tie_threshold
        self.validate_args = validate_args
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, prob_second: Tensor, target: Tensor) -> None:
        """Add a batch of pairs (``prob_second``, ``target`` as in :class:`PairwiseAccuracy`)."""
        p, t = check_pairs(prob_second, target, self.validate_args)
        self.probs.append(p.double())
        self.targets.append(t.double())

    def compute(self) -> dict[str, Tensor]:
        """Return the dict of :func:`accuracy_with_and_without_ties` as float64 tensors."""
        p, t = _cat_state(self.probs), _cat_state(self.targets)
        out = accuracy_with_and_without_ties(p, t, self.tie_threshold)
        return {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


class CalibrationError(BinaryCalibrationError):
    """Expected calibration error of ``P(yes) = prob_second`` against the binary target, ties excluded.

    Pairs with ``target == 0.5`` are dropped; the rest are binarised (``target > 0.5`` -> 1).
    Under the hood :class:`torchmetrics.classification.BinaryCalibrationError`, which bins
    ``P(positive)`` itself (not ``max(p, 1 - p)``) into ``n_bins`` equal-width bins
    ``[b_i, b_{i+1})`` and returns, for ``norm="l1"``,
    ``ECE = sum_i (n_i / n) |acc_i - conf_i|`` with ``acc_i`` the fraction of positive targets and
    ``conf_i`` the mean ``p`` in bin ``i`` (``"l2"``: the root of the weighted mean square,
    ``"max"``: the largest gap). Note that torchmetrics puts ``p == 1.0`` exactly in a bin of its own.

    Args:
        n_bins: Number of equal-width bins on ``[0, 1]``.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).
        validate_args: Check shapes and ranges on every update.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns a scalar tensor (NaN if no non-tie pair was seen).
    """

    def __init__(
        self, n_bins: int = 15, norm: Literal["l1", "l2", "max"] = "l1", validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(n_bins=n_bins, norm=norm, ignore_index=None, validate_args=False, **kwargs)
        self.check_inputs = validate_args

    def update(self, prob_second: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch of pairs (``prob_second``, ``target`` as in :class:`PairwiseAccuracy`); ties are dropped."""
        p, t = check_pairs(prob_second, target, self.check_inputs)
        keep = t != 0.5
        if p.dtype == torch.float64:  # torchmetrics' confidences follow the input dtype; keep one dtype
            p = p.float()
        super().update(p[keep], (t[keep] > 0.5).long())

    def compute(self) -> Tensor:
        """Return the calibration error (NaN when no non-tie pair was seen)."""
        conf = self.confidences
        n = conf.numel() if isinstance(conf, Tensor) else sum(int(c.numel()) for c in conf)
        if n == 0:
            return torch.tensor(math.nan, device=self.device)
        return super().compute()


def reliability_curve(
    probs: ArrayLike, targets: ArrayLike, n_bins: int = 10, drop_ties: bool = True
) -> dict[str, Tensor]:
    """Reliability diagram data: per equal-width bin of the predicted probability, the observed accuracy.

    Bin ``i`` is ``[i / n_bins, (i + 1) / n_bins)``; the last bin also holds ``p = 1.0``. With
    ``n_i`` pairs in bin ``i``: ``accuracy_i = mean(target > 0.5)`` and ``confidence_i = mean(p)``
    over the bin (NaN for an empty bin). A calibrated model lies on ``accuracy = confidence``, and
    ``sum_i (n_i / n) |accuracy_i - confidence_i|`` is the ECE of :class:`CalibrationError` (the
    same bins, except that torchmetrics gives ``p == 1.0`` a bin of its own).

    Args:
        probs: Predicted ``P(yes)`` / ``P(second better)`` per pair.
        targets: 1 / 0 / 0.5 (or any value in [0, 1], thresholded at 0.5).
        n_bins: Number of bins.
        drop_ties: Drop pairs with ``target == 0.5`` (as the ECE does).

    Returns:
        ``centers`` (bin centres), ``accuracy``, ``confidence`` (float64, shape ``[n_bins]``) and
        ``counts`` (int64).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, t = check_pairs(probs, targets)
    p, t = p.cpu().double(), t.cpu().double()
    if drop_ties:
        keep = t != 0.5
        p, t = p[keep], t[keep]
    idx = torch.clamp((p * n_bins).floor().long(), 0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins)
    hits = torch.bincount(idx, weights=(t > 0.5).double(), minlength=n_bins)
    conf = torch.bincount(idx, weights=p, minlength=n_bins)
    denom = counts.double()
    return {
        "centers": (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins,
        "accuracy": hits / denom,
        "confidence": conf / denom,
        "counts": counts,
    }


# --------------------------------------------------------------------------------------------
# position bias
# --------------------------------------------------------------------------------------------


def order_averaged_prob(prob_ab: Tensor, prob_ba: Tensor) -> Tensor:
    """Order-debiased ``P(B better)`` from both presentation orders: ``(prob_ab + (1 - prob_ba)) / 2``.

    ``prob_ab = P(B better | A first, B second)`` and ``prob_ba = P(A better | B first, A second)``,
    so ``1 - prob_ba`` is the second query's estimate of ``P(B better)``.
    """
    return (prob_ab + (1 - prob_ba)) / 2


class PositionBias(Metric):
    """How much the pairwise RM's answer depends on which image is shown first.

    Each pair ``{A, B}`` is asked in both orders: ``prob_ab = P(B better | A first, B second)``
    and ``prob_ba = P(A better | B first, A second)`` (both are the model's ``P(yes)`` for "is
    image 2 better than image 1?"). An order-invariant model has ``prob_ab = 1 - prob_ba``.

    Decisions are taken per query on the side of 0.5 (``> 0.5``: the second position wins,
    ``< 0.5``: the first position wins, exactly 0.5: undecided). Per pair:

    * *consistent*: the two queries pick the same **image**, i.e. different positions
      (``prob_ab > 0.5 > prob_ba`` or ``prob_ab < 0.5 < prob_ba``);
    * *position-biased*: both queries pick the same **position**, hence different images: the
      decision does not flip when the order flips. ``first_position`` when both are ``< 0.5``,
      ``second_position`` when both are ``> 0.5``;
    * *undecided*: either query is exactly 0.5.

    ``consistency_rate + position_bias_rate + undecided_rate = 1``.

    Soft statistics (over pairs):

    * ``mean_first_preference = mean_k [(1 - prob_ab_k) + (1 - prob_ba_k)] / 2``, the mean
      probability given to the image in the first position; 0.5 for an order-invariant model,
      above 0.5 for a first-position bias, below for a second-position bias.
    * ``mean_order_gap = mean_k |prob_ab_k + prob_ba_k - 1|``, 0 for an order-invariant model.

    Args:
        validate_args: Check shapes and ranges on every update.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns tensors ``position_bias_rate``, ``first_position_rate``,
    ``second_position_rate``, ``consistency_rate``, ``undecided_rate``,
    ``mean_first_preference``, ``mean_order_gap``, ``n``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    n: Tensor
    n_first: Tensor
    n_second: Tensor
    n_consistent: Tensor
    sum_first_pref: Tensor
    sum_order_gap: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        for name in ("n", "n_first", "n_second", "n_consistent"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("sum_first_pref", "sum_order_gap"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prob_ab: Tensor, prob_ba: Tensor) -> None:
        """Add a batch of pairs asked in both orders.

        Args:
            prob_ab: ``P(B better | A first, B second)``, shape ``[B]``.
            prob_ba: ``P(A better | B first, A second)``, shape ``[B]``.
        """
        ab, ba = check_pairs(prob_ab, prob_ba, self.validate_args, names=("prob_ab", "prob_ba"))
        s_ab, s_ba = torch.sign(ab - 0.5), torch.sign(ba - 0.5)
        self.n += ab.numel()
        self.n_first += ((s_ab < 0) & (s_ba < 0)).sum()
        self.n_second += ((s_ab > 0) & (s_ba > 0)).sum()
        self.n_consistent += (s_ab * s_ba < 0).sum()
        self.sum_first_pref += ((2 - ab - ba) / 2).double().sum()
        self.sum_order_gap += (ab + ba - 1).abs().double().sum()

    def compute(self) -> dict[str, Tensor]:
        """Return the rates and means described in the class docstring."""
        n = self.n
        return {
            "position_bias_rate": _ratio(self.n_first + self.n_second, n),
            "first_position_rate": _ratio(self.n_first, n),
            "second_position_rate": _ratio(self.n_second, n),
            "consistency_rate": _ratio(self.n_consistent, n),
            "undecided_rate": _ratio(n - self.n_first - self.n_second - self.n_consistent, n),
            "mean_first_preference": self.sum_first_pref / n.double(),
            "mean_order_gap": self.sum_order_gap / n.double(),
            "n": n,
        }
