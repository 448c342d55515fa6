"""One step-by-step interface over the diffusers pipelines, for RL and search.

The pipelines' ``__call__`` runs a whole sampling loop; ReFL, GRPO and search over paths need its parts: encode the
prompts once, draw the initial noise, call the denoiser at one step (with classifier-free guidance), advance the
scheduler, predict the clean latent, re-noise, and decode with gradients. A :class:`PipelineAdapter` exposes these
parts for one family, reusing the pipeline's own ``encode_prompt``, ``prepare_latents`` and scheduler, and calling
the denoiser with exactly the arguments (and batch layout) the pipeline uses. So a loop of
:meth:`PipelineAdapter.denoise` reproduces ``pipeline(..., output_type="latent")`` step for step (tested), and a
log-prob recomputed through :meth:`PipelineAdapter.model_output` is bitwise the one computed while sampling.

Supported families: ``sd15`` and ``sdxl`` (UNet), ``sd3`` and ``flux`` (flow transformers), ``wan-t2v``. Not
supported: ``wan-i2v`` (image conditioning latents), FLUX "true CFG" (negative prompts), SDXL refiner-style
``denoising_end``, LCM guidance embeddings. :func:`adapter_for` raises for them.

Text encoders run under ``torch.no_grad``: RL here trains the denoiser only.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from torch import Tensor

from rewarddance.models.generators import Generator, _max_sequence_length
from rewarddance.rl._util import RandomSource, as_generator, randn
from rewarddance.rl.schedules import PredictionType, flow_renoise, predict_x0_ddpm, predict_x0_flow, vp_renoise

LatentSpace = Literal["vp", "ve", "flow"]
"""How a family's noisy latents relate to the clean one (see :mod:`rewarddance.rl.schedules`)."""

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


