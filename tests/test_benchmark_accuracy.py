"""benchmark_accuracy: the scored pairs of an imported benchmark, counted in the field's convention.

Every expected number below is worked out by hand in the comments.
"""

import math

import numpy as np
import pytest

from rewarddance.metrics import (
    SOURCE_CONVENTIONS,
    accuracy_with_and_without_ties,
    auto_convention,
    benchmark_accuracy,
    hpsv2_accuracy,
    imagereward_accuracy,
    pickscore_accuracy,
)


def pairwise(label, reward, **extra):
    """A record of a pairwise model: reward = P(second better)."""
    return {"key": f"k{len(extra)}-{label}-{reward}", "label": label, "reward": reward, **extra}


def pointwise(label, first, second, **extra):
    """A record of a pointwise model: reward of the second image, reward_first of the first."""
    return {"key": f"k-{label}-{first}-{second}", "label": label, "reward": second, "reward_first": first, **extra}


# Five pairs of a pairwise model, decision = side of 0.5:
#   1 second, 0.8  -> second: right          |p - 0.5| = 0.3
#   2 first,  0.3  -> first:  right                      0.2
#   3 first,  0.6  -> second: wrong                      0.1
#   4 second, 0.5  -> predicted tie: wrong               0.0
#   5 tie,    0.52 -> second (GT tie)                    0.02
FIVE = [
    pairwise("second", 0.8),
    pairwise("first", 0.3),
    pairwise("first", 0.6),
    pairwise("second", 0.5),
    pairwise("tie", 0.52),
]


def test_pairwise_drops_gt_ties_and_counts_predicted_ties_wrong():
    result = benchmark_accuracy(FIVE, "pairwise")
    # pairs 1-4 count (5 is a GT tie): right 1, 2 -> 2 / 4
    assert result["accuracy"] == pytest.approx(0.5)
    assert (result["n"], result["unit"], result["n_pairs"]) == (4, "pairs", 5)
    assert result["lines"] == ["pairwise accuracy (GT ties dropped, predicted ties wrong): 0.5000 over 4 pairs"]


def test_pickscore_gives_ties_half_credit_and_reports_ties_dropped():
    result = benchmark_accuracy(FIVE, "pickscore")
    # 1: 1, 2: 1, 3: 0, 4: predicted tie on a non-tie 0.5, 5: GT tie with a non-tie prediction 0.5
    # -> (1 + 1 + 0 + 0.5 + 0.5) / 5 = 0.6; ties dropped: (1 + 1 + 0 + 0.5) / 4 = 0.625
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["accuracy_ties_dropped"] == pytest.approx(0.625)
    assert (result["n"], result["n_ties_dropped"]) == (5, 4)
    assert result["lines"] == [
        "pickscore accuracy (ties 0.5 credit): 0.6000 over 5 pairs",
        "pickscore accuracy (GT ties dropped): 0.6250 over 4 pairs",
    ]


def test_ties_reports_without_ties_and_tie_calibrated_with_ties():
    result = benchmark_accuracy(FIVE, "ties")
    # without ties: as pairwise, 2 / 4. With ties, threshold eps on |p - 0.5|:
    #   no predicted ties: right 1, 2 -> 2 / 5;  eps = 0: 4 becomes a tie (wrong anyway) -> 2 / 5
    #   eps = 0.02: 5 (a GT tie) becomes a tie -> 3 / 5;  eps = 0.1: 3 (wrong anyway) -> 3 / 5
    #   eps = 0.2: 2 is lost -> 2 / 5.  Best 3 / 5, smallest threshold 0.02.
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["accuracy_with_ties"] == pytest.approx(0.6)
    assert result["tie_threshold"] == pytest.approx(0.02)
    assert (result["n"], result["n_with_ties"]) == (4, 5)
    assert result["lines"][0] == "ties accuracy (w/o ties: GT ties dropped, predicted ties wrong): 0.5000 over 4 pairs"
    assert result["lines"][1].startswith("ties accuracy (w/ ties: three-class, predicted tie when |P - 0.5| <= 0.02,")
    assert result["lines"][1].endswith("): 0.6000 over 5 pairs")


