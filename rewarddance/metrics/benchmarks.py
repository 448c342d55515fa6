"""Public benchmarks' accuracy conventions (HPSv2, ImageReward, PickScore) and the accuracy of scored pairs
(the records of ``python -m rewarddance score``) in the convention of the benchmark they come from.

Pairs follow the conventions of :mod:`rewarddance.metrics.pairwise` (``prob_second``, ``target``, predicted ties).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from torch import Tensor

from rewarddance.metrics.pairwise import (
    ArrayLike,
    accuracy_with_and_without_ties,
    check_pairs,
    predicted_class,
    target_class,
)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def _check_group(scores: ArrayLike, ranks: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    s, r = _to_numpy(scores), _to_numpy(ranks)
    if s.size != r.size:
        raise ValueError(f"prompt {k}: {s.size} scores but {r.size} ranks")
    if np.isnan(s).any():
        raise ValueError(f"prompt {k}: NaN score")
    return s, r


def hpsv2_accuracy(
    scores_per_prompt: Sequence[ArrayLike],
    ranks_per_prompt: Sequence[ArrayLike],
    pred_tie_discordance: float = 0.5,
) -> float:
    """HPSv2 (HPDv2 test) ranking accuracy: per prompt one minus the fraction of discordant pairs, averaged over prompts.

    For a prompt with ``n`` images, scores ``s`` (higher = better) and human ranks ``r`` (lower =
    better), over the ``n (n - 1) / 2`` pairs ``i < j``:

    ``acc_prompt = 1 - (D + pred_tie_discordance * T) / (n (n - 1) / 2)``,

    with ``D = #{(s_i - s_j)(r_i - r_j) > 0}`` (the model orders the pair against the humans) and
    ``T = #{s_i = s_j, r_i != r_j}`` (the model ties a pair the humans ordered). The result is the
    mean of ``acc_prompt`` over prompts (a macro average; prompts with fewer than 2 images have no
    pairs and are skipped).

    Ties, decided here: a pair the *humans* tie is never discordant (it stays in the denominator),
    as in HPSv2's inversion count. A pair the *model* ties counts ``pred_tie_discordance``
    (default 0.5): HPSv2's evaluation turns scores into ranks with an argsort, which breaks such
    ties in arbitrary order, so a tie is discordant or not by accident; 0.5 is the expectation under a
    random order, and it keeps a constant scorer at 0.5 instead of 1.0. Use 0.0 for the lenient
    reading, 1.0 for the strict one.

    Args:
        scores_per_prompt: Per prompt, the model's score of each image.
        ranks_per_prompt: Per prompt, the human rank of each image (lower = better).
        pred_tie_discordance: Discordance counted for a model-tied, human-ordered pair.

    Returns:
        The mean accuracy over prompts (NaN if no prompt has two images).
    """
    if len(scores_per_prompt) != len(ranks_per_prompt):
        raise ValueError(f"{len(scores_per_prompt)} score lists but {len(ranks_per_prompt)} rank lists")
    accs = []
    for k, (scores, ranks) in enumerate(zip(scores_per_prompt, ranks_per_prompt)):
        s, r = _check_group(scores, ranks, k)
        if s.size < 2:
            continue
        i, j = _pairs(s.size)
        ds, dr = s[i] - s[j], r[i] - r[j]
        discordant = np.count_nonzero(ds * dr > 0)
        pred_ties = np.count_nonzero((ds == 0) & (dr != 0))
        accs.append(1.0 - (discordant + pred_tie_discordance * pred_ties) / i.size)
    return float(np.mean(accs)) if accs else math.nan


def imagereward_accuracy(scores_per_prompt: Sequence[ArrayLike], rankings_per_prompt: Sequence[ArrayLike]) -> float:
    """ImageReward test-set accuracy: all pairs ``i < j``, human ties skipped, model ties wrong, micro-averaged.

    ``acc = #{pairs with r_i != r_j and (s_i - s_j)(r_j - r_i) > 0} / #{pairs with r_i != r_j}``
    summed over all prompts (every pair weighs the same, so prompts with more images weigh more).
    ``s`` are the model's scores (higher = better) and ``r`` the human ranking (1 = best, lower =
    better; ties and gaps allowed). A pair with ``s_i = s_j`` is never correct.

    Args:
        scores_per_prompt: Per prompt, the model's score of each generation.
        rankings_per_prompt: Per prompt, the human ranking of each generation.

    Returns:
        The pair accuracy (NaN if there is no human-ordered pair).
    """
    if len(scores_per_prompt) != len(rankings_per_prompt):
        raise ValueError(f"{len(scores_per_prompt)} score lists but {len(rankings_per_prompt)} rankings")
    correct = total = 0
    for k, (scores, ranking) in enumerate(zip(scores_per_prompt, rankings_per_prompt)):
        s, r = _check_group(scores, ranking, k)
        if s.size < 2:
            continue
        i, j = _pairs(s.size)
        ds, dr = s[i] - s[j], r[i] - r[j]
        ordered = dr != 0
        total += int(np.count_nonzero(ordered))
        correct += int(np.count_nonzero(ds * dr < 0))  # implies dr != 0 and ds != 0
    return correct / total if total else math.nan


def pickscore_accuracy(
    prob_second: ArrayLike,
    target: ArrayLike,
    tie_threshold: float = 0.0,
    ties: Literal["half", "drop"] = "half",
) -> float:
    """Pick-a-Pic accuracy with PickScore's tie convention.

    Predicted class: tie when ``|p - 0.5| <= tie_threshold``, else the side of 0.5. Score per pair:
    1 when prediction and label agree (both ties count as agreeing), 0.5 when exactly one of them
    is a tie, 0 otherwise.

    * ``ties="half"`` (PickScore's metric): averaged over all pairs, so a true tie earns 0.5 for
      any non-tie prediction and 1 for a predicted tie.
    * ``ties="drop"`` (most later papers): pairs labelled tie are removed first; with the default
      ``tie_threshold = 0`` this is plain accuracy except that an exact 0.5 earns 0.5.

    PickScore states its threshold on ``|p_0 - p_1| = 2 |p - 0.5|`` (tuned on the validation
    split): pass half of it here.

    Args:
        prob_second: ``P(second is better)`` per pair.
        target: 1 / 0 / 0.5 per pair (Pick-a-Pic ``label_1``).
        tie_threshold: Half-width of the predicted-tie band around 0.5.
        ties: ``"half"`` or ``"drop"``.

    Returns:
        The mean score (NaN over zero pairs).
    """
    if ties not in ("half", "drop"):
        raise ValueError(f"ties must be 'half' or 'drop', got {ties!r}")
    p, t = check_pairs(prob_second, target)
    true, pred = target_class(t), predicted_class(p, tie_threshold)
    score = (pred == true).double() + 0.5 * ((pred == 0) ^ (true == 0)).double()
    if ties == "drop":
        score = score[true != 0]
    return float(score.mean()) if score.numel() else math.nan


# --------------------------------------------------------------------------------------------
# benchmark accuracy of scored pairs (the records of ``python -m rewarddance score``)
# --------------------------------------------------------------------------------------------

BenchmarkConvention = Literal["auto", "pairwise", "pickscore", "hpsv2", "imagereward", "ties"]

SOURCE_CONVENTIONS: dict[str, str] = {
    "pickapic_v2": "pickscore",
    "hpdv2": "hpsv2",
    "imagereward": "imagereward",
    "imagerewarddb": "imagereward",
    "videogen_rewardbench": "ties",
    "genai_bench": "ties",
    "hpdv3": "pairwise",
    "shapes": "pairwise",
}
"""``Sample.source`` of an imported benchmark -> the convention its accuracy is reported in.

HPDv2 pairs without a ranking (the train split) fall back to ``pairwise``; so does any source
not listed here."""

_LABEL_TARGET = {"first": 0.0, "second": 1.0, "tie": 0.5}


def auto_convention(source: str | None, ranked: bool = True) -> str:
    """The convention ``"auto"`` picks for pairs from ``source``.

    Args:
        source: ``Sample.source`` of the pairs (the record's ``"source"``).
        ranked: Whether the pairs carry their ranking (a ``"group"``): HPDv2 test pairs do, the
            train pairs do not and get ``pairwise``.
    """
    convention = SOURCE_CONVENTIONS.get(source or "", "pairwise")
    return "pairwise" if convention == "hpsv2" and not ranked else convention


def _pair_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    pairs = [r for r in records if r.get("label") in _LABEL_TARGET]
    for r in pairs:
        for name in ("reward", "reward_first"):
            value = r.get(name)
            if name == "reward" and value is None:
                raise ValueError(f"record {r.get('key')!r}: no 'reward'")
            if value is not None and not math.isfinite(float(value)):
                raise ValueError(f"record {r.get('key')!r}: {name} is {value!r}, not a finite number")
    pointwise = {r.get("reward_first") is not None for r in pairs}
    if len(pointwise) > 1:
        raise ValueError(
            "records mix pairwise rewards (P(second better), no 'reward_first') and pointwise ones "
            "('reward' and 'reward_first'): score them separately"
        )
    return pairs


def _margins(pairs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Per pair ``m > 0``: the second is preferred, ``m < 0`` the first, ``m = 0`` a tie."""
    if pairs and pairs[0].get("reward_first") is not None:
        return np.array([float(r["reward"]) - float(r["reward_first"]) for r in pairs], dtype=np.float64)
    return np.array([float(r["reward"]) - 0.5 for r in pairs], dtype=np.float64)


def _pseudo_prob(pairs: Sequence[Mapping[str, Any]], margins: np.ndarray) -> tuple[np.ndarray, float]:
    """``prob_second`` for the probability-based metrics, and the scale back to reward units.

    Pairwise records: the reward itself (scale 1: ``|p - 0.5| = |m|``). Pointwise records:
    ``0.5 + 0.5 m / max|m|``, which keeps the side of 0.5 of every pair (a non-zero margin never
    rounds to 0.5) and the order of ``|m|``, all that the side-of-0.5 decisions and the tie sweep use;
    a threshold ``eps`` on ``|p - 0.5|`` is then ``2 eps max|m|`` on ``|reward - reward_first|``.
    """
    if not pairs or pairs[0].get("reward_first") is None:
        return np.array([float(r["reward"]) for r in pairs], dtype=np.float64), 1.0
    scale = float(np.abs(margins).max()) if margins.size else 0.0
    if scale == 0.0:
        return np.full(margins.shape, 0.5), 1.0
    p = np.clip(0.5 + 0.5 * (margins / scale), 0.0, 1.0)
    rounded = (p == 0.5) & (margins != 0)
    p[rounded] = np.where(margins[rounded] > 0, np.nextafter(0.5, 1.0), np.nextafter(0.5, 0.0))
    return p, 2.0 * scale


def _pair_ranks(r: Mapping[str, Any]) -> list[float]:
    """``[rank of first, rank of second]`` (lower = better): the record's ``ranks``, else from its label."""
    ranks = r.get("ranks")
    if ranks is not None:
        if len(ranks) != 2:
            raise ValueError(
                f"record {r.get('key')!r}: 'ranks' must hold the ranks of the pair's two images, got {ranks!r}"
            )
        return [float(ranks[0]), float(ranks[1])]
    return {"first": [1.0, 2.0], "second": [2.0, 1.0], "tie": [1.0, 1.0]}[r["label"]]


def benchmark_accuracy(
    records: Iterable[Mapping[str, Any]], convention: BenchmarkConvention = "auto"
) -> dict[str, Any]:
    """The accuracy of scored pairs in a public benchmark's convention.

    ``records`` are the rows of the ``score`` command's JSONL (any mappings with these keys):
    ``label`` (``first`` / ``second`` / ``tie``; other rows, e.g. point samples, are ignored),
    ``reward`` and, for pointwise / regressive models, ``reward_first``; the ranking conventions
    also read ``group`` (the ranking a pair comes from), ``ranks`` (``[rank of first, rank of
    second]``, lower = better; without it the label gives them) and ``source``.

    Per pair the model's margin is ``m = reward - 0.5`` for a pairwise model (``reward = P(second
    better)``) and ``m = reward - reward_first`` otherwise; ``m > 0`` picks the second image, ``m < 0``
    the first, ``m = 0`` is a predicted tie. The conventions:

    * ``pairwise``: pairs labelled tie dropped, a predicted tie wrong
      (:func:`accuracy_with_and_without_ties` ``acc_without_ties``). HPDv3, shapes.
    * ``pickscore``: :func:`pickscore_accuracy` with ties 0.5 credit over all pairs (``accuracy``),
      and with tie pairs dropped (``accuracy_ties_dropped``). Pick-a-Pic.
    * ``hpsv2``: per ranking (``group``), ``1 - (discordant + 0.5 model-tied) / pairs``, averaged over
      rankings. A pair is discordant when ``m`` disagrees with the ranks; human-tied pairs count as
      concordant and stay in the denominator. Computed with :func:`hpsv2_accuracy` on each group's
      pairs as two-image rankings ``scores [0, m]``, ``ranks [r_first, r_second]``: each gives the
      pair's credit (1, 0.5 or 0) and their mean is the group's ``1 - (D + 0.5 T) / P``, which equals
      :func:`hpsv2_accuracy` of per-image scores when the group holds all of its pairs (and needs no
      per-image score, so it works for pairwise models too). HPDv2 test.
    * ``imagereward``: micro pair accuracy, human-tied pairs skipped, model ties wrong:
      :func:`imagereward_accuracy` with every pair as a two-image ranking (it is micro-averaged over
      pairs, so this is the same number as over whole rankings). ImageReward test, ImageRewardDB.
    * ``ties``: :func:`accuracy_with_and_without_ties` with the tie threshold calibrated on these pairs:
      ``accuracy`` without ties and ``accuracy_with_ties``. VideoGen-RewardBench, GenAI-Bench.
    * ``auto``: the convention of the records' ``source`` (:data:`SOURCE_CONVENTIONS`,
      :func:`auto_convention`); records whose sources need different conventions raise a ``ValueError``.

    The probability-based functions get ``P(second better)``: a pairwise model's reward, or for
    pointwise records ``0.5 + 0.5 m / max|m|`` (same sides of 0.5 and order of ``|m|``, see
    ``_pseudo_prob``); ``tie_threshold`` is reported in the margin's units.

    Returns:
        ``convention``, ``sources`` (sorted), ``accuracy`` (the headline number, NaN when nothing
        counts), ``n`` (what it is averaged over: pairs, or rankings for ``hpsv2``), ``unit``
        (``"pairs"`` / ``"prompts"``), ``n_pairs`` (labelled pairs read), ``lines`` (one printable line
        per number, named by the convention), ``warnings``, and per convention:
        ``accuracy_ties_dropped`` / ``n_ties_dropped`` (pickscore), ``n_groups`` / ``incomplete_groups``
        (hpsv2), ``accuracy_with_ties`` / ``n_with_ties`` / ``tie_threshold`` (ties).
    """
    pairs = _pair_records(records)
    sources = sorted({str(r.get("source") or "unknown") for r in pairs})
    if convention == "auto":
        picked = {
            s: auto_convention(s, all(r.get("group") is not None for r in pairs if (r.get("source") or "unknown") == s))
            for s in sources
        }
        if len(set(picked.values())) > 1:
            found = ", ".join(f"{s} -> {c}" for s, c in picked.items())
            raise ValueError(f"records from sources with different conventions ({found}): score them separately")
        convention = next(iter(picked.values()), "pairwise")  # type: ignore[assignment]
    if convention not in ("pairwise", "pickscore", "hpsv2", "imagereward", "ties"):
        raise ValueError(
            f"unknown convention {convention!r}; known: auto, pairwise, pickscore, hpsv2, imagereward, ties"
        )
    margins = _margins(pairs)
    prob, scale = _pseudo_prob(pairs, margins)
    target = np.array([_LABEL_TARGET[r["label"]] for r in pairs], dtype=np.float64)
    n_ties = int(np.count_nonzero(target == 0.5))
    out: dict[str, Any] = {"convention": convention, "sources": sources, "n_pairs": len(pairs), "warnings": []}

    def line(description: str, value: float, n: int, unit: str = "pairs") -> str:
        return f"{convention} accuracy ({description}): {value:.4f} over {n} {unit}"

    if convention == "pairwise":
        acc = accuracy_with_and_without_ties(prob, target, tie_threshold=0.0)["acc_without_ties"]
        n = len(pairs) - n_ties
        out.update(accuracy=acc, n=n, unit="pairs", lines=[line("GT ties dropped, predicted ties wrong", acc, n)])
    elif convention == "pickscore":
        acc = pickscore_accuracy(prob, target, ties="half")
        dropped = pickscore_accuracy(prob, target, ties="drop")
        n, n_dropped = len(pairs), len(pairs) - n_ties
        out.update(
            accuracy=acc,
            n=n,
            unit="pairs",
            accuracy_ties_dropped=dropped,
            n_ties_dropped=n_dropped,
            lines=[line("ties 0.5 credit", acc, n), line("GT ties dropped", dropped, n_dropped)],
        )
    elif convention == "imagereward":
        ranks = [_pair_ranks(r) for r in pairs]
        acc = imagereward_accuracy([[0.0, m] for m in margins], ranks)
        n = sum(1 for a, b in ranks if a != b)
        out.update(
            accuracy=acc, n=n, unit="pairs", lines=[line("pairs, GT ties skipped, predicted ties wrong", acc, n)]
        )
    elif convention == "hpsv2":
        missing = [r.get("key") for r in pairs if r.get("group") is None]
        if missing:
            raise ValueError(
                f"the hpsv2 convention averages over the rankings pairs come from, but {len(missing)} records "
                f"(e.g. {missing[0]!r}) have no 'group': score shards imported from a ranking (HPDv2 test)"
            )
        groups: dict[tuple[str, str], list[int]] = {}
        for k, r in enumerate(pairs):
            groups.setdefault((str(r.get("source") or "unknown"), str(r["group"])), []).append(k)
        accs, incomplete = [], 0
        for members in groups.values():
            accs.append(hpsv2_accuracy([[0.0, margins[k]] for k in members], [_pair_ranks(pairs[k]) for k in members]))
            indices = [pairs[k].get("pair") for k in members]
            if all(p is not None for p in indices):
                n_images = max(max(int(i), int(j)) for i, j in indices) + 1  # type: ignore[misc]
                if len({tuple(p) for p in indices}) < n_images * (n_images - 1) // 2:  # type: ignore[arg-type]
                    incomplete += 1
        acc = float(np.mean(accs)) if accs else math.nan
        out.update(
            accuracy=acc,
            n=len(groups),
            unit="prompts",
            n_groups=len(groups),
            incomplete_groups=incomplete,
            lines=[
                line("per prompt 1 - discordant/total, mean over prompts", acc, len(groups), "prompts")
                + f" ({len(pairs)} pairs)"
            ],
        )
        if incomplete:
            out["warnings"].append(
                f"{incomplete} of {len(groups)} prompts lack some of their pairs (ties dropped or max_samples at "
                "import?): their accuracy is over the pairs present, HPSv2 counts every pair"
            )
    else:  # ties
        res = accuracy_with_and_without_ties(prob, target, tie_threshold=None)
        eps = res["tie_threshold"]
        threshold = eps * scale if math.isfinite(eps) else eps
        n = len(pairs) - n_ties
        what = "|reward - reward_first|" if pairs and pairs[0].get("reward_first") is not None else "|P - 0.5|"
        out.update(
            accuracy=res["acc_without_ties"],
            n=n,
            unit="pairs",
            accuracy_with_ties=res["acc_with_ties"],
            n_with_ties=len(pairs),
            tie_threshold=threshold,
            lines=[
                line("w/o ties: GT ties dropped, predicted ties wrong", res["acc_without_ties"], n),
                line(
                    f"w/ ties: three-class, predicted tie when {what} <= {threshold:.4g}, calibrated on these pairs",
                    res["acc_with_ties"],
                    len(pairs),
                ),
            ],
        )
    return out
