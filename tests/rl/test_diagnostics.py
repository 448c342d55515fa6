"""Reward-hacking flag and sample diversity, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rewarddance.rl.diagnostics import detect_reward_hacking, sample_diversity, trend_slope


def test_trend_slope_by_hand() -> None:
    assert trend_slope([0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.1)
    # steps 0..3, values [.5, .5, .4, .4]: sum (t - 1.5)(y - .45) = -0.2, sum (t - 1.5)^2 = 5 -> -0.04
    assert trend_slope([0.5, 0.5, 0.4, 0.4]) == pytest.approx(-0.04)
    assert trend_slope([1.0, 3.0], steps=[10, 20]) == pytest.approx(0.2)
    assert math.isnan(trend_slope([1.0])) and math.isnan(trend_slope([1.0, 2.0], steps=[5, 5]))


def test_reward_up_oracle_down_is_hacking() -> None:
    steps = [0, 1, 2, 3]
    check = detect_reward_hacking(steps, [0.1, 0.2, 0.3, 0.4], steps, [0.5, 0.5, 0.4, 0.4], window=3)
    # Gains over the window of 3 steps: reward 0.1 * 3 = 0.3, oracle -0.04 * 3 = -0.12.
    assert check.hacking
    assert check.reward_gain == pytest.approx(0.3) and check.oracle_gain == pytest.approx(-0.12)
    assert (check.reward_points, check.oracle_points) == (4, 4)


def test_reward_and_oracle_rising_together_is_not_hacking() -> None:
    steps = [0, 1, 2, 3]
    assert not detect_reward_hacking(steps, [0.1, 0.2, 0.3, 0.4], steps, [0.1, 0.2, 0.3, 0.4], window=3).hacking
    # Flat reward: nothing to flag even if the oracle falls.
    assert not detect_reward_hacking(steps, [0.3] * 4, steps, [0.4, 0.3, 0.2, 0.1], window=3).hacking


def test_flat_oracle_counts_within_tolerance() -> None:
    steps = [0, 1, 2, 3]
    oracle = [0.40, 0.41, 0.40, 0.41]  # slope 0.004 -> gain 0.012 over 3 steps
    rewards = [0.1, 0.2, 0.3, 0.4]
    assert not detect_reward_hacking(steps, rewards, steps, oracle, window=3).hacking  # it did rise a little
    assert detect_reward_hacking(steps, rewards, steps, oracle, window=3, max_oracle_gain=0.02).hacking


def test_window_uses_only_recent_points_and_its_own_steps_per_series() -> None:
    # Rewards every 10 steps; oracle every 100. Early on both rose; over the last 300 steps the oracle stalls.
    reward_steps = list(range(0, 1001, 10))
    rewards = [0.2 + 0.0005 * t for t in reward_steps]
    oracle_steps = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    oracle = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7]
    recent = detect_reward_hacking(reward_steps, rewards, oracle_steps, oracle, window=300)
    assert recent.hacking and recent.oracle_points == 4 and recent.reward_points == 31
    assert recent.reward_gain == pytest.approx(0.15)  # 0.0005 per step x 300
    assert not detect_reward_hacking(reward_steps, rewards, oracle_steps, oracle, window=1000).hacking


def test_too_few_points_never_flags() -> None:
    check = detect_reward_hacking([0, 1, 2], [0.1, 0.5, 0.9], [2], [0.1], window=10)
    assert not check.hacking and check.oracle_points == 1
    assert not detect_reward_hacking([], [], [], [], window=10).hacking


def test_sample_diversity_by_hand() -> None:
    # One prompt, three 4-pixel samples: a = 0, b = 1, c = [0, 0, 1, 1].
    samples = torch.tensor([[[0.0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]]])
    # RMS differences: ab = 1, ac = bc = sqrt(2 / 4) -> mean (1 + 2 * 0.7071) / 3 = 0.80474
    assert sample_diversity(samples).item() == pytest.approx((1 + 2 * math.sqrt(0.5)) / 3, abs=1e-6)
    # Cosine on [1, 0], [0, 1], [1, 1]: 1 - cos = 1, 1 - 1/sqrt(2), 1 - 1/sqrt(2) -> mean 0.52860
    vectors = torch.tensor([[[1.0, 0], [0, 1], [1, 1]]])
    assert sample_diversity(vectors, "cosine").item() == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3, abs=1e-6)


def test_sample_diversity_per_prompt_shapes() -> None:
    images = torch.rand(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[1] = images[1, :1]  # prompt 1 collapsed onto one image
    diversity = sample_diversity(images)
    assert diversity.shape == (2,) and diversity[0] > 0.3 and diversity[1] == 0
    assert torch.isnan(sample_diversity(images[:, :1])).all()
    with pytest.raises(ValueError, match=r"\[P, N"):
        sample_diversity(torch.rand(4, 5))