@dataclass
class DenoisingContext:
    """Everything a sampling run needs besides the latents: conditioning, guidance and the schedule.

    Attributes:
        batch_size: Number of samples (prompts after any repetition).
        height: Image/frame height in pixels.
        width: Image/frame width in pixels.
        num_frames: Frames per video, None for images.
        guidance_scale: Classifier-free (or, for FLUX, distilled) guidance weight.
        do_cfg: Whether the denoiser is also run on the negative conditioning.
        embeds: Per-sample conditioning tensors (``[B, ...]``), keyed by the adapter's own names.
        negative_embeds: The same for the negative prompt when ``do_cfg``, else None.
        shared: Conditioning that is not per sample (FLUX position ids).
        timesteps: The scheduler's timesteps, ``[S]``: step ``k`` calls the denoiser at ``timesteps[k]``. ``S`` is
            ``num_inference_steps``, or one more for PNDM, whose PLMS warm-up calls the denoiser twice at one
            timestep (as the pipeline's loop does).
        space: The latent space (``"vp"``, ``"ve"`` or ``"flow"``).
        sigmas: ``[S + 1]`` noise levels of step ``k`` (the last one 0 = clean) for ``"flow"`` and ``"ve"``.
        alpha_bars: ``[S + 1]`` :math:`\\bar\\alpha` of step ``k`` (the last one 1 = clean) for ``"vp"`` and ``"ve"``.
        prediction_type: What the UNet predicts (``"epsilon"``...); ``"flow"`` for velocity models.
        latent_dtype: Dtype the pipeline keeps the latents in.
        clip_sample: Clamp range of the predicted clean sample when the scheduler clips it (``clip_sample`` in
            its config, typical of pixel-space DDPM/DDIM), else None.
        scheduler_kwargs: Arguments of ``scheduler.set_timesteps`` (replayed before each :meth:`denoise`).
    """

    batch_size: int
    height: int
    width: int
    num_frames: int | None
    guidance_scale: float
    do_cfg: bool
    embeds: dict[str, Tensor]
    negative_embeds: dict[str, Tensor] | None
    shared: dict[str, Any]
    timesteps: Tensor
    space: LatentSpace
    sigmas: Tensor | None
    alpha_bars: Tensor | None
    prediction_type: str
    latent_dtype: torch.dtype
    clip_sample: float | None = None
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        """Number of denoiser calls per sample ``S`` (``len(timesteps)``)."""
        return len(self.timesteps)

    def repeat_interleave(self, repeats: int) -> DenoisingContext:
        """Each sample repeated ``repeats`` times in a row (``[p0, p0, p1, p1]``): groups of GRPO, N of best-of-N."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0), self.batch_size * repeats)

    def select(self, index: Sequence[int] | Tensor) -> DenoisingContext:
        """The samples at ``index`` (for minibatches of stored rollouts)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self._map(lambda t: t[index.to(t.device)], len(index))

    def _map(self, fn: Any, batch_size: int) -> DenoisingContext:
        def apply(d: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if d is None else {k: fn(v) for k, v in d.items()}

        embeds = apply(self.embeds)
        assert embeds is not None
        return dataclasses.replace(
            self, batch_size=batch_size, embeds=embeds, negative_embeds=apply(self.negative_embeds)
        )


def _cat(context: DenoisingContext, key: str) -> Tensor:
    # [negative, positive] along the batch, as the SD pipelines concatenate them.
    positive = context.embeds[key]
    if not context.do_cfg:
        return positive
    assert context.negative_embeds is not None
    return torch.cat([context.negative_embeds[key], positive], dim=0)


def _guide(output: Tensor, context: DenoisingContext) -> Tensor:
    if not context.do_cfg:
        return output
    uncond, cond = output.chunk(2)
    return uncond + context.guidance_scale * (cond - uncond)


class PipelineAdapter:
    """Step-level access to one family's pipeline. Subclasses fill in the family hooks.

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
            max_sequence_length = _max_sequence_length(self.pipeline)
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
        self._geometry(context)
        context.scheduler_kwargs = self._scheduler_kwargs(context, num_inference_steps)
        self._set_timesteps(context)
        context.timesteps = self.scheduler.timesteps.clone()
        self._fill_noise_levels(context)
        return context

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


# -------------------------------------------------------------------------------------------------- UNet


class StableDiffusionAdapter(PipelineAdapter):
    """SD 1.5 (and any ``StableDiffusionPipeline``): CLIP embeddings, UNet with CFG batched as ``[neg, pos]``."""

    families = ("sd15",)

    def _do_cfg(self, guidance_scale: float) -> bool:
        if self.denoiser.config.time_cond_proj_dim is not None:
            raise NotImplementedError("UNets with a guidance embedding (LCM) are not supported")
        return guidance_scale > 1.0

    def _encode(
        self, prompts: list[str], negative: str | list[str] | None, do_cfg: bool, max_sequence_length: int | None
    ) -> Encoded:
        positive, neg = self.pipeline.encode_prompt(prompts, self.device, 1, do_cfg, negative)
        negative_embeds = {"encoder_hidden_states": neg} if do_cfg else None
        return {"encoder_hidden_states": positive}, negative_embeds, {}

    def _scale_input(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        if context.space == "ve":
            assert context.sigmas is not None
            sigma = context.sigmas[step]
            # Euler's scale_model_input, computed from the context instead of the scheduler's step counter so
            # that a standalone call (ReFL's grad step) scales like the loop; the flag silences Euler's warning.
            self.scheduler.is_scale_input_called = True
            return latents / ((sigma**2 + 1) ** 0.5)
        return self.scheduler.scale_model_input(latents, context.timesteps[step])  # identity for VP schedulers

    def _added_cond(self, context: DenoisingContext) -> dict[str, Tensor] | None:
        return None

    def _forward(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        model_input = torch.cat([latents] * 2) if context.do_cfg else latents
        model_input = self._scale_input(model_input, step, context)
        output = self.denoiser(
            model_input,
            context.timesteps[step],
            encoder_hidden_states=_cat(context, "encoder_hidden_states"),
            timestep_cond=None,
            cross_attention_kwargs=None,
            added_cond_kwargs=self._added_cond(context),
            return_dict=False,
        )[0]
        return _guide(output, context)

    def _decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        config = self.pipeline.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
            std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
            latents = latents * std_t / config.scaling_factor + mean_t
        else:
            latents = latents / config.scaling_factor
        return self.pipeline.vae.decode(latents, return_dict=False)[0]


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """SDXL: two CLIP encoders, pooled text embeddings and size/crop ids as the UNet's added conditioning."""

    families = ("sdxl",)

    def _encode(
        self, prompts: list[str], negative: str | list[str] | None, do_cfg: bool, max_sequence_length: int | None
    ) -> Encoded:
        pipe = self.pipeline
        positive, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompts,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative,
        )
        embeds = {"encoder_hidden_states": positive, "text_embeds": pooled}
        negative_embeds = {"encoder_hidden_states": neg, "text_embeds": neg_pooled} if do_cfg else None
        return embeds, negative_embeds, {}

    def _geometry(self, context: DenoisingContext) -> None:
        # Size/crop micro-conditioning as the pipeline's defaults: original = target = (height, width), no crop.
        size = (context.height, context.width)
        projection_dim = self.pipeline.text_encoder_2.config.projection_dim
        dtype = context.embeds["encoder_hidden_states"].dtype
        time_ids = self.pipeline._get_add_time_ids(
            size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection_dim
        )
        for embeds in (context.embeds, context.negative_embeds):
            if embeds is not None:
                embeds["time_ids"] = time_ids.to(self.device).repeat(context.batch_size, 1)

    def _added_cond(self, context: DenoisingContext) -> dict[str, Tensor] | None:
        return {"text_embeds": _cat(context, "text_embeds"), "time_ids": _cat(context, "time_ids")}


