"""Adapters of the SD-style UNet families: ``sd15`` (and any ``StableDiffusionPipeline``) and ``sdxl``."""

from __future__ import annotations

import torch
from torch import Tensor

from rewarddance.models.adapters.pipeline import Encoded, PipelineAdapter, batched_conditioning, guided
from rewarddance.models.adapters.protocol import DenoisingContext


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
            encoder_hidden_states=batched_conditioning(context, "encoder_hidden_states"),
            timestep_cond=None,
            cross_attention_kwargs=None,
            added_cond_kwargs=self._added_cond(context),
            return_dict=False,
        )[0]
        return guided(output, context)

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
        return {
            "text_embeds": batched_conditioning(context, "text_embeds"),
            "time_ids": batched_conditioning(context, "time_ids"),
        }
