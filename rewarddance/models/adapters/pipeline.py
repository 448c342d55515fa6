"""The diffusers implementation of :class:`~rewarddance.models.adapters.protocol.GeneratorAdapter`.

:class:`PipelineAdapter` reuses each pipeline's own ``encode_prompt``, ``prepare_latents`` and scheduler, and calls
the denoiser with exactly the arguments (and batch layout) the pipeline uses. So a loop of
:meth:`PipelineAdapter.denoise` reproduces ``pipeline(..., output_type="latent")`` step for step (tested), and a
log-prob recomputed through :meth:`PipelineAdapter.model_output` is bitwise the one computed while sampling.
Subclasses (``unet``, ``flow`` and ``video`` modules) fill in the family hooks.

Not supported: FLUX "true CFG" (negative prompts), SDXL refiner-style
``denoising_end``, LCM guidance embeddings.

Text encoders run under ``torch.no_grad``: RL here trains the denoiser only.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from rewarddance.models.adapters.protocol import DenoisingContext
from rewarddance.models.generators import Generator, default_max_sequence_length
from rewarddance.models.schedules import PredictionType, flow_renoise, predict_x0_ddpm, predict_x0_flow, vp_renoise
from rewarddance.models.seeding import RandomSource, as_generator, randn

# Schedulers whose ``step`` can start mid-schedule: stateless ones (DDIM, DDPM) and first-order ones that only
# track a step index (set by ``set_begin_index``). Multistep solvers (PNDM/PLMS, UniPC, DPM-Solver) keep a history
# of model outputs and give wrong results when started at step k > 0 without it.
RESUMABLE_SCHEDULERS: set[str] = {
    "DDIMScheduler",
    "DDPMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
}
"""Scheduler class names :meth:`PipelineAdapter.denoise` may start at a step > 0 (add yours if it qualifies)."""


Encoded = tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Any]]
"""What an adapter's prompt encoding returns: positive embeddings, negative ones (or None), shared conditioning."""


def batched_conditioning(context: DenoisingContext, key: str) -> Tensor:
    """``embeds[key]``, preceded by the negative one under CFG: ``[negative, positive]`` as the SD pipelines batch them."""
    positive = context.embeds[key]
    if not context.do_cfg:
        return positive
    assert context.negative_embeds is not None
    return torch.cat([context.negative_embeds[key], positive], dim=0)


def guided(output: Tensor, context: DenoisingContext) -> Tensor:
    """Classifier-free guidance on a ``[negative, positive]`` batched output (identity without CFG)."""
    if not context.do_cfg:
        return output
    uncond, cond = output.chunk(2)
    return uncond + context.guidance_scale * (cond - uncond)


