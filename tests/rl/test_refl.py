"""ReFL: the late-step window, the loss, and the one-step gradient path on tiny SD 1.5 and SD3."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler

from rewarddance.models.adapters import adapter_for
from rewarddance.models.generators import Generator, default_max_sequence_length, load_generator
from rewarddance.rl.refl import anchor_loss, refl_loss, refl_predict_x0, refl_step_latents, sample_refl_step
from tests.rl.helpers import PROMPTS, SIDE

# --------------------------------------------------------------------------------------------- window


def test_refl_step_is_seeded_and_inside_the_window() -> None:
    # ImageReward: 40 steps, randint(30, 39).
    draws = [sample_refl_step(40, 30, 39, generator=seed) for seed in range(300)]
    assert set(draws) == set(range(30, 40))  # every step of the window, nothing outside
    assert draws == [sample_refl_step(40, 30, 39, generator=seed) for seed in range(300)]
    assert sample_refl_step(40, 35, 35, generator=0) == 35
    assert sample_refl_step(10, 7, generator=torch.Generator().manual_seed(0)) in (7, 8, 9)  # t_max defaults to S - 1


@pytest.mark.parametrize(("t_min", "t_max"), [(-1, 5), (6, 5), (3, 10)])
def test_refl_step_rejects_bad_windows(t_min: int, t_max: int) -> None:
    with pytest.raises(ValueError, match="t_min"):
        sample_refl_step(10, t_min, t_max)


# --------------------------------------------------------------------------------------------- loss


def test_refl_loss_plain_hinge_and_scale() -> None:
    rewards = torch.tensor([0.2, 0.9, 1.5], requires_grad=True)
    # Plain: -(0.2 + 0.9 + 1.5) / 3 = -0.866667
    assert refl_loss(rewards).item() == pytest.approx(-2.6 / 3)
    # Hinge 1: ReLU(1 - r) = [0.8, 0.1, 0] -> mean 0.3; the sample above the hinge gets no gradient.
    loss = refl_loss(rewards, hinge=1.0)
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    torch.testing.assert_close(rewards.grad, torch.tensor([-1 / 3, -1 / 3, 0.0]))
    # ImageReward's setting: ReLU(2 - r) * 1e-3 = [1.8, 1.1, 0.5] * 1e-3 -> mean 1.1333e-3.
    assert refl_loss(rewards, hinge=2.0, scale=1e-3).item() == pytest.approx(3.4e-3 / 3)
    assert refl_loss(rewards, reduction="sum").item() == pytest.approx(-2.6)
    assert refl_loss(rewards, reduction="none").shape == (3,)


# --------------------------------------------------------------------------------------------- pipelines


def _ddim_sd15() -> Generator:
    # DDIM with alpha_bar_final = 1 ends exactly at its x0 prediction; PNDM (the hub default) does not. From a
    # PNDM config DDIM keeps its default clip_sample=True, so this also checks that the clamp is applied.
    generator = load_generator("tiny-sd15")
    generator.pipeline.scheduler = DDIMScheduler.from_config(generator.pipeline.scheduler.config, set_alpha_to_one=True)
    return generator


def _final_latents(generator: Generator, seed: int, steps: int) -> torch.Tensor:
    kwargs: dict[str, Any] = {"height": SIDE, "width": SIDE, "num_inference_steps": steps, "output_type": "latent"}
    if (length := default_max_sequence_length(generator.pipeline)) is not None:
        kwargs["max_sequence_length"] = length
    generator.pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return generator.pipeline(prompt=PROMPTS, generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("family", ["sd15-ddim", "sdxl", "sd3", "flux"])
def test_x0_prediction_at_the_last_step_is_the_pipeline_output(tiny: Callable[[str], Generator], family: str) -> None:
    generator = _ddim_sd15() if family == "sd15-ddim" else tiny(family)
    steps = 4
    state = refl_step_latents(generator, PROMPTS, steps - 1, height=SIDE, width=SIDE, num_inference_steps=steps, seed=7)
    with torch.no_grad():
        x0 = refl_predict_x0(state)
    torch.testing.assert_close(x0, _final_latents(generator, 7, steps).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_reward_gradient_reaches_the_denoiser_through_exactly_one_step(
    tiny: Callable[[str], Generator], family: str
) -> None:
    generator = tiny(family)
    denoiser = generator.denoiser
    calls: list[bool] = []
    hook = denoiser.register_forward_hook(lambda module, args, output: calls.append(torch.is_grad_enabled()))
    try:
        state = refl_step_latents(generator, PROMPTS, 2, height=SIDE, width=SIDE, num_inference_steps=4, seed=0)
        sampling_calls = len(calls)
        x0 = refl_predict_x0(state)
        images = state.adapter.decode(x0, state.context)
    finally:
        hook.remove()
    # Steps 0 and 1 ran without gradient (one batched CFG call each), then exactly one call with it.
    assert sampling_calls == 2 and not any(calls[:sampling_calls])
    assert calls[sampling_calls:] == [True]
    assert not state.latents.requires_grad and images.requires_grad
    assert images.shape == (2, 3, SIDE, SIDE) and images.min() >= 0 and images.max() <= 1

    denoiser.zero_grad(set_to_none=True)
    for encoder in generator.text_encoders:
        encoder.zero_grad(set_to_none=True)
    reward = (images * torch.linspace(0, 1, SIDE)).mean(dim=(1, 2, 3))  # any differentiable function of pixels
    refl_loss(reward).backward()
    grads = [p.grad for p in denoiser.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # Prompt embeddings were computed without gradient: the text encoders are not trained by ReFL.
    assert all(p.grad is None for encoder in generator.text_encoders for p in encoder.parameters())
    denoiser.zero_grad(set_to_none=True)
    generator.vae.zero_grad(set_to_none=True)


def test_refl_state_fields(tiny: Callable[[str], Generator]) -> None:
    state = refl_step_latents(tiny("sd3"), PROMPTS, 1, height=SIDE, width=SIDE, num_inference_steps=3, seed=0)
    assert state.step == 1 and state.timestep == state.context.timesteps[1]
    assert state.context.embeds["encoder_hidden_states"].shape[0] == 2 and state.context.do_cfg
    with pytest.raises(ValueError, match="step"):
        refl_step_latents(tiny("sd3"), PROMPTS, 3, height=SIDE, width=SIDE, num_inference_steps=3)


# --------------------------------------------------------------------------------------------- anchor loss


@pytest.mark.parametrize("family", ["sd15-v", "sd3"])
def test_anchor_loss_is_the_native_training_loss_reweighted(tiny: Callable[[str], Generator], family: str) -> None:
    # The x0-space loss equals the loss each family is pretrained with, on the same noise, times the step's weight:
    # v-prediction (diffusers' add_noise / get_velocity): (1 - alpha_bar) * |v_hat - v|^2; rectified flow (SD3):
    # sigma^2 * |v_hat - (noise - x0)|^2.
    if family == "sd15-v":
        generator = load_generator("tiny-sd15")
        generator.pipeline.scheduler = DDIMScheduler.from_config(
            generator.pipeline.scheduler.config, prediction_type="v_prediction", clip_sample=False
        )
    else:
        generator = tiny(family)
    adapter = adapter_for(generator)
    context = adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=5, guidance_scale=1.0)
    assert not context.do_cfg
    x0 = adapter.initial_latents(context, 1).float()  # any clean latents of the right shape
    step = 2
    loss = anchor_loss(adapter, context, x0, step, 9)

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        if family == "sd15-v":
            scheduler, t = generator.pipeline.scheduler, context.timesteps[step]
            noisy = scheduler.add_noise(x0, noise, t.view(1))
            target = scheduler.get_velocity(x0, noise, t.view(1))
            weight = 1 - scheduler.alphas_cumprod[int(t)]
        else:
            sigma = context.sigmas[step]
            noisy, target, weight = (1 - sigma) * x0 + sigma * noise, noise - x0, sigma**2
        native = torch.nn.functional.mse_loss(adapter.model_output(noisy, step, context).float(), target)
    torch.testing.assert_close(loss.detach(), weight * native, atol=1e-6, rtol=1e-4)

    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.denoiser.parameters())
    generator.denoiser.zero_grad(set_to_none=True)
