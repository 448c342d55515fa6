"""Adapter of the Wan 2.1 text-to-video transformer (``wan-t2v``)."""

from __future__ import annotations

import torch
from torch import Tensor

from rewarddance.models.adapters.pipeline import Encoded, PipelineAdapter
from rewarddance.models.adapters.protocol import DenoisingContext


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