class PipelineAdapter:
    """Step-level access to one family's diffusers pipeline (a :class:`GeneratorAdapter`). Subclasses fill in the
    family hooks.

    Step indices run from 0 (pure noise, the first denoiser call) to ``S`` (the clean sample): the latents "at step
    ``k``" are those the denoiser sees at ``context.timesteps[k]``.

    Args:
        generator: The loaded generator (its pipeline is used, not copied: LoRA adapters or training mode of the
            denoiser apply).
    """

    families: ClassVar[tuple[str, ...]] = ()

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline."""
        return self.generator.pipeline

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer."""
        return self.generator.denoiser

    @property
    def scheduler(self) -> Any:
        """The pipeline's scheduler (read at :meth:`prepare` and stepped by :meth:`denoise`)."""
        return self.pipeline.scheduler

    @property
    def device(self) -> torch.device:
        """Device of the pipeline."""
        return self.pipeline._execution_device

    # ---------------------------------------------------------------------------------------------- setup

    def prepare(
        self,
        prompts: str | Sequence[str],
        *,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float | None = None,
        num_frames: int | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        max_sequence_length: int | None = None,
        condition_images: Sequence[Any] | None = None,
    ) -> DenoisingContext:
        """Encode the prompts and set the schedule, as the pipeline's ``__call__`` does before its loop.

        Args:
            prompts: One prompt or a batch.
            height: Pixel height.
            width: Pixel width.
            num_inference_steps: As the pipeline's argument (``context.num_steps`` may be one more, see there).
            guidance_scale: None takes the generator's ``sampling_defaults``, else the pipeline's default.
            num_frames: Frames per video (video families only).
            negative_prompt: Negative prompt(s) for classifier-free guidance.
            max_sequence_length: T5 prompt length; None uses :func:`rewarddance.models.generators.sample`'s rule.
            condition_images: Image-to-video only: the conditioning image of each prompt (see
                :class:`~rewarddance.models.adapters.video.WanI2VAdapter`); other families refuse them.

        Returns:
            The context.
        """
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if guidance_scale is None:
            guidance_scale = self.generator.sampling_defaults.get(
                "guidance_scale", inspect.signature(self.pipeline.__call__).parameters["guidance_scale"].default
            )
        if (num_frames is not None) != (self.generator.kind == "video"):
            raise ValueError(
                f"{self.generator.family}: num_frames is {'required' if num_frames is None else 'invalid'}"
            )
        if max_sequence_length is None:
            max_sequence_length = default_max_sequence_length(self.pipeline)
        negative = (
            negative_prompt if negative_prompt is None or isinstance(negative_prompt, str) else list(negative_prompt)
        )
        with torch.no_grad():
            do_cfg = self._do_cfg(float(guidance_scale))
            embeds, negative_embeds, shared = self._encode(prompt_list, negative, do_cfg, max_sequence_length)
        context = DenoisingContext(
            batch_size=len(prompt_list),
            height=height,
            width=width,
            num_frames=num_frames,
            guidance_scale=float(guidance_scale),
            do_cfg=do_cfg,
            embeds=embeds,
            negative_embeds=negative_embeds,
            shared=shared,
            timesteps=torch.empty(0),
            space="flow",
            sigmas=None,
            alpha_bars=None,
            prediction_type="flow",
            latent_dtype=self._latent_dtype(embeds),
        )
        with torch.no_grad():
            self._condition(context, prompt_list, condition_images)
        self._geometry(context)
        context.scheduler_kwargs = self._scheduler_kwargs(context, num_inference_steps)
        self._set_timesteps(context)
        context.timesteps = self.scheduler.timesteps.clone()
        self._fill_noise_levels(context)
        return context

    def register_conditions(self, prompts: Sequence[str], images: Sequence[Any]) -> None:
        """Image-to-video: remember each prompt's condition image (see :class:`GeneratorAdapter`)."""
        raise ValueError(f"{self.generator.family} ({self.generator.task}) takes no condition images")

    def initial_latents(self, context: DenoisingContext, generator: RandomSource = None) -> Tensor:
        """Draw the initial noise as the pipeline's ``prepare_latents`` does (same shape, dtype and RNG use).

        Args:
            context: From :meth:`prepare`.
            generator: Seed or CPU ``torch.Generator`` (a seed gives the same noise as
                ``generators.sample(..., seed=seed)``).
        """
        self._set_timesteps(context)  # Euler-type schedulers scale the noise by the current schedule's sigma_max
        return self._initial_latents(context, as_generator(generator))

    # ---------------------------------------------------------------------------------------------- steps

    def model_output(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        """The guided denoiser output at step ``step``: one forward pass (two for Wan's CFG), differentiable.

        Runs under whatever grad mode the caller set: wrap in ``torch.no_grad()`` for sampling, leave grads on
        for the ReFL step or a GRPO recompute.
        """
        self._check_step(step, context, allow_end=False)
        return self._forward(latents, step, context)

    def predict_x0(self, model_output: Tensor, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        """Clean latent predicted from the output at step ``step`` (float32, still packed for FLUX)."""
        if context.space == "flow":
            assert context.sigmas is not None
            return predict_x0_flow(model_output, latents, context.sigmas[step])
        assert context.alpha_bars is not None
        alpha_bar = context.alpha_bars[step]
        if context.space == "ve":
            # The UNet works on the VP form x / sqrt(1 + sigma^2) = sqrt(alpha_bar) * x (see schedules.py).
            latents = latents * alpha_bar.sqrt()
        x0 = predict_x0_ddpm(model_output, latents, alpha_bar, cast(PredictionType, context.prediction_type))
        if context.clip_sample is not None:
            # As the scheduler's own pred_original_sample (DDPM/DDIM ``clip_sample``).
            x0 = x0.clamp(-context.clip_sample, context.clip_sample)
        return x0

    def denoise(
        self,
        latents: Tensor,
        context: DenoisingContext,
        from_step: int,
        to_step: int,
        generator: RandomSource = None,
    ) -> Tensor:
        """Run the pipeline's sampler from step ``from_step`` to ``to_step`` without gradients.

        Replays ``scheduler.set_timesteps`` first, so each call is independent of earlier ones. Starting at a
        step > 0 needs a scheduler in :data:`RESUMABLE_SCHEDULERS`.

        Args:
            latents: Latents at ``from_step``.
            context: From :meth:`prepare`.
            from_step: First step to run (0 = from pure noise).
            to_step: Step reached (``S`` = the final sample), ``>= from_step``.
            generator: RNG for stochastic schedulers (DDPM, ancestral Euler).

        Returns:
            Latents at ``to_step``.
        """
        self._check_step(from_step, context, allow_end=True)
        self._check_step(to_step, context, allow_end=True)
        if to_step < from_step:
            raise ValueError(f"denoise runs forward: to_step {to_step} < from_step {from_step}")
        if to_step == from_step:
            return latents
        name = type(self.scheduler).__name__
        if from_step > 0 and name not in RESUMABLE_SCHEDULERS:
            raise ValueError(
                f"{name} keeps a multistep history and cannot start at step {from_step}; swap in a first-order "
                f"scheduler (e.g. DDIM or FlowMatchEulerDiscrete) or add it to RESUMABLE_SCHEDULERS if it is one."
            )
        self._set_timesteps(context)
        if not torch.equal(self.scheduler.timesteps.cpu(), context.timesteps.cpu()):
            raise RuntimeError("The scheduler's timesteps changed since prepare(): was the scheduler replaced?")
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(from_step)
        rng = as_generator(generator)
        step_params = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": rng} if "generator" in step_params and rng is not None else {}
        with torch.no_grad():
            for step in range(from_step, to_step):
                output = self._forward(latents, step, context)
                latents = self.scheduler.step(
                    output, context.timesteps[step], latents, return_dict=False, **step_kwargs
                )[0]
        return latents

    def renoise(
        self,
        latents: Tensor,
        context: DenoisingContext,
        from_step: int,
        to_step: int,
        generator: RandomSource = None,
    ) -> Tensor:
        """Move latents at ``from_step`` back to the noisier step ``to_step <= from_step`` with fresh noise.

        Uses the exact forward transition of the family's latent space (:func:`schedules.flow_renoise`,
        :func:`schedules.vp_renoise`; VE: :math:`x_a = x_b + \\sqrt{\\sigma_a^2 - \\sigma_b^2}\\,\\epsilon`). The
        result is in ``context.latent_dtype``.
        """
        self._check_step(from_step, context, allow_end=True)
        self._check_step(to_step, context, allow_end=True)
        if to_step > from_step:
            raise ValueError(f"renoise goes back: to_step {to_step} > from_step {from_step}")
        rng = as_generator(generator)
        noise = randn(latents.shape, rng, latents.device)
        if context.space == "flow":
            assert context.sigmas is not None
            out = flow_renoise(latents, context.sigmas[from_step], context.sigmas[to_step], noise)
        elif context.space == "ve":
            assert context.sigmas is not None
            sigma_b, sigma_a = context.sigmas[from_step].float(), context.sigmas[to_step].float()
            out = latents.float() + (sigma_a.square() - sigma_b.square()).clamp_min(0).sqrt() * noise
        else:
            assert context.alpha_bars is not None
            out = vp_renoise(latents, context.alpha_bars[from_step], context.alpha_bars[to_step], noise)
        return out.to(context.latent_dtype)

    def decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        """Differentiable VAE decode to pixels in [0, 1] (``[B, C, H, W]``; video ``[B, T, C, H, W]``).

        Same normalisation as the pipeline's ``output_type="pt"`` (clamped to [0, 1], which zeroes the gradient
        of saturated pixels, as ImageReward's ReFL does).
        """
        vae = self.pipeline.vae
        image = self._decode(latents.to(vae.dtype), context)
        return (image / 2 + 0.5).clamp(0, 1).float()

    # ---------------------------------------------------------------------------------------------- hooks

    def _do_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def _latent_dtype(self, embeds: dict[str, Tensor]) -> torch.dtype:
        return next(iter(embeds.values())).dtype

    def _encode(
        self, prompts: list[str], negative: str | list[str] | None, do_cfg: bool, max_sequence_length: int | None
    ) -> Encoded:
        """Prompt embeddings: ``(per-sample positive, per-sample negative or None, shared)``."""
        raise NotImplementedError

    def _condition(self, context: DenoisingContext, prompts: list[str], images: Sequence[Any] | None) -> None:
        """Add per-sample image conditioning to ``context.embeds`` (image-to-video); refuses images by default."""
        if images is not None:
            raise ValueError(f"{self.generator.family} ({self.generator.task}) takes no condition_images")

    def _geometry(self, context: DenoisingContext) -> None:
        """Fill geometry-dependent shared conditioning (FLUX position ids)."""

    def _scheduler_kwargs(self, context: DenoisingContext, num_inference_steps: int) -> dict[str, Any]:
        return {"num_inference_steps": num_inference_steps}

    def _set_timesteps(self, context: DenoisingContext) -> None:
        self.scheduler.set_timesteps(**context.scheduler_kwargs, device=self.device)

    def _fill_noise_levels(self, context: DenoisingContext) -> None:
        scheduler = self.scheduler
        if self.generator.kind != "unet":
            context.space, context.prediction_type = "flow", "flow"
            context.sigmas = scheduler.sigmas.clone()
            if len(context.sigmas) != context.num_steps + 1:
                raise ValueError(
                    f"{type(scheduler).__name__} gives {len(context.sigmas)} sigmas for {context.num_steps} steps"
                )
            return
        context.prediction_type = scheduler.config.prediction_type
        if scheduler.config.get("thresholding", False):
            raise NotImplementedError("Dynamic thresholding (pixel-space Imagen-style) is not supported")
        if scheduler.config.get("clip_sample", False):
            context.clip_sample = float(scheduler.config.get("clip_sample_range", 1.0))
        if float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
            # Euler-type: latents carry sigma * noise; sigmas has the final 0 appended.
            context.space = "ve"
            context.sigmas = scheduler.sigmas.clone()
            context.alpha_bars = 1.0 / (1.0 + context.sigmas.float().square())
        else:
            context.space = "vp"
            alphas = scheduler.alphas_cumprod.to(torch.float32)
            at_steps = alphas[context.timesteps.cpu().long()]
            context.alpha_bars = torch.cat([at_steps, torch.ones(1)])

    def _initial_latents(self, context: DenoisingContext, generator: torch.Generator | None) -> Tensor:
        return self.pipeline.prepare_latents(
            context.batch_size,
            self.denoiser.config.in_channels,
            context.height,
            context.width,
            context.latent_dtype,
            self.device,
            generator,
        )

    def _forward(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        raise NotImplementedError

    def _decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _check_step(step: int, context: DenoisingContext, *, allow_end: bool) -> None:
        last = context.num_steps if allow_end else context.num_steps - 1
        if not 0 <= step <= last:
            raise ValueError(f"step {step} is outside [0, {last}] for {context.num_steps} steps")
