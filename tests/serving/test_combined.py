"""CombinedReward: per-group normalisation, weights, and a flat component that shows in the logs."""

from __future__ import annotations

import pytest
import torch

from rewarddance.errors import UsageError
from rewarddance.rl.combined import CombinedReward, normalize_in_groups, prompt_groups
from rewarddance.rl.rewards import build_reward, register_reward


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def constant(images, prompts):
    return torch.full((images.shape[0],), 0.7)


def test_zscore_and_rank_are_per_prompt_group():
    groups = prompt_groups(["a", "a", "b", "b", "b", "c"])
    assert groups.tolist() == [0, 0, 1, 1, 1, 2]
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 40.0, 5.0])
    z = normalize_in_groups(rewards, groups, "zscore")
    assert z[:2].tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-4)
    assert z[2:5].mean().item() == pytest.approx(0.0, abs=1e-6) and z[5] == 0  # a group of one gives no signal
    rank = normalize_in_groups(rewards, groups, "rank")
    assert rank.tolist() == pytest.approx([-1.0, 1.0, -0.5, -0.5, 1.0, 0.0])  # ties share their mean rank


def test_weighted_sum_of_normalised_components_and_flat_one_is_logged():
    reward = build_reward(
        {
            "kind": "combined",
            "components": [
                {
                    "reward": "tests.serving.test_combined:brightness",
                    "weight": 2.0,
                    "normalize": "zscore",
                    "name": "bright",
                },
                {"reward": "tests.serving.test_combined:constant", "weight": 1.0, "normalize": "rank", "name": "flat"},
            ],
        }
    )
    assert isinstance(reward, CombinedReward) and not reward.differentiable  # a rank has no gradient
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a", "a", "a", "b", "b", "b"]
    total = reward(images, prompts, [{}] * 6)
    groups = prompt_groups(prompts)
    expected = 2.0 * normalize_in_groups(brightness(images, prompts), groups, "zscore")
    torch.testing.assert_close(total, expected)  # the flat component adds 0 after ranking (all tied)
    logs = reward.log_values()
    assert logs["flat/std"] == 0.0 and logs["flat/flat_groups"] == 1.0 and logs["flat/mean"] == pytest.approx(0.7)
    assert logs["bright/std"] > 0 and logs["bright/flat_groups"] == 0.0
    # The hacking check follows the raw scores: the returned sum has zero mean in every group, whatever the images.
    assert total.sum().abs() < 1e-5
    before = reward.monitored(total)  # of the last call
    torch.testing.assert_close(before, 2.0 * brightness(images, prompts) + 0.7)
    brighter = reward(images + 0.1, prompts, [{}] * 6)
    assert reward.monitored(brighter).mean() > before.mean() + 0.19  # the rise the check must see
    torch.testing.assert_close(brighter, total)  # ...which the normalised sum hides


def test_zscore_only_components_stay_differentiable():
    reward = CombinedReward([{"reward": "tests.serving.test_combined:brightness", "normalize": "zscore"}])
    images = torch.rand(4, 3, 8, 8, requires_grad=True)
    assert reward.differentiable
    reward(images, ["a", "a", "b", "b"], [{}] * 4).pow(2).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_component_mistakes_are_usage_errors():
    with pytest.raises(UsageError, match="at least one"):
        CombinedReward([])
    with pytest.raises(UsageError, match="normalize must be one of"):
        CombinedReward([{"reward": "tests.serving.test_combined:constant", "normalize": "minmax"}])
    with pytest.raises(UsageError, match="expected"):
        CombinedReward([{"reward": "tests.serving.test_combined:constant", "wieght": 2}])


def test_registered_names():
    from rewarddance.rl.rewards import REWARDS

    assert {"remote", "openai", "combined"} <= set(REWARDS)
    with pytest.raises(ValueError):
        register_reward("combined", CombinedReward)  # taken: registered by the serving plug-in
