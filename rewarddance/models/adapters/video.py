"""Adapters of the Wan 2.1 video transformers: text-to-video (``wan-t2v``) and image-to-video (``wan-i2v``)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from rewarddance.errors import BadFileError, UsageError
from rewarddance.models.adapters.pipeline import Encoded, PipelineAdapter
from rewarddance.models.adapters.protocol import DenoisingContext

MAX_CONDITION_PIXELS = 4096 * 4096
"""Largest condition image decoded (PIL's own bomb check is a warning below 2x its limit)."""


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

    def _model_input(self, latents: Tensor, context: DenoisingContext) -> tuple[Tensor, dict[str, Any]]:
        """The transformer's ``hidden_states`` and its extra conditioning arguments (I2V adds the image's)."""
        return latents.to(self.denoiser.dtype), {}

    def _forward(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        model_input, extra = self._model_input(latents, context)
        timestep = context.timesteps[step].expand(latents.shape[0])
        output = self.denoiser(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=context.embeds["encoder_hidden_states"],
            attention_kwargs=None,
            return_dict=False,
            **extra,
        )[0]
        if not context.do_cfg:
            return output
        assert context.negative_embeds is not None
        uncond = self.denoiser(  # the negative prompt only: the pipeline keeps the image conditioning
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=context.negative_embeds["encoder_hidden_states"],
            attention_kwargs=None,
            return_dict=False,
            **extra,
        )[0]
        return uncond + context.guidance_scale * (output - uncond)

    def _decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        config = self.pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
        video = self.pipeline.vae.decode(latents * std + mean, return_dict=False)[0]  # [B, C, T, H, W]
        return video.permute(0, 2, 1, 3, 4)


def load_condition_image(value: Any, where: str) -> Image.Image:
    """A condition image as RGB: a PIL image, a ``data:image/...;base64,`` URL (JSON-friendly, as prompt metadata
    carries it) or a PNG/JPEG file path. Decoded by PIL only, size-checked before the pixels are read.

    Raises:
        UsageError: a value of another type, or a malformed data URL (naming ``where``).
        BadFileError: a missing or undecodable file (naming it).
    """
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if not isinstance(value, str):
        raise UsageError(f"{where}: expected a PIL image, a data:image URL or a file path, got {type(value).__name__}")
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise UsageError(f"{where}: a data URL must be 'data:image/<png|jpeg>;base64,...', got {header[:40]!r}")
        try:
            source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
        except ValueError as err:
            raise UsageError(f"{where}: not valid base64 ({err})") from err
        name = f"{where} (data URL)"
    else:
        path = Path(value)
        if not path.is_file():
            raise BadFileError(f"{where}: condition image file {value!r} not found")
        source, name = path, f"{where}: {value}"
    try:
        with Image.open(source, formats=("PNG", "JPEG")) as image:
            if image.width * image.height > MAX_CONDITION_PIXELS:
                raise BadFileError(f"{name}: {image.width}x{image.height} is larger than {MAX_CONDITION_PIXELS} pixels")
            return image.convert("RGB")
    except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise BadFileError(f"{name}: not a readable PNG/JPEG image ({err})") from err


class WanI2VAdapter(WanAdapter):
    """Wan 2.1 image-to-video: the T2V adapter plus, per sample, the condition image as the pipeline feeds it.

    As ``WanImageToVideoPipeline`` does, the image (resized to the sample's size) becomes the first frame of an
    otherwise black clip, VAE-encoded and normalised; a 4-channel frame mask (1 on the first frame) is prepended,
    and the result (``[B, 4 + C, T', h, w]``) is concatenated to the noisy latents on the channel axis at every
    call. The CLIP vision encoder's penultimate states enter the transformer as ``encoder_hidden_states_image``
    (both CFG passes). The pipeline takes one image for the whole batch; here each prompt has its own, encoded
    one at a time as the pipeline encodes a single image, so a batch sharing one image reproduces the pipeline's
    latents exactly (tested).

    Condition images are given to :meth:`prepare` (one per prompt), or registered per prompt text beforehand with
    :meth:`register_conditions` (what RL does from the prompts' metadata, so that ReFL, best-of-N references and
    evaluation, which call ``prepare`` with prompts only, find them). Only the noise latents are trained on and
    returned; :meth:`decode` decodes them alone, as the pipeline does.
    """

    families = ("wan-i2v",)

    def __init__(self, generator: Any) -> None:
        super().__init__(generator)
        self._conditions: dict[str, Any] = {}

    def register_conditions(self, prompts: Sequence[str], images: Sequence[Any]) -> None:
        """Remember each prompt's condition image (PIL, ``data:image`` URL or file path; a later one replaces it)."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} condition images for {len(prompts)} prompts")
        for prompt, image in zip(prompts, images):
            self._conditions[prompt] = image

    def _condition(self, context: DenoisingContext, prompts: list[str], images: Sequence[Any] | None) -> None:
        pipe = self.pipeline
        if images is None:
            missing = [p for p in prompts if p not in self._conditions]
            if missing:
                raise UsageError(
                    f"{self.generator.family} is image-to-video and prompt {missing[0]!r} has no condition image: "
                    "pass condition_images, or give each prompt's metadata a 'condition_image' (a data:image URL "
                    "or a PNG/JPEG path; the shapes-i2v:<split> prompt source has them)."
                )
            images = [self._conditions[p] for p in prompts]
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} condition images for {len(prompts)} prompts")
        assert context.num_frames is not None
        image_embeds, conditions = [], []
        for i, value in enumerate(images):
            image = load_condition_image(value, f"condition image of prompt {i} ({prompts[i]!r})")
            if self._uses_image_embeds:
                image_embeds.append(pipe.encode_image(image, self.device))
            pixels = pipe.video_processor.preprocess(image, height=context.height, width=context.width)
            pixels = pixels.to(self.device, dtype=torch.float32)
            # Zero "latents" keep prepare_latents from drawing noise (initial_latents draws it, with its own RNG).
            zeros = torch.zeros(self._latent_shape(context, 1), device=self.device)
            _, condition = pipe.prepare_latents(
                pixels,
                1,
                pipe.vae.config.z_dim,
                context.height,
                context.width,
                context.num_frames,
                torch.float32,
                self.device,
                None,
                zeros,
            )
            conditions.append(condition)
        context.embeds["condition"] = torch.cat(conditions)
        if image_embeds:
            context.embeds["image_embeds"] = torch.cat(image_embeds).to(self.denoiser.dtype)

    @property
    def _uses_image_embeds(self) -> bool:
        # Wan 2.1 I2V cross-attends to CLIP image states; a transformer without image_dim takes none.
        return self.denoiser.config.get("image_dim") is not None and self.pipeline.image_encoder is not None

    def _latent_shape(self, context: DenoisingContext, batch: int) -> tuple[int, ...]:
        pipe = self.pipeline
        assert context.num_frames is not None
        frames = (context.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        side = pipe.vae_scale_factor_spatial
        return (batch, pipe.vae.config.z_dim, frames, context.height // side, context.width // side)

    def _initial_latents(self, context: DenoisingContext, generator: torch.Generator | None) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        # As the pipeline's prepare_latents: noise over the VAE's z_dim channels, not the transformer's inputs.
        return randn_tensor(
            self._latent_shape(context, context.batch_size),
            generator=generator,
            device=self.device,
            dtype=torch.float32,
        )

    def _model_input(self, latents: Tensor, context: DenoisingContext) -> tuple[Tensor, dict[str, Any]]:
        model_input = torch.cat([latents, context.embeds["condition"]], dim=1).to(self.denoiser.dtype)
        return model_input, {"encoder_hidden_states_image": context.embeds.get("image_embeds")}
