"""Adapters of the flow-matching image transformers: ``sd3`` (SD3/SD3.5) and ``flux`` (FLUX.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from rewarddance.models.adapters.pipeline import Encoded, PipelineAdapter, batched_conditioning, guided
from rewarddance.models.adapters.protocol import DenoisingContext


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
            encoder_hidden_states=batched_conditioning(context, "encoder_hidden_states"),
            pooled_projections=batched_conditioning(context, "pooled_projections"),
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        return guided(output, context)

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
