r"""ReFL: reward feedback learning (ImageReward, Xu et al. 2023, Alg. 1), as RewardDance fine-tunes its generators.

One ReFL update, for a batch of prompts:

1. pick a random late step :math:`k \in [t_{min}, t_{max}]` of the ``S``-step sampling schedule
   (:func:`sample_refl_step`; ImageReward: ``S = 40``, :math:`k \in [30, 39]`);
2. sample without gradient from pure noise down to step ``k`` (:func:`refl_step_latents`);
3. run the denoiser once *with* gradient and predict the clean latent :math:`\hat x_0`
   (:func:`refl_predict_x0`; :func:`predict_x0_ddpm` / :func:`predict_x0_flow` per parametrisation);
4. decode it (``state.adapter.decode``), score it with the frozen reward model, and minimise
   :func:`refl_loss`. The gradient reaches the denoiser through exactly one step.

With RewardDance's pairwise reward model the reward is :math:`P(\text{yes})` that the candidate beats a reference
image chosen by best-of-N (:mod:`rewarddance.rl.reference`).

ImageReward regularises ReFL with the pretraining loss on real data, because the reward alone drifts into images
it misjudges. :func:`anchor_loss` is that denoising loss on any clean latents; the task uses the best-of-N
references themselves as the data (the starting model's own best samples, free once chosen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rewarddance.models.adapters import DenoisingContext, GeneratorAdapter, adapter_for
from rewarddance.models.generators import Generator
from rewarddance.models.schedules import predict_x0_ddpm, predict_x0_flow
from rewarddance.models.seeding import RandomSource, as_generator

__all__ = [
    "ReFLState",
    "anchor_loss",
    "predict_x0_ddpm",
    "predict_x0_flow",
    "refl_loss",
    "refl_predict_x0",
    "refl_step_latents",
    "sample_refl_step",
]


def sample_refl_step(
    num_inference_steps: int, t_min: int, t_max: int | None = None, generator: RandomSource = None
) -> int:
    """Draw the ReFL step uniformly from the window ``[t_min, t_max]`` (both inclusive) of step indices.

    Step 0 is the first (noisiest) denoising step, ``num_inference_steps - 1`` the last. ImageReward draws
    ``randint(30, 39)`` of 40 steps: late steps, where the one-step :math:`\\hat x_0` already looks like the final image,
    so the reward sees a realistic sample while the gradient crosses only one denoiser call.

    Args:
        num_inference_steps: Steps of the sampling schedule ``S``.
        t_min: First allowed step index.
        t_max: Last allowed step index (None: ``S - 1``).
        generator: Seed or ``torch.Generator`` (a seed makes the draw reproducible; None uses the global RNG).

    Returns:
        The step index.
    """
    t_max = num_inference_steps - 1 if t_max is None else t_max
    if not 0 <= t_min <= t_max < num_inference_steps:
        raise ValueError(f"Need 0 <= t_min <= t_max < num_inference_steps, got {t_min}, {t_max}, {num_inference_steps}")
    return int(torch.randint(t_min, t_max + 1, (), generator=as_generator(generator)))


def refl_loss(
    rewards: Tensor,
    *,
    scale: float = 1.0,
    hinge: float | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    r"""The ReFL objective :math:`L = \text{scale}\cdot\phi(r)`, averaged over the batch.

    - ``hinge=None`` (default, RewardDance's "maximise the reward"): :math:`\phi(r) = -r`.
    - ``hinge=lambda``: ImageReward's :math:`\phi(r) = \mathrm{ReLU}(\lambda - r)` (their code: ``lambda = 2``,
      ``scale = 1e-3`` on the z-scored ImageReward score). Since
      :math:`\mathrm{ReLU}(\lambda - r) = \lambda - \min(r, \lambda)`, a hinge is the same as clipping the reward from
      above at :math:`\lambda`: samples already scoring above it stop pulling, which caps over-optimisation per
      sample. For a :math:`P(\text{yes})` reward in [0, 1], any :math:`\lambda \ge 1` equals ``hinge=None`` up to a
      constant; :math:`\lambda < 1` is the cap.

    No lower clip: clipping from below would zero the gradient of exactly the samples that most need it.

    Args:
        rewards: Differentiable rewards, any shape (one per sample).
        scale: Multiplies the loss (ImageReward's ``grad_scale``); equivalent to a learning-rate factor.
        hinge: The :math:`\lambda` of the hinge, or None for the plain negative reward.
        reduction: ``"mean"`` or ``"sum"`` over samples, or ``"none"`` for the per-sample loss.

    Returns:
        The loss.
    """
    per_sample = -rewards if hinge is None else torch.relu(hinge - rewards)
    per_sample = scale * per_sample
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@dataclass
class ReFLState:
    """The no-grad part of a ReFL update: where the gradient step starts.

    Attributes:
        adapter: The generator's step-level adapter (decode with ``adapter.decode(x0, context)``).
        context: Prompt embeddings (``context.embeds``, ``context.negative_embeds``), guidance and schedule.
        latents: Latents at step ``step`` (no grad).
        step: The step index ``k``.
        timestep: The scheduler timestep of step ``k`` (what the denoiser is called with).
    """

    adapter: GeneratorAdapter
    context: DenoisingContext
    latents: Tensor
    step: int
    timestep: Tensor


def refl_step_latents(
    generator: Generator | GeneratorAdapter,
    prompts: str | Sequence[str],
    step: int,
    *,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float | None = None,
    num_frames: int | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    seed: RandomSource = None,
) -> ReFLState:
    """Sample without gradient from pure noise down to step ``step`` (ReFL steps 1-2).

    Works for every family with an adapter (UNet: SD 1.5/SDXL; flow transformers: SD3/FLUX; Wan T2V), with the
    pipeline's own scheduler: the latents equal the pipeline's intermediate latents at that step.

    Args:
        generator: A loaded generator, or its adapter (reuse one adapter across steps).
        prompts: One prompt or a batch.
        step: Step index to stop at, in ``[0, S - 1]`` (usually from :func:`sample_refl_step`).
        height: Pixel height.
        width: Pixel width.
        num_inference_steps: Steps of the schedule ``S`` (the step count the reward should see samples from).
        guidance_scale: None takes the pipeline's default.
        num_frames: Frames for video families.
        negative_prompt: Negative prompt(s) for classifier-free guidance.
        seed: Seed or CPU ``torch.Generator`` for the initial noise (and stochastic schedulers).

    Returns:
        The :class:`ReFLState` at step ``step``.
    """
    adapter = adapter_for(generator) if isinstance(generator, Generator) else generator
    context = adapter.prepare(
        prompts,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        num_frames=num_frames,
        negative_prompt=negative_prompt,
    )
    if not 0 <= step < context.num_steps:
        raise ValueError(f"step must be in [0, {context.num_steps - 1}], got {step}")
    rng = as_generator(seed)
    with torch.no_grad():
        latents = adapter.initial_latents(context, rng)
        latents = adapter.denoise(latents, context, 0, step, rng)
    return ReFLState(adapter=adapter, context=context, latents=latents, step=step, timestep=context.timesteps[step])


def refl_predict_x0(state: ReFLState) -> Tensor:
    """ReFL step 3: one denoiser call with gradient at ``state.step`` and the predicted clean latent.

    Call it with grad enabled; the only path from the result to trainable parameters is this one call (the
    latents and prompt embeddings carry no graph).

    Returns:
        :math:`\\hat x_0` (float32; packed for FLUX), ready for ``state.adapter.decode(x0, state.context)``.
    """
    output = state.adapter.model_output(state.latents, state.step, state.context)
    return state.adapter.predict_x0(output, state.latents, state.step, state.context)


def anchor_loss(
    adapter: GeneratorAdapter, context: DenoisingContext, x0: Tensor, step: int, generator: RandomSource = None
) -> Tensor:
    r"""The denoising loss on clean latents: noise ``x0`` to step ``step``, predict it back, mean squared error.

    :math:`\lVert \hat x_0(x_k, k) - x_0 \rVert^2` with :math:`x_k` drawn from the family's exact forward process
    (:meth:`GeneratorAdapter.renoise`), written in :math:`x_0` so that one loss serves every parametrisation
    (epsilon, v, flow velocity): it is the native loss reweighted per step (for v-prediction by
    :math:`1 - \bar\alpha_k`). Pass a context prepared without guidance (``guidance_scale=1``): the conditional
    denoiser is what pretraining trained.

    Args:
        adapter: The generator's adapter.
        context: Prompt embeddings and schedule for the ``x0`` batch (one row per latent).
        x0: Clean latents ``[B, ...]`` as the sampler produces them (before decoding).
        step: Schedule step index to noise to (0: pure noise).
        generator: Seed or ``torch.Generator`` of the noise.

    Returns:
        The scalar loss, differentiable in the denoiser.
    """
    noisy = adapter.renoise(x0, context, context.num_steps, step, generator)
    x0_hat = adapter.predict_x0(adapter.model_output(noisy, step, context), noisy, step, context)
    return F.mse_loss(x0_hat.float(), x0.float())