# -------------------------------------------------------------------------------------------------- flow


class StableDiffusion3Adapter(PipelineAdapter):
    """SD3/SD3.5: CLIP x2 + T5 embeddings, MMDiT with CFG batched as ``[neg, pos]``, flow-matching Euler."""

    families = ("sd3",)

    def _encode(
        self, prompts: list[str], negative: str | list[str] | None, do_cfg: bool, max_sequence_length: int | None
    ) -> Encoded:
        positive, neg, pooled, neg_pooled = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=negative,
            do_classifier_free_guidance=do_cfg,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        embeds = {"encoder_hidden_states": positive, "pooled_projections": pooled}
        negative_embeds = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled} if do_cfg else None
        return embeds, negative_embeds, {}

    def _scheduler_kwargs(self, context: DenoisingContext, num_inference_steps: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_inference_steps": num_inference_steps}
        config = self.scheduler.config
        if config.get("use_dynamic_shifting", None):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            patch = self.denoiser.config.patch_size
            side = self.pipeline.vae_scale_factor * patch
            seq_len = (context.height // side) * (context.width // side)
            kwargs["mu"] = calculate_shift(
                seq_len,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        return kwargs

    def _forward(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        model_input = torch.cat([latents] * 2) if context.do_cfg else latents
        output = self.denoiser(
            hidden_states=model_input,
            timestep=context.timesteps[step].expand(model_input.shape[0]),
            encoder_hidden_states=_cat(context, "encoder_hidden_states"),
            pooled_projections=_cat(context, "pooled_projections"),
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        return _guide(output, context)

    def _decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        config = self.pipeline.vae.config
        return self.pipeline.vae.decode(latents / config.scaling_factor + config.shift_factor, return_dict=False)[0]


class FluxAdapter(PipelineAdapter):
    """FLUX.1: CLIP pooled + T5 sequence, guidance-distilled transformer (no CFG pass), 2x2-packed latents.

    The latents stay packed (``[B, L, 4C]``) throughout, as in the pipeline; :meth:`decode` unpacks them.
    """

    families = ("flux",)

    def _do_cfg(self, guidance_scale: float) -> bool:
        return False  # the guidance weight enters as an embedding, not as a second pass

    def _encode(
        self, prompts: list[str], negative: str | list[str] | None, do_cfg: bool, max_sequence_length: int | None
    ) -> Encoded:
        if negative is not None:
            raise NotImplementedError("FLUX true CFG (negative prompts) is not supported")
        positive, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        return {"encoder_hidden_states": positive, "pooled_projections": pooled}, None, {"txt_ids": text_ids}

    def _latent_side(self, pixels: int) -> int:
        return 2 * (int(pixels) // (self.pipeline.vae_scale_factor * 2))

    def _geometry(self, context: DenoisingContext) -> None:
        h, w = self._latent_side(context.height), self._latent_side(context.width)
        context.shared["img_ids"] = self.pipeline._prepare_latent_image_ids(
            context.batch_size, h // 2, w // 2, self.device, context.latent_dtype
        )

    def _scheduler_kwargs(self, context: DenoisingContext, num_inference_steps: int) -> dict[str, Any]:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler.config
        seq_len = (self._latent_side(context.height) // 2) * (self._latent_side(context.width) // 2)
        mu = calculate_shift(
            seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        if config.get("use_flow_sigmas", False):
            return {"num_inference_steps": num_inference_steps, "mu": mu}
        # The pipeline's default schedule: linspace(1, 1/S) before the scheduler's (dynamic) shift.
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        return {"sigmas": sigmas, "mu": mu}

    def _initial_latents(self, context: DenoisingContext, generator: torch.Generator | None) -> Tensor:
        latents, _ = self.pipeline.prepare_latents(
            context.batch_size,
            self.denoiser.config.in_channels // 4,
            context.height,
            context.width,
            context.latent_dtype,
            self.device,
            generator,
        )
        return latents

    def _forward(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        batch = latents.shape[0]
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full([1], context.guidance_scale, device=latents.device, dtype=torch.float32).expand(batch)
        timestep = context.timesteps[step].expand(batch).to(latents.dtype)
        return self.denoiser(
            hidden_states=latents,
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=context.embeds["pooled_projections"],
            encoder_hidden_states=context.embeds["encoder_hidden_states"],
            txt_ids=context.shared["txt_ids"],
            img_ids=context.shared["img_ids"],
            joint_attention_kwargs={},
            return_dict=False,
        )[0]

    def _decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        pipe = self.pipeline
        latents = pipe._unpack_latents(latents, context.height, context.width, pipe.vae_scale_factor)
        config = pipe.vae.config
        return pipe.vae.decode(latents / config.scaling_factor + config.shift_factor, return_dict=False)[0]


class WanAdapter(PipelineAdapter):
    """Wan 2.1 text-to-video: UMT5 embeddings, DiT called separately for the conditional and CFG passes."""

    families = ("wan-t2v",)

    def _encode(
        self, prompts: list[str], negative: str | list[str] | None, do_cfg: bool, max_sequence_length: int | None
    ) -> Encoded:
        pipe = self.pipeline
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("expand_timesteps", False):
            raise NotImplementedError("Wan 2.2 (two experts / expanded timesteps) is not supported")
        positive, neg = pipe.encode_prompt(
            prompt=prompts,
            negative_prompt=negative,
            do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=1,
            max_sequence_length=max_sequence_length,
            device=self.device,
        )
        dtype = self.denoiser.dtype
        negative_embeds = {"encoder_hidden_states": neg.to(dtype)} if do_cfg else None
        return {"encoder_hidden_states": positive.to(dtype)}, negative_embeds, {}

    def _latent_dtype(self, embeds: dict[str, Tensor]) -> torch.dtype:
        return torch.float32  # Wan keeps its latents in float32 and casts the transformer input

    def _initial_latents(self, context: DenoisingContext, generator: torch.Generator | None) -> Tensor:
        return self.pipeline.prepare_latents(
            context.batch_size,
            self.denoiser.config.in_channels,
            context.height,
            context.width,
            context.num_frames,
            torch.float32,
            self.device,
            generator,
        )

    def _forward(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        model_input = latents.to(self.denoiser.dtype)
        timestep = context.timesteps[step].expand(latents.shape[0])
        output = self.denoiser(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=context.embeds["encoder_hidden_states"],
            attention_kwargs=None,
            return_dict=False,
        )[0]
        if not context.do_cfg:
            return output
        assert context.negative_embeds is not None
        uncond = self.denoiser(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=context.negative_embeds["encoder_hidden_states"],
            attention_kwargs=None,
            return_dict=False,
        )[0]
        return uncond + context.guidance_scale * (output - uncond)

    def _decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        config = self.pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
        video = self.pipeline.vae.decode(latents * std + mean, return_dict=False)[0]  # [B, C, T, H, W]
        return video.permute(0, 2, 1, 3, 4)


# -------------------------------------------------------------------------------------------------- registry

ADAPTERS: dict[str, type[PipelineAdapter]] = {
    family: cls
    for cls in (StableDiffusionAdapter, StableDiffusionXLAdapter, StableDiffusion3Adapter, FluxAdapter, WanAdapter)
    for family in cls.families
}
"""Adapter class per generator family name."""


def adapter_for(generator: Generator) -> PipelineAdapter:
    """The step-level adapter of a loaded generator.

    Raises:
        NotImplementedError: For families without an adapter (``wan-i2v``).
    """
    cls = ADAPTERS.get(generator.family)
    if cls is None:
        raise NotImplementedError(f"No RL adapter for {generator.family!r}; supported: {sorted(ADAPTERS)}")
    return cls(generator)