def test_ties_with_a_pointwise_model_reports_the_threshold_as_a_reward_margin():
    records = [
        pointwise("second", 0.2, 0.6),  # m = +0.4: right
        pointwise("first", 0.7, 0.5),  # m = -0.2: right
        pointwise("tie", 0.4, 0.45),  # m = +0.05 (GT tie)
        pointwise("first", 0.3, 0.4),  # m = +0.1: wrong
    ]
    result = benchmark_accuracy(records, "ties")
    # without ties 2 / 3; with ties: |m| <= 0.05 turns the GT tie into a hit -> 3 / 4 (|m| <= 0.1 too, larger)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy_with_ties"] == pytest.approx(0.75)
    assert result["tie_threshold"] == pytest.approx(0.05)
    assert "|reward - reward_first| <= 0.05" in result["lines"][1]


# Two prompts' rankings, as imported from HPDv2 test / ImageReward (pair i < j: image i first):
#   A: ranks [1, 2, 2]: (0,1) first better, (0,2) first better, (1,2) human tie
#   B: ranks [2, 1]:    (0,1) second better
RANKED = [
    pairwise("first", 0.2, group="A", pair=[0, 1], ranks=[1, 2]),  # model: first -> concordant
    pairwise("first", 0.7, group="A", pair=[0, 2], ranks=[1, 2]),  # model: second -> discordant
    pairwise("tie", 0.9, group="A", pair=[1, 2], ranks=[2, 2]),  # human tie: never discordant
    pairwise("second", 0.5, group="B", pair=[0, 1], ranks=[2, 1]),  # model tie
]


def test_hpsv2_is_per_prompt_one_minus_discordant_over_total_averaged_over_prompts():
    result = benchmark_accuracy([{**r, "source": "hpdv2"} for r in RANKED], "hpsv2")
    # A: 1 - 1 / 3 = 2/3 (the human tie stays in the denominator);
    # B: 1 - 0.5 / 1 = 0.5 (a model tie counts half discordant); mean (2/3 + 1/2) / 2 = 7/12
    assert result["accuracy"] == pytest.approx(7 / 12)
    assert (result["n"], result["unit"], result["n_pairs"], result["incomplete_groups"]) == (2, "prompts", 4, 0)
    assert result["lines"] == [
        "hpsv2 accuracy (per prompt 1 - discordant/total, mean over prompts): 0.5833 over 2 prompts (4 pairs)"
    ]
    assert result["warnings"] == []


def test_imagereward_is_micro_over_pairs_skipping_gt_ties_with_predicted_ties_wrong():
    result = benchmark_accuracy(RANKED, "imagereward")
    # human-ordered pairs: A(0,1) right, A(0,2) wrong, B(0,1) predicted tie = wrong -> 1 / 3
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["n"] == 3
    assert result["lines"] == [
        "imagereward accuracy (pairs, GT ties skipped, predicted ties wrong): 0.3333 over 3 pairs"
    ]
    # without "ranks" the labels give the same order
    no_ranks = [{k: v for k, v in r.items() if k != "ranks"} for r in RANKED]
    assert benchmark_accuracy(no_ranks, "imagereward")["accuracy"] == pytest.approx(1 / 3)


def test_hpsv2_warns_about_prompts_missing_pairs_and_needs_groups():
    result = benchmark_accuracy([r for r in RANKED if r["label"] != "tie"], "hpsv2")  # ties dropped at import
    # A now has 2 of its 3 pairs: 1 - 1 / 2 = 0.5; B 0.5 -> 0.5
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["incomplete_groups"] == 1
    assert "1 of 2 prompts lack some of their pairs" in result["warnings"][0]
    with pytest.raises(ValueError, match="have no 'group'"):
        benchmark_accuracy(FIVE, "hpsv2")


