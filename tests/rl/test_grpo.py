"""GRPO (Flow-GRPO and DDIM-SDE): the SDE steps, advantages, the clipped loss and KL by hand, and the exact ratio-1 recompute."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from diffusers import DDIMScheduler

from rewarddance.models.adapters import adapter_for
from rewarddance.models.generators import Generator, load_generator
from rewarddance.rl.grpo import (
    ddim_sde_mean_std,
    flow_sde_mean_std,
    flow_sde_std,
    flow_sde_step,
    gaussian_log_prob,
    group_advantages,
    grpo_loss,
    recompute_step,
    sample_trajectory,
    transition_kl,
)
from tests.rl.helpers import PROMPTS, SIDE

# --------------------------------------------------------------------------------------------- SDE step


def test_sde_step_by_hand() -> None:
    # x = 1, v = 0.5, sigma 0.5 -> 0.25 (dt = -0.25), a = 0.5:
    # g = 0.5 * sqrt(0.5 / 0.5) = 0.5
    # mean = 1 * (1 + 0.25 * (-0.25) / (2 * 0.5)) + 0.5 * (1 + 0.25 * 0.5 / (2 * 0.5)) * (-0.25)
    #      = 0.9375 - 0.140625 = 0.796875;  std = 0.5 * sqrt(0.25) = 0.25
    x, v = torch.tensor([[1.0]]), torch.tensor([[0.5]])
    mean, std = flow_sde_mean_std(v, x, 0.5, 0.25, 0.5)
    assert mean.item() == pytest.approx(0.796875) and std.item() == pytest.approx(0.25)
    # A stored next latent one std above the mean: log N = -1/2 - log(0.25) - log(sqrt(2 pi)) = -0.0326441
    step = flow_sde_step(v, x, 0.5, 0.25, 0.5, prev_sample=torch.tensor([[1.046875]]))
    assert step.log_prob.item() == pytest.approx(-0.5 - math.log(0.25) - 0.5 * math.log(2 * math.pi), abs=1e-6)
    # a -> 0 gives back the Euler ODE step x + v dt = 1 - 0.125.
    assert flow_sde_mean_std(v, x, 0.5, 0.25, 0.0)[0].item() == pytest.approx(0.875)


def test_ddim_sde_step_by_hand() -> None:
    # x = 1, x0 = 0.5, alpha_bar 0.5 -> 0.8, eta = 1:
    # eps = (1 - sqrt(.5) * .5) / sqrt(.5) = 0.914214; s = sqrt(.2 / .5) * sqrt(1 - .5 / .8) = 0.387298;
    # mean = sqrt(.8) * .5 + sqrt(1 - .8 - s^2 = .05) * eps = 0.447214 + 0.204424 = 0.651638.
    eps = (torch.tensor([1.0]) - math.sqrt(0.5) * 0.5) / math.sqrt(0.5)
    mean, std = ddim_sde_mean_std(torch.tensor([0.5]), eps, 0.5, 0.8, eta=1.0)
    assert float(std) == pytest.approx(0.387298, abs=1e-6)
    assert float(mean) == pytest.approx(0.651638, abs=1e-6)
    # eta = 0 is the deterministic DDIM step: sqrt(.8) * .5 + sqrt(.2) * eps = 0.856063.
    mean, std = ddim_sde_mean_std(torch.tensor([0.5]), eps, 0.5, 0.8, eta=0.0)
    assert float(std) == 0.0 and float(mean) == pytest.approx(0.856063, abs=1e-6)
    # The last step (to alpha_bar = 1) lands on the predicted clean latent, without noise.
    mean, std = ddim_sde_mean_std(torch.tensor([0.5]), eps, 0.5, 1.0, eta=1.0)
    assert float(std) == 0.0 and float(mean) == pytest.approx(0.5)


def test_sde_std_at_sigma_one_uses_sigma_max() -> None:
    # sigma = 1 would divide by zero: the denominator takes sigma_max = 0.75 -> g = a * sqrt(1 / 0.25) = 2a.
    assert flow_sde_std(torch.tensor([1.0, 0.5]), 0.7, sigma_max=0.75).tolist() == pytest.approx([1.4, 0.7])
    with pytest.raises(ValueError, match="sigma_max"):
        flow_sde_std(1.0, 0.7)


def test_log_prob_reductions_and_per_sample_sigmas() -> None:
    mean, value = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    per_element = torch.tensor([-0.5, 0.0]) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_log_prob(value, mean, 1.0), per_element)
    torch.testing.assert_close(gaussian_log_prob(value, mean, 1.0, reduce="sum"), 3 * per_element)
    # Per-sample sigmas broadcast over the latent; each row equals the scalar computation.
    x, v = torch.ones(2, 4), torch.full((2, 4), 0.5)
    mean_b, std_b = flow_sde_mean_std(v, x, torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.6]), 0.7)
    mean_0, std_0 = flow_sde_mean_std(v[:1], x[:1], 0.8, 0.6, 0.7)
    torch.testing.assert_close(mean_b[1:], mean_0)
    torch.testing.assert_close(std_b[1].reshape(()), std_0)


@pytest.mark.parametrize("noise_level", [0.7, 1.0])
def test_sde_keeps_the_flow_marginals(noise_level: float) -> None:
    # Data x0 ~ N(0, c^2), c = 0.5: x_sigma ~ N(0, (1 - sigma)^2 c^2 + sigma^2) and the exact velocity is
    # E[eps - x0 | x] = (sigma - (1 - sigma) c^2) / s^2 * x. Run the SDE from pure noise: the samples must end with
    # std c. (A wrong sign in the score correction inflates or deflates it by far more than the tolerance.)
    c, steps = 0.5, 100
    g = torch.Generator().manual_seed(0)
    sigmas = torch.linspace(1, 0, steps + 1)
    x = torch.randn(50_000, 1, generator=g)
    for k in range(steps):
        s = sigmas[k]
        v = (s - (1 - s) * c**2) / ((1 - s) ** 2 * c**2 + s**2) * x
        x = flow_sde_step(v, x, s, sigmas[k + 1], noise_level, sigma_max=sigmas[1], generator=g).prev_sample
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.std().item() == pytest.approx(c, abs=0.015)


# --------------------------------------------------------------------------------------------- advantages


def test_group_advantages_by_hand() -> None:
    # Group a = [1, 2, 3]: mean 2, population std sqrt(2/3) -> +-1 / (0.816497 + 1e-4); group b = [5, 5, 5] -> 0.
    a = 1 / (math.sqrt(2 / 3) + 1e-4)
    expected = torch.tensor([-a, 0.0, a, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 2, 3, 5, 5, 5]), 3), expected)
    # The same groups given by prompt labels, interleaved.
    labels = ["p", "q", "p", "q", "p", "q"]
    interleaved = group_advantages(torch.tensor([1.0, 5, 2, 5, 3, 5]), labels)
    torch.testing.assert_close(interleaved, torch.tensor([-a, 0.0, 0.0, 0.0, a, 0.0]))
    # Unbiased std of [1, 2, 3] is 1.
    unbiased = group_advantages(torch.tensor([1.0, 2, 3]), 3, unbiased=True, eps=0.0)
    torch.testing.assert_close(unbiased, torch.tensor([-1.0, 0.0, 1.0]))
    # A group of one sample has nothing to compare with.
    assert group_advantages(torch.tensor([0.3, 0.9]), ["x", "y"]).tolist() == [0.0, 0.0]
    # Global std: [1, 3 | 5, 7] -> centred per group [-1, 1, -1, 1], divided by the batch std sqrt(5) (population).
    glob = group_advantages(torch.tensor([1.0, 3, 5, 7]), 2, global_std=True, eps=0.0)
    torch.testing.assert_close(glob, torch.tensor([-1.0, 1, -1, 1]) / math.sqrt(5))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.ones(6), 4)


# --------------------------------------------------------------------------------------------- loss


def test_clipped_loss_by_hand() -> None:
    # ratios [1.5, 0.5, 1.0], advantages [1, -1, 2], clip 0.2:
    #   sample 0: max(-1.5, -1.2) = -1.2 (clipped); sample 1: max(0.5, 0.8) = 0.8 (clipped); sample 2: -2.
    #   policy loss = (-1.2 + 0.8 - 2) / 3 = -0.8; only sample 2 has a gradient: d/dlogp = -A r / 3 = -2/3.
    old = torch.zeros(3)
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.0])).requires_grad_()
    out = grpo_loss(log_prob, old, torch.tensor([1.0, -1.0, 2.0]), clip_range=0.2)
    assert out.policy_loss.item() == pytest.approx(-0.8)
    assert out.loss.item() == pytest.approx(-0.8) and out.kl.item() == 0.0
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    assert out.approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)
    out.loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, 0.0, -2 / 3]))
    # KL term: mean([0.3, 0.6, 0.9]) = 0.6, times 0.1.
    with_kl = grpo_loss(
        log_prob, old, torch.tensor([1.0, -1.0, 2.0]), clip_range=0.2, kl=torch.tensor([0.3, 0.6, 0.9]), kl_coef=0.1
    )
    assert with_kl.loss.item() == pytest.approx(-0.8 + 0.06)
    # Advantages beyond adv_clip_max are clipped: A = 10 -> 5, ratio 1 -> loss -5.
    assert grpo_loss(torch.zeros(1), torch.zeros(1), torch.tensor([10.0])).loss.item() == pytest.approx(-5.0)


def test_transition_kl_by_hand() -> None:
    # ||[1, 2] - [0, 0]||^2 / (2 * 2^2) = 5 / 8; element mean: 2.5 / 8.
    mean, ref = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    assert transition_kl(mean, ref, 2.0, reduce="sum").item() == pytest.approx(0.625)
    assert transition_kl(mean, ref, 2.0).item() == pytest.approx(0.3125)
    assert transition_kl(mean, mean, 0.1).item() == 0.0


# --------------------------------------------------------------------------------------------- tiny generators


def _ddim_sd15() -> Generator:
    generator = load_generator("tiny-sd15")  # own copy: its scheduler is replaced
    # set_alpha_to_one: DDIM's last step then ends at alpha_bar = 1, as the adapters' schedules do.
    generator.pipeline.scheduler = DDIMScheduler.from_config(generator.scheduler.config, set_alpha_to_one=True)
    return generator


@pytest.mark.parametrize("family", ["sd3", "flux", "sd15-ddim"])
def test_importance_ratio_is_exactly_one_on_the_first_recompute(tiny: Callable[[str], Generator], family: str) -> None:
    generator = _ddim_sd15() if family == "sd15-ddim" else tiny(family)
    adapter = adapter_for(generator)
    context = adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=4).repeat_interleave(2)
    trajectory = sample_trajectory(adapter, context, adapter.initial_latents(context, 0), generator=1)
    assert trajectory.latents.shape[:2] == (4, 5) and trajectory.log_probs.shape == (4, 4)
    assert torch.isfinite(trajectory.log_probs).all()
    # A UNet's last DDIM step (to the clean latent) has no noise: deterministic, log-prob 0.
    last_stochastic = family != "sd15-ddim"
    assert bool(trajectory.stochastic[-1]) == last_stochastic
    for step in torch.nonzero(trajectory.stochastic).flatten().tolist():
        recomputed = recompute_step(adapter, context, trajectory, step)  # with gradient, as in training
        ratio = torch.exp(recomputed.log_prob - trajectory.log_probs[:, step])
        assert torch.equal(recomputed.log_prob, trajectory.log_probs[:, step]), step
        assert torch.equal(ratio, torch.ones(4))
        assert recomputed.mean.requires_grad
    # A sub-batch recompute (a different batch layout) agrees to float tolerance, not necessarily bit for bit.
    sub = recompute_step(adapter, context.select([1, 2]), trajectory.select([1, 2]), 1)
    torch.testing.assert_close(sub.log_prob, trajectory.log_probs[[1, 2], 1], atol=1e-5, rtol=0)


def test_ratio_moves_after_an_update_and_gradients_reach_the_transformer() -> None:
    generator = load_generator("tiny-sd3")  # own copy: its weights change here
    adapter = adapter_for(generator)
    context = adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=3)
    trajectory = sample_trajectory(adapter, context, adapter.initial_latents(context, 0), generator=0)
    advantages = torch.tensor([1.0, -1.0])
    optimizer = torch.optim.SGD(generator.denoiser.parameters(), lr=1e-2)
    step = recompute_step(adapter, context, trajectory, 1)
    grpo_loss(step.log_prob, trajectory.log_probs[:, 1], advantages, clip_range=0.2).loss.backward()
    grads = [p.grad for p in generator.denoiser.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    optimizer.step()
    with torch.no_grad():
        after = recompute_step(adapter, context, trajectory, 1)
    ratio = torch.exp(after.log_prob - trajectory.log_probs[:, 1])
    assert not torch.equal(ratio, torch.ones(2))
    # The update raised the likelihood of the positive-advantage sample relative to the negative one.
    assert ratio[0] > ratio[1]


def test_ode_steps_record_no_log_prob(tiny: Callable[[str], Generator]) -> None:
    adapter = adapter_for(tiny("sd3"))
    context = adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=3, guidance_scale=1.0)
    noise = adapter.initial_latents(context, 0)
    trajectory = sample_trajectory(adapter, context, noise, sde_steps=[1], generator=0)
    assert trajectory.stochastic.tolist() == [False, True, False]
    assert trajectory.log_probs[:, 0].tolist() == [0.0, 0.0] and (trajectory.log_probs[:, 1] != 0).all()
    with pytest.raises(ValueError, match="deterministic"):
        recompute_step(adapter, context, trajectory, 0)
    # With no SDE step at all the rollout is the pipeline's Euler sampler.
    ode = sample_trajectory(adapter, context, noise, sde_steps=[])
    torch.testing.assert_close(ode.final, adapter.denoise(noise, context, 0, 3), atol=1e-6, rtol=0)
    # The DDIM SDE with eta = 0 everywhere is the pipeline's DDIM sampler.
    ddim = adapter_for(_ddim_sd15())
    ddim_context = ddim.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=3)
    noise = ddim.initial_latents(ddim_context, 0)
    ode = sample_trajectory(ddim, ddim_context, noise, sde_steps=[])
    torch.testing.assert_close(ode.final, ddim.denoise(noise, ddim_context, 0, 3), atol=1e-5, rtol=1e-5)
    # Schedules GRPO cannot sample: PNDM repeats a timestep, Euler-type (SDXL) latents are not VP.
    for family, message in (("sd15", "repeats a timestep"), ("sdxl", "Euler-type")):
        other = adapter_for(tiny(family))
        other_context = other.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=2)
        with pytest.raises(ValueError, match=message):
            sample_trajectory(other, other_context, other.initial_latents(other_context, 0))
