"""The reward-model losses of RewardDance, as plain functions (the reward read-out, P("yes"),
is :mod:`rewarddance.judge.readout`).

Notation: ``yes_logit`` and ``no_logit`` are the language-model logits of the "yes" and "no"
tokens at the answer position. Everything here is elementwise over a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def yes_no_cross_entropy(yes_logit: torch.Tensor, no_logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy restricted to {yes, no}, with a soft target.

    ``target`` is the probability that the answer is "yes" (1 = yes, 0 = no, 0.5 = tie). With a
    hard target this equals the usual CE of the two-token softmax:
    ``-[t log sigmoid(d) + (1 - t) log sigmoid(-d)]`` with ``d = yes_logit - no_logit``.
    Returns the per-sample loss.
    """
    margin = yes_logit - no_logit
    return F.binary_cross_entropy_with_logits(margin, target.to(margin.dtype), reduction="none")


def bradley_terry_loss(
    reward_preferred: torch.Tensor, reward_rejected: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry loss ``-log sigmoid(r_w - r_l)`` per pair (the paper's regressive baseline).

    Args:
        reward_preferred: Scalar rewards of the preferred (or first) items.
        reward_rejected: Scalar rewards of the rejected (or second) items.
        target: Optional probability that the first item is preferred (soft labels, 0.5 for ties);
            the loss is then the cross-entropy ``-[p log s + (1 - p) log(1 - s)]`` with
            ``s = sigmoid(r_1 - r_2)``. ``None`` means every pair is a clear win of the first.
    """
    margin = reward_preferred - reward_rejected
    if target is None:
        return -F.logsigmoid(margin)
    return F.binary_cross_entropy_with_logits(margin, target.to(margin.dtype), reduction="none")


def pointwise_generative_loss(
    yes_logit_preferred: torch.Tensor,
    no_logit_preferred: torch.Tensor,
    yes_logit_rejected: torch.Tensor,
    no_logit_rejected: torch.Tensor,
    ce_weight: float = 0.1,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pointwise generative objective: Bradley-Terry on P(yes) logits plus a small-weight CE.

    The paper pairs a BT loss on the two images' rewards with a cross-entropy that asks for "yes"
    on the preferred and "no" on the rejected image, without giving the weight. The BT term uses
    the yes-vs-no log-odds ``d = yes_logit - no_logit`` as the score (monotone in P(yes), and
    unbounded, so BT gradients do not vanish near 0 or 1). ``ce_weight`` defaults to 0.1: large
    enough to anchor P(yes) near the right side of 0.5 (the reward stays a calibrated probability),
    small enough that the ranking term dominates. Ties (target 0.5) ask for equal scores and
    P(yes) = 0.5 on both.
    """
    score_w = yes_logit_preferred - no_logit_preferred
    score_l = yes_logit_rejected - no_logit_rejected
    t = torch.ones_like(score_w) if target is None else target.to(score_w.dtype)
    bt = F.binary_cross_entropy_with_logits(score_w - score_l, t, reduction="none")
    ce = F.binary_cross_entropy_with_logits(score_w, t, reduction="none") + F.binary_cross_entropy_with_logits(
        score_l, 1 - t, reduction="none"
    )
    return bt + ce_weight * ce / 2


def pair_label_to_target(label: str) -> float:
    """Probability that the *second* image is better, given a pair label (the pairwise question is
    "is image 2 better than image 1?")."""
    try:
        return {"first": 0.0, "second": 1.0, "tie": 0.5}[label]
    except KeyError:
        raise ValueError(f"pair label must be 'first', 'second' or 'tie', got {label!r}") from None
