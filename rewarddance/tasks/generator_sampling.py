"""The generator side of RL fine-tuning, as the base of :class:`~rewarddance.tasks.GeneratorRLTask`.

:class:`GeneratorSampling` loads the generator for training (LoRA on the denoiser or full fine-tuning, the VAE and
text encoders frozen), moves the frozen parts to the device, samples the current policy or the *starting* one (the
denoiser with adapters disabled, or a frozen copy kept for full fine-tuning), keeps the latents of best-of-N
candidates for ReFL's anchor loss, exports the tuned generator as a diffusers folder, and holds the mechanics of
manual optimization (a loss backpropagated in parts, the Trainer settings it refuses, older checkpoints). The task
adds the reward, the algorithms and the diagnostics.
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rewarddance.errors import UsageError
from rewarddance.models.adapters import DenoisingContext, GeneratorAdapter, adapter_for
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.generators import Generator, load_generator, save_pipeline
from rewarddance.rl.rewards import Reward
from rewarddance.rl.settings import GeneratorLora, as_settings

__all__ = ["GeneratorSampling", "SampleCollapseWarning"]

MANUAL_STEPS = "epoch_loop.manual_optimization.optim_step_progress"
"""Where a fit loop's state (``checkpoint["loops"]["fit_loop"]``) counts manual optimizer steps."""


def _seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across runs and processes, unlike ``hash``)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


class SampleCollapseWarning(UserWarning):
    """The generator's samples have collapsed to near-constant (black, white, flat) images."""