@pytest.mark.parametrize("seed", range(5))
def test_ranking_conventions_match_the_per_image_functions(seed):
    """From a pointwise model's pairs, hpsv2 / imagereward equal the per-image functions on whole rankings."""
    rng = np.random.default_rng(seed)
    scores, ranks, records = [], [], []
    for g in range(6):
        n = int(rng.integers(2, 7))
        s = rng.integers(0, 4, n) / 4  # coarse: model ties happen
        r = rng.integers(1, 4, n)  # human ties happen
        scores.append(s)
        ranks.append(r)
        for i in range(n):
            for j in range(i + 1, n):
                label = "first" if r[i] < r[j] else "second" if r[i] > r[j] else "tie"
                records.append(
                    pointwise(label, float(s[i]), float(s[j]), group=f"g{g}", pair=[i, j], ranks=[int(r[i]), int(r[j])])
                )
    expected_hps = hpsv2_accuracy(scores, ranks)
    expected_ir = imagereward_accuracy(scores, ranks)
    assert benchmark_accuracy(records, "hpsv2")["accuracy"] == pytest.approx(expected_hps, abs=1e-12)
    ir = benchmark_accuracy(records, "imagereward")["accuracy"]
    assert (math.isnan(ir) and math.isnan(expected_ir)) or ir == pytest.approx(expected_ir, abs=1e-12)


def test_probability_conventions_match_the_functions_for_a_pointwise_model():
    rng = np.random.default_rng(0)
    r1, r2 = rng.normal(size=40), rng.normal(size=40)
    r2[:5] = r1[:5]  # model ties
    labels = rng.choice(["first", "second", "tie"], size=40)
    records = [pointwise(str(lab), float(a), float(b)) for lab, a, b in zip(labels, r1, r2)]
    target = np.array([{"first": 0.0, "second": 1.0, "tie": 0.5}[str(lab)] for lab in labels])
    prob = 1 / (1 + np.exp(-(r2 - r1)))  # sigmoid(r2 - r1): the margin's sides and order
    ties = accuracy_with_and_without_ties(prob, target)
    result = benchmark_accuracy(records, "ties")
    assert result["accuracy"] == pytest.approx(ties["acc_without_ties"])
    assert result["accuracy_with_ties"] == pytest.approx(ties["acc_with_ties"])
    pick = benchmark_accuracy(records, "pickscore")
    assert pick["accuracy"] == pytest.approx(pickscore_accuracy(prob, target))
    assert pick["accuracy_ties_dropped"] == pytest.approx(pickscore_accuracy(prob, target, ties="drop"))


def test_auto_picks_the_convention_of_the_source():
    assert SOURCE_CONVENTIONS["pickapic_v2"] == "pickscore"
    assert [
        auto_convention(s)
        for s in ("hpdv2", "imagereward", "imagerewarddb", "videogen_rewardbench", "genai_bench", "hpdv3", "shapes")
    ] == ["hpsv2", "imagereward", "imagereward", "ties", "ties", "pairwise", "pairwise"]
    assert auto_convention("hpdv2", ranked=False) == "pairwise"  # HPDv2 train pairs: no ranking
    assert auto_convention("someone_elses") == "pairwise"

    assert benchmark_accuracy([{**r, "source": "pickapic_v2"} for r in FIVE])["convention"] == "pickscore"
    assert benchmark_accuracy([{**r, "source": "hpdv2"} for r in RANKED])["accuracy"] == pytest.approx(7 / 12)
    assert benchmark_accuracy([{**r, "source": "hpdv2"} for r in FIVE])["convention"] == "pairwise"
    assert benchmark_accuracy([{**r, "source": "genai_bench"} for r in FIVE])["convention"] == "ties"
    with pytest.raises(ValueError, match="different conventions"):
        benchmark_accuracy([{**FIVE[0], "source": "pickapic_v2"}, {**FIVE[1], "source": "hpdv3"}])


def test_other_rows_are_ignored_and_bad_input_is_refused():
    points = [{"key": "p", "label": "yes", "reward": 0.9}, {"key": "q", "reward": 0.1}]
    assert benchmark_accuracy(FIVE + points, "pairwise")["n_pairs"] == 5
    empty = benchmark_accuracy(points, "auto")
    assert (empty["convention"], empty["n"]) == ("pairwise", 0) and math.isnan(empty["accuracy"])
    with pytest.raises(ValueError, match="mix pairwise rewards"):
        benchmark_accuracy([FIVE[0], pointwise("first", 0.3, 0.2)], "pairwise")
    with pytest.raises(ValueError, match="not a finite number"):
        benchmark_accuracy([pairwise("first", float("nan"))], "pairwise")
    with pytest.raises(ValueError, match="unknown convention"):
        benchmark_accuracy(FIVE, "spearman")  # type: ignore[arg-type]
