"""Losses against numbers worked out by hand."""

import math

import pytest
import torch

from rewarddance.judge.losses import (
    bradley_terry_loss,
    pair_label_to_target,
    pointwise_generative_loss,
    yes_no_cross_entropy,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_yes_no_cross_entropy_by_hand():
    # target yes: -log sigmoid(2) = log(1 + e^-2) = 0.126928
    assert yes_no_cross_entropy(t(2.0), t(0.0), t(1.0)).item() == pytest.approx(0.126928, abs=1e-6)
    # target no: -log sigmoid(-2) = 2.126928
    assert yes_no_cross_entropy(t(2.0), t(0.0), t(0.0)).item() == pytest.approx(2.126928, abs=1e-6)
    # tie at equal logits: log 2
    assert yes_no_cross_entropy(t(0.0), t(0.0), t(0.5)).item() == pytest.approx(math.log(2), abs=1e-9)


def test_bradley_terry_by_hand():
    assert bradley_terry_loss(t(1.0), t(0.0)).item() == pytest.approx(0.313262, abs=1e-6)
    # soft target equal to the model's own probability is at the entropy minimum: check the gradient is 0
    margin = torch.tensor([0.7], requires_grad=True)
    loss = bradley_terry_loss(margin, torch.zeros(1), target=torch.sigmoid(torch.tensor([0.7])))
    loss.sum().backward()
    assert margin.grad.abs().item() < 1e-7


def test_pointwise_generative_loss_by_hand():
    # scores: preferred 1 - 0 = 1, rejected 0 - 1 = -1
    # BT: -log sigmoid(2) = 0.126928; CE: 2 * -log sigmoid(1) = 0.626523; 0.126928 + 0.1 * 0.626523 / 2
    loss = pointwise_generative_loss(t(1.0), t(0.0), t(0.0), t(1.0), ce_weight=0.1)
    assert loss.item() == pytest.approx(0.158254, abs=1e-6)
    assert pointwise_generative_loss(t(1.0), t(0.0), t(0.0), t(1.0), ce_weight=0.0).item() == pytest.approx(
        0.126928, abs=1e-6
    )


def test_pair_label_to_target():
    assert [pair_label_to_target(x) for x in ("first", "second", "tie")] == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="pair label"):
        pair_label_to_target("left")