class GeneratorSampling(L.LightningModule):
    """Load, freeze, sample and export the generator of an RL run (module docstring).

    A base class: the subclass declares the hyperparameters this reads (``generator``, ``generator_kwargs``,
    ``lora``, ``gradient_checkpointing``, ``frozen_dtype``, ``height``, ``width``, ``num_frames``,
    ``num_inference_steps``, ``guidance_scale``, ``negative_prompt``, ``seed``, ``collapse_std``), calls :meth:`load_generator` from
    its ``configure_model`` and sets ``reward`` there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generator: Generator | None = None
        self.adapter: GeneratorAdapter | None = None
        self.reward: Reward | None = None
        self.keep_candidate_latents = False
        """Keep the clean latents of the starting model's best-of-N candidates (ReFL's anchor loss trains on them)."""
        self._starting_denoiser: torch.nn.Module | None = None
        self._candidate_latents: dict[str, Tensor] = {}  # per prompt: clean latents of the reference candidates
        self._collapsed = False

    @property
    def lora_settings(self) -> GeneratorLora | None:
        """LoRA settings, or None for full fine-tuning."""
        return as_settings(self.hparams.lora, GeneratorLora)

    def check_generator(self, generator: Generator) -> None:
        """Refuse a generator the subclass cannot train (called right after loading); accepts any by default."""

    def load_generator(self) -> None:
        """Load the generator: LoRA or full fine-tuning of the denoiser, gradient checkpointing, the rest frozen."""
        generator = load_generator(self.hparams.generator, **(self.hparams.generator_kwargs or {}))
        self.check_generator(generator)
        if generator.kind == "video" and self.hparams.num_frames is None:
            raise UsageError(
                f"{generator.family} samples videos: set model.init_args.num_frames (4k + 1 for Wan, e.g. 5)"
            )
        for module in (generator.vae, *generator.text_encoders, generator.image_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        denoiser = generator.denoiser
        lora = self.lora_settings
        if lora is not None:
            denoiser.requires_grad_(False)  # add_adapter leaves base weights as they are
            denoiser.add_adapter(lora.to_peft_config())
        else:
            denoiser.requires_grad_(True)
        if self.hparams.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        # load_generator returns eval mode; Lightning keeps the modes it finds, and checkpointing needs training mode.
        denoiser.train()
        self.generator = generator
        self.denoiser = denoiser  # the only submodule: trained, checkpointed, moved by Lightning
        self.adapter = adapter_for(generator)

    def keep_starting_model(self) -> None:
        """Keep a frozen copy of the denoiser as the starting model (full fine-tuning changes the weights themselves).

        A plain attribute, not a submodule: it must not be trained, checkpointed or counted.
        """
        starting = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        object.__setattr__(self, "_starting_denoiser", starting)

    def components(self) -> Generator:
        """The loaded generator (loaded, with the reward, on first use)."""
        if self.generator is None or self.adapter is None or self.reward is None:
            self.configure_model()
        assert self.generator is not None
        return self.generator

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Every frozen network: VAE, text encoders, the starting-model copy, the reward's networks."""
        generator = self.components()
        modules = [generator.vae, *generator.text_encoders]
        if generator.image_encoder is not None:
            modules.append(generator.image_encoder)
        if self._starting_denoiser is not None:
            modules.append(self._starting_denoiser)
        assert self.reward is not None
        return modules + self.reward.frozen_modules()

    def on_fit_start(self) -> None:
        # Lightning moved the denoiser (the only submodule); the frozen parts follow by hand.
        generator = self.components()
        cast = {"dtype": resolve_dtype(self.hparams.frozen_dtype)} if self.hparams.frozen_dtype else {}
        for module in (generator.vae, *generator.text_encoders, generator.image_encoder, self._starting_denoiser):
            if module is not None:
                module.to(device=self.device, **cast)
        assert self.reward is not None
        self.reward.to(self.device)

    @contextlib.contextmanager
    def starting_policy(self) -> Iterator[None]:
        """Run the generator as the *starting* model inside this block (LoRA disabled, or the frozen copy)."""
        generator = self.components()
        if self.lora_settings is not None:
            self.denoiser.disable_adapters()
            try:
                yield
            finally:
                self.denoiser.enable_adapters()
            return
        if self._starting_denoiser is None:
            raise RuntimeError("No starting model is kept (full fine-tuning keeps one only when something needs it)")
        attr = "unet" if getattr(generator.pipeline, "unet", None) is not None else "transformer"
        trained = getattr(generator.pipeline, attr)
        setattr(generator.pipeline, attr, self._starting_denoiser)
        try:
            yield
        finally:
            setattr(generator.pipeline, attr, trained)

    def seed_for(self, *parts: Any) -> int:
        """A seed from the task's ``seed`` and ``parts`` (the same in every run and process)."""
        return _seed(self.hparams.seed, *parts)

    def sampling_kwargs(self) -> dict[str, Any]:
        """The arguments of ``GeneratorAdapter.prepare`` (geometry, schedule, guidance)."""
        h = self.hparams
        return {
            "height": h.height,
            "width": h.width,
            "num_inference_steps": h.num_inference_steps,
            "guidance_scale": h.guidance_scale,
            "num_frames": h.num_frames,
            "negative_prompt": h.negative_prompt,
        }

    def register_conditions(self, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        """Image-to-video: hand each prompt's ``metadata["condition_image"]`` (a ``data:image`` URL or an image path;
        the ``shapes-i2v:<split>`` prompts carry one) to the adapter, which every later sampling of the prompt
        reads; a no-op for other generators."""
        generator = self.components()
        if generator.task != "i2v":
            return
        for prompt, meta in zip(prompts, metadata):
            if not (meta or {}).get("condition_image"):
                raise UsageError(
                    f"{generator.family} is image-to-video, and the metadata of prompt {prompt!r} has no "
                    "'condition_image' (a data:image URL or a PNG/JPEG path): use prompts that carry one, e.g. "
                    "data.init_args.train: shapes-i2v:train."
                )
        assert self.adapter is not None
        self.adapter.register_conditions(list(prompts), [meta["condition_image"] for meta in metadata])

    def step_rng(self, *tags: Any) -> torch.Generator:
        # From the seed, the step and the rank: reproducible, resumable, different on every rank.
        rank = self.global_rank if self._trainer is not None else 0
        return torch.Generator().manual_seed(self.seed_for(self.global_step, rank, *tags))

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, samples_per_prompt: int = 1, seed: int = 0) -> Tensor:
        """Sample ``samples_per_prompt`` images (videos) per prompt with the current denoiser, without gradient.

        Returns:
            ``[len(prompts) * samples_per_prompt, 3, H, W]`` (videos ``[.., T, 3, H, W]``) in [0, 1], each
            prompt's samples in a row.
        """
        latents, context = self._sample_latents(prompts, samples_per_prompt, seed)
        return self.adapter.decode(latents, context)  # type: ignore[union-attr]

    @torch.no_grad()
    def _sample_latents(
        self, prompts: Sequence[str], samples_per_prompt: int, seed: int
    ) -> tuple[Tensor, DenoisingContext]:
        self.components()
        assert self.adapter is not None
        context = self.adapter.prepare(list(prompts), **self.sampling_kwargs()).repeat_interleave(samples_per_prompt)
        latents = self.adapter.initial_latents(context, seed)
        return self.adapter.denoise(latents, context, 0, context.num_steps, seed + 1), context

    def sample_starting_model(self, prompt: str, n: int, seed: int) -> Tensor:
        """``n`` samples of the starting model for one prompt: the candidates of best-of-N references."""
        with torch.no_grad(), self.starting_policy(), self.precision_context():
            latents, context = self._sample_latents([prompt], n, seed)
            if self.keep_candidate_latents:
                self._candidate_latents[prompt] = latents.detach().cpu()  # trimmed to the chosen ones on first use
            return self.adapter.decode(latents, context)  # type: ignore[union-attr]

    def reference_latents(self, prompts: Sequence[str]) -> Tensor:
        """Clean latents of each prompt's references (``[len(prompts) * top_k, ...]``), for the anchor loss."""
        assert self.reward is not None
        rows = []
        for prompt in prompts:
            selection = self.reward.references(prompt)  # type: ignore[attr-defined]
            latents = self._candidate_latents.get(prompt)
            if latents is None:
                raise RuntimeError(f"No latents kept for the references of {prompt!r} (chosen before this run?)")
            if latents.shape[0] != selection.indices.numel():
                latents = self._candidate_latents[prompt] = latents[selection.indices.cpu()]
            rows.append(latents)
        return torch.cat(rows).to(self.device)

    # -- manual optimization -------------------------------------------------------------------------------

    def backward_part(self, loss: Tensor, last: bool = True) -> None:
        """Backpropagate one part of an update's loss. Under DDP every part but the ``last`` accumulates locally
        (``DistributedDataParallel.no_sync``: Lightning's ``prepare_for_backward`` then leaves the reducer unarmed)
        and the last all-reduces the accumulated gradient once; FSDP reduces each part (the same sum)."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)  # parallel strategies only
        with contextlib.nullcontext() if last or block is None else block():
            self.manual_backward(loss)

    def check_trainer(self) -> None:
        """Refuse, naming the replacement, what Lightning refuses with manual optimization (call it from
        ``configure_callbacks``: Lightning validates the Trainer right after)."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        if trainer.gradient_clip_val:
            raise UsageError(
                f"trainer.gradient_clip_val: {trainer.gradient_clip_val}: the RL task clips gradients itself (it "
                "backpropagates each GRPO step as it goes, which Lightning's clipping refuses): remove it and set "
                f"model.init_args.max_grad_norm: {trainer.gradient_clip_val} (the default is 1.0)."
            )
        if trainer.accumulate_grad_batches != 1:
            raise UsageError(
                f"trainer.accumulate_grad_batches: {trainer.accumulate_grad_batches}: the RL task updates once per "
                "batch (manual optimization): remove it and raise data.init_args.batch_size instead."
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint saved under automatic optimization (before this task optimized manually) counts its steps
        # in the automatic loop's progress, and global_step reads the manual one: carry the count over.
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        automatic = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
        manual = loop.get(MANUAL_STEPS)
        if automatic and manual and automatic["total"]["completed"] > manual["total"]["completed"] == 0:
            loop[MANUAL_STEPS] = copy.deepcopy(automatic)

    def check_collapse(self, images: Tensor) -> float:
        """The batch's mean per-image pixel std; warns (:class:`SampleCollapseWarning`) when it falls below
        ``collapse_std`` (once per collapse, again after a recovery)."""
        std = float(images.detach().float().flatten(1).std(dim=1).mean())
        collapsed = std < self.hparams.collapse_std
        if collapsed and not self._collapsed:
            rank_zero_warn(
                f"Samples collapsed to near-constant images at step {self.global_step}: mean per-image pixel std "
                f"{std:.4f} < collapse_std {self.hparams.collapse_std} (black, white or flat outputs). Typical of "
                "reward hacking or a too-high learning rate; inspect samples and the oracle score.",
                category=SampleCollapseWarning,
            )
        self._collapsed = collapsed
        return std

    def precision_context(self) -> contextlib.AbstractContextManager[Any]:
        # Hooks outside training_step run without the precision plugin's autocast; mixed-dtype parts need it.
        if self._trainer is None:
            return contextlib.nullcontext()
        return self.trainer.precision_plugin.forward_context()

    def export(self, folder: str | Path) -> Path:
        """Save the tuned generator as a diffusers folder that ``load_generator`` reads back.

        With LoRA, the adapter is fused into a copy of the denoiser (the folder is a plain pipeline) and also
        saved alone under ``folder/lora`` (``denoiser.load_lora_adapter`` applies it to the starting model).
        """
        generator = self.components()
        folder = Path(folder)
        denoiser: torch.nn.Module = self.denoiser
        if self.lora_settings is not None:
            denoiser.save_lora_adapter(folder / "lora")
            denoiser = copy.deepcopy(denoiser)
            denoiser.fuse_lora()
            denoiser.unload_lora()
        pipeline = generator.pipeline
        attr = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
        # save_pipeline: frozen parts cast to frozen_dtype must not make the folder fail a plain load.
        save_pipeline(type(pipeline)(**{**pipeline.components, attr: denoiser}), folder)
        return folder
