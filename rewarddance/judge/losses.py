"""The reward-model losses of RewardDance, as plain functions (the reward read-out, P("yes"),
is :mod:`rewarddance.judge.readout`).

Notation: ``yes_logit`` and ``no_logit`` are the language-model logits of the "yes" and "no"
tokens at the answer position. Everything here is elementwise over a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rewarddance.models.logits import Normalization


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


def answer_cross_entropy(log_probs: Tensor, target: Tensor, normalization: Normalization = "yes_no") -> Tensor:
    r"""Cross-entropy of the judgment token against a soft target ``t = P(yes)``, per row.

    ``log_probs`` are ``[n, 2]`` log P(yes), log P(no) (see ``rewarddance.judge.readout``).

    - ``yes_no``: :func:`yes_no_cross_entropy`,
      :math:`-[t \log\sigma(d) + (1-t)\log\sigma(-d)]` with :math:`d = z_{yes} - z_{no}`
      (the two-token softmax; log P(yes) - log P(no) = d).
    - ``vocab``: :math:`-[t \log P_V(yes) + (1-t) \log P_V(no)]` over the full vocabulary; for a
      hard target this is the usual language-model loss on the answer token.
    """
    target = target.to(log_probs.dtype)
    if normalization == "yes_no":
        return yes_no_cross_entropy(log_probs[:, 0], log_probs[:, 1], target)
    return -(target * log_probs[:, 0] + (1 - target) * log_probs[:, 1])


def judgment_positions(answer_lengths: Tensor, judgment_index: Tensor, kept: int) -> Tensor:
    """Where each row's judgment token is predicted, among the last ``kept`` answer-predicting logits.

    With left padding every answer ends at the last position; a row's answer of ``n`` tokens
    occupies slice positions ``kept - n .. kept - 1``. ``judgment_index`` counts within the answer
    from the start (``0``: judgment first) or, when negative, from the end (``-2``: the judgment
    before the end-of-turn token, reasons first).
    """
    start = kept - answer_lengths
    return torch.where(judgment_index >= 0, start + judgment_index, kept + judgment_index)


def rationale_token_loss(logits: Tensor, labels: Tensor, judgment: Tensor) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy per row over answer tokens other than the judgment.

    Args:
        logits: ``[n, K, vocab]`` logits predicting the last ``K`` tokens.
        labels: ``[n, K]`` those tokens (-100 where not an answer token).
        judgment: ``[n]`` slice position of each row's judgment token (trained separately, with a
            soft target).

    Returns:
        ``(loss [n], token count [n])``; rows without rationale tokens have loss 0 and count 0.
    """
    labels = labels.clone()
    labels[torch.arange(labels.shape[0], device=labels.device), judgment] = -100
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    count = (labels != -100).sum(dim=1)
    return ce.sum(dim=1) / count.clamp_min(1), count


def probability_cross_entropy_sum(prob: Tensor, target: Tensor) -> Tensor:
    """Summed binary cross-entropy of predicted probabilities (clamped to [1e-7, 1 - 1e-7]) against
    target probabilities: the evaluation loss of P(second better) over a set's pairs."""
    return F.binary_cross_entropy(prob.float().clamp(1e-7, 1 - 1e-7), target.float(), reduction="sum")
