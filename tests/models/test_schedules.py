"""Clean-sample prediction and re-noising, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rewarddance.models.schedules import flow_renoise, predict_x0_ddpm, predict_x0_flow, vp_renoise


def test_predict_x0_ddpm_epsilon_v_and_sample() -> None:
    # alpha_bar = 0.64: sqrt = 0.8, sqrt(1 - alpha_bar) = 0.6. x0 = 1, eps = 0.5 -> x_t = 0.8 + 0.3 = 1.1.
    x_t = torch.tensor([[1.1]])
    # epsilon: (1.1 - 0.6 * 0.5) / 0.8 = 1.0
    assert predict_x0_ddpm(torch.tensor([[0.5]]), x_t, 0.64, "epsilon").item() == pytest.approx(1.0)
    # v = 0.8 * 0.5 - 0.6 * 1 = -0.2; x0 = 0.8 * 1.1 - 0.6 * (-0.2) = 0.88 + 0.12 = 1.0
    assert predict_x0_ddpm(torch.tensor([[-0.2]]), x_t, 0.64, "v_prediction").item() == pytest.approx(1.0)
    assert predict_x0_ddpm(torch.tensor([[0.3]]), x_t, 0.64, "sample").item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0_ddpm(x_t, x_t, 0.64, "velocity")  # type: ignore[arg-type]


def test_predict_x0_per_sample_noise_levels() -> None:
    # Two samples with alpha_bar 0.64 and 0.36 (sqrt 0.6, sqrt(1 - .) 0.8); eps = 0 -> x0 = x_t / sqrt(alpha_bar).
    x_t = torch.tensor([[0.8], [0.6]])
    x0 = predict_x0_ddpm(torch.zeros(2, 1), x_t, torch.tensor([0.64, 0.36]))
    torch.testing.assert_close(x0, torch.tensor([[1.0], [1.0]]))


def test_predict_x0_flow() -> None:
    # sigma = 0.25, x0 = 2, eps = -2: x = 0.75 * 2 + 0.25 * (-2) = 1; v = eps - x0 = -4; x0 = 1 - 0.25 * (-4) = 2.
    assert predict_x0_flow(torch.tensor([-4.0]), torch.tensor([1.0]), 0.25).item() == pytest.approx(2.0)
    # Works in float32 even for bfloat16 inputs (schedulers upcast the same way).
    out = predict_x0_flow(torch.tensor([-4.0], dtype=torch.bfloat16), torch.tensor([1.0], dtype=torch.bfloat16), 0.25)
    assert out.dtype == torch.float32


def test_flow_renoise_hand_value_and_marginal() -> None:
    # sigma 0.5 -> 0.75: scale (1 - .75) / (1 - .5) = 0.5; noise std sqrt(.75^2 - (.5 * .5)^2) = sqrt(.5).
    out = flow_renoise(torch.tensor([1.0]), 0.5, 0.75, torch.tensor([1.0]))
    assert out.item() == pytest.approx(0.5 + math.sqrt(0.5))
    # Marginal: x0 = 3 -> x_0.5 = 1.5 + 0.5 eps -> x_0.75 must be N((1 - .75) * 3, .75^2).
    g = torch.Generator().manual_seed(0)
    x_b = 1.5 + 0.5 * torch.randn(200_000, generator=g)
    x_a = flow_renoise(x_b, 0.5, 0.75, torch.randn(200_000, generator=g))
    assert x_a.mean().item() == pytest.approx(0.75, abs=0.01)
    assert x_a.std().item() == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ValueError):
        flow_renoise(x_b, 0.75, 0.5, x_b)  # going to less noise is denoising, not re-noising


def test_vp_renoise_hand_value() -> None:
    # alpha_bar 0.64 -> 0.16: ratio 0.25 -> 0.5 x + sqrt(0.75) z.
    out = vp_renoise(torch.tensor([1.0]), 0.64, 0.16, torch.tensor([1.0]))
    assert out.item() == pytest.approx(0.5 + math.sqrt(0.75))
    assert vp_renoise(torch.tensor([2.0]), 0.5, 0.5, torch.tensor([9.0])).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        vp_renoise(torch.tensor([1.0]), 0.16, 0.64, torch.tensor([1.0]))
