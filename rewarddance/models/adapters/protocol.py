"""What RL and search need from a generator, step by step: the :class:`GeneratorAdapter` protocol.

A diffusers pipeline's ``__call__`` runs a whole sampling loop; ReFL, GRPO and search over paths need its parts:
encode the prompts once, draw the initial noise, call the denoiser at one step (with classifier-free guidance),
advance the scheduler, predict the clean latent, re-noise, and decode with gradients. :class:`GeneratorAdapter`
names these parts; :class:`DenoisingContext` carries everything a sampling run needs besides the latents.

:class:`rewarddance.models.adapters.pipeline.PipelineAdapter` implements the protocol on the diffusers pipelines
(one subclass per family); :func:`rewarddance.models.adapters.adapter_for` picks the one of a loaded generator.
The RL math (:mod:`rewarddance.rl`) and search (:mod:`rewarddance.inference`) are written against the protocol
only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from rewarddance.models.generators import Generator
from rewarddance.models.seeding import RandomSource

LatentSpace = Literal["vp", "ve", "flow"]
"""How a family's noisy latents relate to the clean one (see :mod:`rewarddance.models.schedules`)."""


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


class GeneratorAdapter(Protocol):
    """Step-level access to one generator: what ReFL, GRPO and search call.

    Step indices run from 0 (pure noise, the first denoiser call) to ``S = context.num_steps`` (the clean sample):
    the latents "at step ``k``" are those the denoiser sees at ``context.timesteps[k]``.
    """

    generator: Generator
    """The loaded generator whose denoiser is called (trained by RL, so not a copy)."""

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
        """Encode the prompts and set the schedule, as the pipeline does before its loop (image-to-video: one
        condition image per prompt, or None to look each prompt's up among those registered with the adapter)."""
        ...

    def register_conditions(self, prompts: Sequence[str], images: Sequence[Any]) -> None:
        """Image-to-video: remember each prompt's condition image for later :meth:`prepare` calls given prompts
        only (ReFL, best-of-N references, evaluation); other families raise ``ValueError``."""
        ...

    def initial_latents(self, context: DenoisingContext, generator: RandomSource = None) -> Tensor:
        """The initial noise of a run (a seed gives the same noise as ``generators.sample(..., seed=seed)``)."""
        ...

    def model_output(self, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        """The guided denoiser output at ``step``, differentiable under the caller's grad mode."""
        ...

    def predict_x0(self, model_output: Tensor, latents: Tensor, step: int, context: DenoisingContext) -> Tensor:
        """The clean latent predicted from the output at ``step`` (float32)."""
        ...

    def denoise(
        self, latents: Tensor, context: DenoisingContext, from_step: int, to_step: int, generator: RandomSource = None
    ) -> Tensor:
        """Run the sampler from ``from_step`` to ``to_step >= from_step`` without gradients."""
        ...

    def renoise(
        self, latents: Tensor, context: DenoisingContext, from_step: int, to_step: int, generator: RandomSource = None
    ) -> Tensor:
        """Move latents at ``from_step`` back to the noisier ``to_step <= from_step`` with fresh noise."""
        ...

    def decode(self, latents: Tensor, context: DenoisingContext) -> Tensor:
        """Differentiable decode to pixels in [0, 1] (``[B, C, H, W]``; video ``[B, T, C, H, W]``)."""
        ...
