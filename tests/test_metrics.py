"""Reward-model metrics against numbers worked out by hand (each stated in a comment)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryCalibrationError

from rewarddance.metrics import (
    CalibrationError,
    CategoryAccuracy,
    PairwiseAccuracy,
    PositionBias,
    RewardVariance,
    TieCalibratedAccuracy,
    accuracy_with_and_without_ties,
    hpsv2_accuracy,
    imagereward_accuracy,
    order_averaged_prob,
    pickscore_accuracy,
    reliability_curve,
)

torch.set_num_threads(1)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# Six pairs used by several tests. With tie_threshold 0.1 (|p - 0.5| = .4 .3 .08 0 .05 .2):
#   pair:       0       1       2      3      4      5
#   p:        0.9     0.2    0.58    0.5   0.55    0.3
#   target:     1       1       0      1    0.5    0.5
#   true:     2nd     2nd     1st    2nd    tie    tie
#   pred@0.1: 2nd     1st     tie    tie    tie    1st
#   pred@0:   2nd     1st     2nd    tie    2nd    1st
P6 = t(0.9, 0.2, 0.58, 0.5, 0.55, 0.3)
T6 = t(1.0, 1.0, 0.0, 1.0, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------
# PairwiseAccuracy
# ---------------------------------------------------------------------------------------------


def test_pairwise_accuracy_by_hand_over_two_batches():
    m = PairwiseAccuracy(tie_threshold=0.1)
    m.update(P6[:3], T6[:3])
    m.update(P6[3:], T6[3:])
    out = m.compute()
    # acc: non-tie pairs 0..3; only pair 0 is on the right side (pair 3 at exactly 0.5 is wrong) -> 1/4
    assert out["acc"].item() == pytest.approx(0.25)
    # three-class @0.1: exact matches pairs 0 and 4 -> 2/6
    assert out["acc_with_ties"].item() == pytest.approx(2 / 6)
    assert out["n"].item() == 6 and out["n_ties"].item() == 2 and out["n_pred_ties"].item() == 3


def test_pairwise_accuracy_tie_credit_pickscore_convention():
    m = PairwiseAccuracy(tie_threshold=0.1, tie_credit=0.5)
    m.update(P6, T6)
    # exact matches 2 (pairs 0, 4); exactly one side a tie: pairs 2, 3, 5 -> (2 + 0.5 * 3) / 6 = 3.5 / 6
    assert m.compute()["acc_with_ties"].item() == pytest.approx(3.5 / 6)


def test_pairwise_accuracy_default_threshold_only_exact_half_is_a_tie():
    m = PairwiseAccuracy()  # tie_threshold 0
    m.update(P6, T6)
    out = m.compute()
    # @0: exact match only pair 0 -> 1/6; acc unchanged (1/4), one predicted tie (pair 3)
    assert out["acc_with_ties"].item() == pytest.approx(1 / 6)
    assert out["acc"].item() == pytest.approx(0.25)
    assert out["n_pred_ties"].item() == 1
    m2 = PairwiseAccuracy(tie_credit=0.5)
    m2.update(P6, T6)
    # half credit on pairs 3 (pred tie), 4 and 5 (true ties): (1 + 1.5) / 6
    assert m2.compute()["acc_with_ties"].item() == pytest.approx(2.5 / 6)


def test_pairwise_accuracy_soft_targets_and_shapes():
    m = PairwiseAccuracy()
    # soft targets thresholded at 0.5: 0.8 -> second, 0.3 -> first; both right -> 1.0
    m.update(torch.tensor([[0.7], [0.1]]), torch.tensor([0.8, 0.3]))
    assert m.compute()["acc"].item() == 1.0


def test_pairwise_accuracy_rejects_bad_input():
    m = PairwiseAccuracy()
    with pytest.raises(ValueError, match="same number"):
        m.update(t(0.5, 0.2), t(1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(t(2.3), t(1.0))  # a margin, not a probability
    with pytest.raises(ValueError, match="target"):
        m.update(t(0.3), t(2.0))
    with pytest.raises(ValueError, match="tie_threshold"):
        PairwiseAccuracy(tie_threshold=0.5)


def test_pairwise_accuracy_negative_threshold_never_predicts_a_tie():
    m = PairwiseAccuracy(tie_threshold=-math.inf)  # what calibration returns when no ties is best
    m.update(P6, T6)
    # not even pair 3 (exactly 0.5) is a predicted tie; exact matches: pair 0 only -> 1/6
    assert m.compute()["n_pred_ties"].item() == 0 and m.compute()["acc_with_ties"].item() == pytest.approx(1 / 6)


def test_pairwise_accuracy_empty_is_nan():
    m = PairwiseAccuracy()
    m.update(t(0.7), t(0.5))  # only a tie: no non-tie pair
    assert math.isnan(m.compute()["acc"].item())


def test_pairwise_accuracy_merge_state_equals_one_pass():
    whole, a, b = PairwiseAccuracy(tie_threshold=0.1), PairwiseAccuracy(tie_threshold=0.1), PairwiseAccuracy(0.1)
    whole.update(P6, T6)
    a.update(P6[:4], T6[:4])
    b.update(P6[4:], T6[4:])
    a.merge_state(b)
    for key, value in whole.compute().items():
        assert a.compute()[key].item() == pytest.approx(value.item()), key


def fake_two_rank_compute(metric, other):
    """``metric.compute()`` as if ``other`` were rank 1 of a 2-process job: torchmetrics' own sync
    path runs (gather -> sum / cat / max reduction -> compute -> unsync), with a gather that returns
    [own state, other's state] instead of a collective."""

    def gather(tensor, group=None):
        return [tensor, next(peers)]

    states = [getattr(other, name) for name in metric._reductions]
    # list (cat) states are pre-concatenated to one tensor before the gather
    peers = iter([torch.cat(v) if isinstance(v, list) else v for v in states])
    metric.dist_sync_fn = gather
    metric.distributed_available_fn = lambda: True
    try:
        return metric.compute()
    finally:
        metric.dist_sync_fn, metric.distributed_available_fn = None, None


def test_pairwise_accuracy_fake_ddp_sync():
    a, b = PairwiseAccuracy(tie_threshold=0.1), PairwiseAccuracy(tie_threshold=0.1)
    a.update(P6[:2], T6[:2])
    b.update(P6[2:], T6[2:])
    out = fake_two_rank_compute(a, b)
    assert out["acc"].item() == pytest.approx(0.25) and out["acc_with_ties"].item() == pytest.approx(2 / 6)
    assert out["n"].item() == 6
    assert a.n.item() == 2  # unsync restores the local state


# ---------------------------------------------------------------------------------------------
# CategoryAccuracy
# ---------------------------------------------------------------------------------------------


def test_category_accuracy_by_hand():
    m = CategoryAccuracy(["animals", "people", "text"], with_counts=True)
    # animals: (0.9, 1) right, (0.2, 1) wrong -> 1/2
    # people: (0.7, tie) skipped, (0.4, 0) right, (0.3, 0) right, (0.6, 0) wrong -> 2/3
    m.update(t(0.9, 0.2, 0.7), t(1, 1, 0.5), ["animals", "animals", "people"])
    m.update(t(0.4, 0.3, 0.6), t(0, 0, 0), ["people", "people", "people"])
    out = m.compute()
    assert out["animals"].item() == pytest.approx(0.5)
    assert out["people"].item() == pytest.approx(2 / 3)
    assert math.isnan(out["text"].item())  # never seen
    assert out["animals/n"].item() == 2 and out["people/n"].item() == 3
    assert list(out)[:3] == ["animals", "people", "text"]


def test_category_accuracy_unknown_categories():
    strict = CategoryAccuracy(["a"])
    with pytest.raises(ValueError, match=r"unknown categories \['zebra'\]"):
        strict.update(t(0.9), t(1.0), ["zebra"])
    loose = CategoryAccuracy(["a"], unknown="other")
    loose.update(t(0.9, 0.1), t(1.0, 1.0), ["a", "zebra"])
    out = loose.compute()
    assert out["a"].item() == 1.0 and out["other"].item() == 0.0
    with pytest.raises(ValueError, match="2 categories for 1 pairs"):
        loose.update(t(0.9), t(1.0), ["a", "a"])


def test_category_accuracy_fake_ddp_sync():
    a, b = CategoryAccuracy(["x", "y"]), CategoryAccuracy(["x", "y"])
    a.update(t(0.9, 0.2), t(1, 1), ["x", "y"])  # x right, y wrong
    b.update(t(0.1, 0.8), t(1, 1), ["x", "y"])  # x wrong, y right
    out = fake_two_rank_compute(a, b)
    assert out["x"].item() == 0.5 and out["y"].item() == 0.5


# ---------------------------------------------------------------------------------------------
# Tie-calibrated accuracy (VideoGen-RewardBench / GenAI-Bench)
# ---------------------------------------------------------------------------------------------

# pairs: p = .9 .3 .52 .5 .45 .8, target = 1 0 .5 .5 1 0
# |p - .5| = .4 .2 .02 0 .05 .3; right side (non-tie): pairs 0, 1; wrong: 4, 5; true ties: 2, 3
# acc(eps) = (#right non-ties with |p-.5| > eps + #true ties with |p-.5| <= eps) / 6:
#   -inf: 2/6   0: 3/6   .02: 4/6   .05: 4/6   .2: 3/6   .3: 3/6   .4: 2/6
# -> best 4/6, smallest threshold 0.02 (two predicted ties)
PT = t(0.9, 0.3, 0.52, 0.5, 0.45, 0.8)
TT = t(1, 0, 0.5, 0.5, 1, 0)


def test_accuracy_with_and_without_ties_calibrated():
    out = accuracy_with_and_without_ties(PT, TT)
    assert out["acc_without_ties"] == pytest.approx(2 / 4)
    assert out["acc_with_ties"] == pytest.approx(4 / 6)
    assert out["tie_threshold"] == pytest.approx(0.02)
    assert (out["n"], out["n_ties"], out["n_pred_ties"]) == (6, 2, 2)


def test_calibrated_threshold_matches_brute_force_and_fixed_threshold():
    gen = np.random.default_rng(0)
    p = np.round(gen.uniform(size=200), 2)  # rounded: many equal |p - 0.5| values
    target = gen.choice([0.0, 0.5, 1.0], size=200)
    out = accuracy_with_and_without_ties(p, target)
    candidates = [-1.0, *np.unique(np.abs(p - 0.5))]
    brute = [accuracy_with_and_without_ties(p, target, tie_threshold=eps)["acc_with_ties"] for eps in candidates]
    assert out["acc_with_ties"] == pytest.approx(max(brute))
    fixed = accuracy_with_and_without_ties(p, target, tie_threshold=out["tie_threshold"])
    assert fixed["acc_with_ties"] == pytest.approx(out["acc_with_ties"])
    # the same threshold in PairwiseAccuracy gives the same three-class accuracy
    m = PairwiseAccuracy(tie_threshold=out["tie_threshold"])
    m.update(torch.tensor(p), torch.tensor(target))
    assert m.compute()["acc_with_ties"].item() == pytest.approx(out["acc_with_ties"])


def test_calibration_prefers_no_ties_when_ties_do_not_help():
    # no true ties, all on the right side: any predicted tie loses a point -> eps = -inf, acc 1
    out = accuracy_with_and_without_ties(t(0.9, 0.2), t(1, 0))
    assert out["acc_with_ties"] == 1.0 and out["tie_threshold"] == -math.inf and out["n_pred_ties"] == 0


def test_tie_calibrated_metric_and_fake_ddp_sync():
    a, b = TieCalibratedAccuracy(), TieCalibratedAccuracy()
    a.update(PT[:3], TT[:3])
    b.update(PT[3:], TT[3:])
    out = fake_two_rank_compute(a, b)
    assert out["acc_with_ties"].item() == pytest.approx(4 / 6)
    assert out["acc_without_ties"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

# p = .2 .3 .7 .8 .9 (.6 is a tie, dropped), target = 0 1 1 1 0, two bins:
#   [0, .5): p .2 .3 -> conf .25, acc 1/2, |gap| .25
#   [.5, 1]: p .7 .8 .9 -> conf .8, acc 2/3, |gap| .1333
#   ECE = 2/5 * .25 + 3/5 * .1333 = .1 + .08 = .18
PC = t(0.2, 0.3, 0.7, 0.8, 0.9, 0.6)
TC = t(0, 1, 1, 1, 0, 0.5)


def test_calibration_error_by_hand():
    m = CalibrationError(n_bins=2)
    m.update(PC, TC)
    assert m.compute().item() == pytest.approx(0.18, abs=1e-6)
    ref = BinaryCalibrationError(n_bins=2)  # the same without the tie
    ref.update(PC[:5].float(), TC[:5].long())
    assert m.compute().item() == pytest.approx(ref.compute().item())


def test_calibration_error_only_ties_is_nan():
    m = CalibrationError(n_bins=2)
    m.update(t(0.6), t(0.5))
    assert math.isnan(m.compute().item())


def test_reliability_curve_by_hand_and_consistent_with_ece():
    curve = reliability_curve(PC, TC, n_bins=2)
    assert curve["centers"].tolist() == [0.25, 0.75]
    assert curve["counts"].tolist() == [2, 3]
    assert curve["accuracy"].tolist() == pytest.approx([0.5, 2 / 3])
    assert curve["confidence"].tolist() == pytest.approx([0.25, 0.8])
    ece = (curve["counts"] / curve["counts"].sum() * (curve["accuracy"] - curve["confidence"]).abs()).sum()
    assert ece.item() == pytest.approx(0.18)
    # 4 bins: .2 -> [0,.25), .3 -> [.25,.5), .7 -> [.5,.75), .8 .9 -> [.75,1]; empty bins are NaN
    curve4 = reliability_curve([0.2, 0.3, 0.7, 0.8, 0.9, 1.0], [0, 1, 1, 1, 0, 1], n_bins=4)
    assert curve4["counts"].tolist() == [1, 1, 1, 3]  # 1.0 lands in the last bin
    empty = reliability_curve([0.9], [1], n_bins=2)
    assert math.isnan(empty["accuracy"][0].item()) and empty["accuracy"][1].item() == 1.0


# ---------------------------------------------------------------------------------------------
# Position bias
# ---------------------------------------------------------------------------------------------


def test_position_bias_by_hand():
    # pair 0: ab .8 (B), ba .1 (B)           -> consistent
    # pair 1: ab .7 (2nd pos), ba .6 (2nd)    -> same position: second
    # pair 2: ab .3 (1st pos), ba .2 (1st)    -> same position: first
    # pair 3: ab .6 (B), ba .45 (B)           -> consistent
    # pair 4: ab .5                           -> undecided
    m = PositionBias()
    m.update(t(0.8, 0.7, 0.3), t(0.1, 0.6, 0.2))
    m.update(t(0.6, 0.5), t(0.45, 0.7))
    out = m.compute()
    assert out["position_bias_rate"].item() == pytest.approx(2 / 5)
    assert out["first_position_rate"].item() == pytest.approx(1 / 5)
    assert out["second_position_rate"].item() == pytest.approx(1 / 5)
    assert out["consistency_rate"].item() == pytest.approx(2 / 5)
    assert out["undecided_rate"].item() == pytest.approx(1 / 5)
    # ab + ba = .9 1.3 .5 1.05 1.2 (sum 4.95): mean_first_preference = 1 - 4.95 / 10 = .505
    assert out["mean_first_preference"].item() == pytest.approx(0.505)
    # |ab + ba - 1| = .1 .3 .5 .05 .2 -> mean .23
    assert out["mean_order_gap"].item() == pytest.approx(0.23)
    assert out["n"].item() == 5


def test_position_bias_of_an_order_invariant_model_is_zero():
    ab = t(0.9, 0.2, 0.6)
    m = PositionBias()
    m.update(ab, 1 - ab)
    out = m.compute()
    assert out["position_bias_rate"].item() == 0 and out["consistency_rate"].item() == 1
    assert out["mean_first_preference"].item() == pytest.approx(0.5) and out["mean_order_gap"].item() == pytest.approx(
        0
    )


def test_order_averaged_prob():
    # (0.8 + (1 - 0.1)) / 2 = 0.85
    assert order_averaged_prob(t(0.8), t(0.1)).item() == pytest.approx(0.85)


# ---------------------------------------------------------------------------------------------
# Benchmark conventions
# ---------------------------------------------------------------------------------------------


def test_hpsv2_accuracy_by_hand():
    scores = [[0.9, 0.5, 0.7], [1.0, 1.0], [3.0, 2.0, 1.0]]
    ranks = [[1, 2, 3], [0, 1], [0, 1, 2]]
    # prompt 0: pairs (0,1) ok, (0,2) ok, (1,2): s1 < s2 but r1 < r2 -> discordant -> 1 - 1/3 = 2/3
    # prompt 1: predicted tie on an ordered pair -> 0.5 discordant -> 1 - 0.5/1 = 1/2
    # prompt 2: perfect -> 1
    # mean: (2/3 + 1/2 + 1) / 3 = 13/18
    assert hpsv2_accuracy(scores, ranks) == pytest.approx(13 / 18)
    assert hpsv2_accuracy(scores, ranks, pred_tie_discordance=0.0) == pytest.approx((2 / 3 + 1 + 1) / 3)
    # a human tie is never discordant and stays in the denominator: ranks 0 0 1, scores .1 .9 .5
    # (0,1) human tie -> 0; (0,2): s0 < s2, r0 < r2 -> discordant; (1,2) ok -> 1 - 1/3
    assert hpsv2_accuracy([[0.1, 0.9, 0.5]], [[0, 0, 1]]) == pytest.approx(2 / 3)
    # a constant scorer sits at 0.5, not 1.0
    assert hpsv2_accuracy([[0.3, 0.3, 0.3, 0.3]], [[0, 1, 2, 3]]) == pytest.approx(0.5)
    # tensors and single-image prompts (skipped)
    assert hpsv2_accuracy([torch.tensor([2.0, 1.0]), [5.0]], [torch.tensor([0, 1]), [0]]) == 1.0


def test_imagereward_accuracy_by_hand_micro_average():
    scores = [[0.9, 0.5, 0.7], [0.2, 0.2, 0.1, 0.4], [0.5, 0.5]]
    rankings = [[1, 2, 3], [1, 1, 2, 3], [1, 2]]
    # prompt 0: 2 of 3 correct (pair (1,2) wrong)
    # prompt 1: (0,1) human tie skipped; (0,2) right, (0,3) wrong, (1,2) right, (1,3) wrong, (2,3) wrong
    #           -> 2 of 5
    # prompt 2: predicted tie -> wrong, 0 of 1
    # micro: (2 + 2 + 0) / (3 + 5 + 1) = 4/9 (the macro mean would be (2/3 + 2/5 + 0)/3 = 0.356)
    assert imagereward_accuracy(scores, rankings) == pytest.approx(4 / 9)
    assert math.isnan(imagereward_accuracy([[1.0, 2.0]], [[1, 1]]))  # only a human tie
    with pytest.raises(ValueError, match="3 scores but 2 ranks"):
        imagereward_accuracy([[1.0, 2.0, 3.0]], [[1, 2]])


def test_pickscore_accuracy_by_hand():
    # @0.1 (see P6): scores 1 (pair 0), 0 (1), .5 (2: pred tie), .5 (3: pred tie), 1 (4: both tie), .5 (5)
    # half: 3.5 / 6; drop (pairs 0..3): (1 + 0 + .5 + .5) / 4 = 0.5
    assert pickscore_accuracy(P6, T6, tie_threshold=0.1) == pytest.approx(3.5 / 6)
    assert pickscore_accuracy(P6, T6, tie_threshold=0.1, ties="drop") == pytest.approx(0.5)
    # default threshold 0: scores 1, 0, 0, .5, .5, .5 -> half 2.5/6; drop (1 + 0 + 0 + .5)/4 = 3/8
    assert pickscore_accuracy(P6, T6) == pytest.approx(2.5 / 6)
    assert pickscore_accuracy(P6, T6, ties="drop") == pytest.approx(3 / 8)
    # agrees with PairwiseAccuracy(tie_credit=0.5)
    m = PairwiseAccuracy(tie_threshold=0.1, tie_credit=0.5)
    m.update(P6, T6)
    assert m.compute()["acc_with_ties"].item() == pytest.approx(pickscore_accuracy(P6, T6, tie_threshold=0.1))


# ---------------------------------------------------------------------------------------------
# Reward variance
# ---------------------------------------------------------------------------------------------


def test_reward_variance_sliding_window_by_hand():
    m = RewardVariance(window=3)
    for rewards in ([1.0, 2.0], [3.0], [5.0, 7.0], [4.0]):
        m.update(torch.tensor(rewards))
    # window = last 3 iterations: {3}, {5, 7}, {4}; mean 4.75; squared deviations
    # 3.0625 + 0.0625 + 5.0625 + 0.5625 = 8.75; unbiased var 8.75 / 3 -> std 1.707825
    assert m.compute().item() == pytest.approx(math.sqrt(8.75 / 3))
    assert m.compute().item() == pytest.approx(torch.tensor([3.0, 5, 7, 4]).std().item())
    it = RewardVariance(window=3, over="iterations")
    for rewards in ([1.0, 2.0], [3.0], [5.0, 7.0], [4.0]):
        it.update(torch.tensor(rewards))
    # per-iteration means 3, 6, 4: mean 13/3; squared deviations 16/9 + 25/9 + 1/9 = 42/9; / 2 -> var 7/3
    assert it.compute().item() == pytest.approx(math.sqrt(7 / 3))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_reward_variance_before_window_is_full_and_reset():
    m = RewardVariance(window=1000, unbiased=False)
    assert math.isnan(m.compute().item())
    m.update(torch.tensor(0.5))
    m.update(0.7)
    # two values 0.5, 0.7: population std 0.1
    assert m.compute().item() == pytest.approx(0.1)
    m.reset()
    m.update(torch.tensor([0.2]))
    assert math.isnan(RewardVariance().compute().item())  # a fresh one: no data
    assert m.compute().item() == pytest.approx(0.0)  # one value, ddof 0


def test_reward_variance_small_std_around_large_mean_is_accurate():
    gen = torch.Generator().manual_seed(0)
    r = 0.9 + 1e-3 * torch.randn(50, 8, generator=gen, dtype=torch.float64)
    m = RewardVariance(window=20)
    for row in r:
        m.update(row)
    assert m.compute().item() == pytest.approx(r[-20:].reshape(-1).std().item(), rel=1e-9)


def test_reward_variance_fake_ddp_sync_pools_ranks_per_iteration():
    a, b = RewardVariance(window=2), RewardVariance(window=2)
    for ra, rb in (([9.0], [9.0]), ([1.0], [2.0]), ([3.0], [4.0])):  # the first iteration falls out of the window
        a.update(torch.tensor(ra))
        b.update(torch.tensor(rb))
    # pooled window {1, 2, 3, 4}: mean 2.5, squared deviations 2.25 + .25 + .25 + 2.25 = 5 -> var 5/3
    assert fake_two_rank_compute(a, b).item() == pytest.approx(math.sqrt(5 / 3))
    # the iteration counter reduces with max: merged, the two ranks are still at iteration 3 (a sum
    # would say 6 and misplace the next write in the ring buffer)
    a.merge_state(b)
    assert a.step.item() == 3
    a.update(torch.tensor([10.0]))  # overwrites slot 3 % 2 = 1 (the pooled {1, 2}) -> window {3, 4} + {10}
    assert a.compute().item() == pytest.approx(torch.tensor([3.0, 4, 10]).std().item())


# ---------------------------------------------------------------------------------------------
# Two real processes (gloo on CPU): the states reduce across ranks as under DDP
# ---------------------------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from rewarddance.metrics import CategoryAccuracy, PairwiseAccuracy, PositionBias, TieCalibratedAccuracy
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
    p = torch.tensor([0.9, 0.2, 0.58, 0.5, 0.55, 0.3], dtype=torch.float64)
    tg = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    part = slice(0, 2) if rank == 0 else slice(2, 6)  # uneven shards
    acc = PairwiseAccuracy(tie_threshold=0.1)
    acc.update(p[part], tg[part])
    cat = CategoryAccuracy(["x", "y"])
    cat.update(p[part], tg[part], ["x", "y", "x", "y", "x", "y"][part])
    cal = TieCalibratedAccuracy()
    cal.update(p[part], tg[part])
    pb = PositionBias()
    pb.update(p[part], 1 - p[part])
    out = {k: v.item() for k, v in acc.compute().items()}
    out.update({"cat_" + k: v.item() for k, v in cat.compute().items()})
    out["calibrated"] = cal.compute()["acc_with_ties"].item()
    out["consistency"] = pb.compute()["consistency_rate"].item()
    out["n_pb"] = pb.compute()["n"].item()
    print(json.dumps(out))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow  # ~11 s on a 2-core box (two fresh interpreters importing torch + torchmetrics)
@pytest.mark.timeout(120)
def test_two_real_gloo_processes(tmp_path):
    script = tmp_path / "ddp_metrics.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(tmp_path / "store")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=90)
            assert proc.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for out in outs:  # both ranks see the global numbers
        assert out["acc"] == pytest.approx(0.25) and out["acc_with_ties"] == pytest.approx(2 / 6)
        assert out["n"] == 6 and out["n_ties"] == 2 and out["n_pred_ties"] == 3
        # x: pairs 0 (right), 2 (wrong), 4 (tie) -> 1/2; y: pairs 1 (wrong), 3 (exactly 0.5: wrong), 5 (tie) -> 0
        assert out["cat_x"] == pytest.approx(0.5) and out["cat_y"] == pytest.approx(0.0)
        # P6/T6 calibrated: |p-.5| = .4 .3 .08 0 .05 .2; right side: pair 0 only; true ties: 4 (.05), 5 (.2)
        # eps -inf/0: 1/6; .05/.08: 2/6; .2/.3: (1 + 2)/6 = 1/2; .4: 2/6 -> max 1/2
        assert out["calibrated"] == pytest.approx(0.5)
        assert out["consistency"] == pytest.approx(5 / 6) and out["n_pb"] == 6  # pair 3 (0.5) is undecided
