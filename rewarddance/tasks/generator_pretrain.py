"""Pretrain a tiny text-to-image pipeline on the shapes world, so that RL has a generator to start from.

Real RL fine-tuning starts from a pretrained generator; none can be downloaded where rewarddance is developed,
so :class:`GeneratorPretrainTask` trains a tiny Stable Diffusion 1.5-architecture pipeline (the registry's
``tiny-sd15``: KL VAE, CLIP text encoder, UNet with cross-attention) on prompt-render pairs streamed by
:class:`~rewarddance.shapes.text_image.TextImageDataModule`, in two phases of one run:

1. the VAE alone (L1 + MSE reconstruction, a tiny KL weight) for ``vae_steps`` steps; then its latent scale
   is measured and stored as ``scaling_factor`` (unit-variance latents, as SD's 0.18215 was chosen);
2. the UNet and the text encoder together on the frozen VAE's latents: v-prediction on a zero-terminal-SNR
   DDIM schedule (ENV.md: epsilon prediction left the backgrounds tinted), prompts dropped to ``""`` 10% of
   the time for classifier-free guidance, an EMA of the weights for sampling.

Every ``eval_every`` steps the EMA pipeline samples a fixed GenEval-style prompt set, and the pixel oracle
judges it (``oracle/geneval``, per tag, per part). At the end the EMA pipeline is saved as an ordinary
diffusers folder (``export_dir``) with a training record, loadable with ``load_generator(folder)``.

Run it with ``python -m rewarddance fit --config configs/pretrain/shapes_t2i.yaml``.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from rewarddance.callbacks import task_callbacks
from rewarddance.errors import UsageError
from rewarddance.models.generators import SAMPLING_DEFAULTS, Generator, load_generator, sample
from rewarddance.models.pixels import to_pil_images
from rewarddance.shapes.geneval import format_report, geneval_report
from rewarddance.shapes.prompts import geneval_prompts

DEFAULT_SIZE: dict[str, Any] = {
    "width": 64,
    "num_layers": 1,
    "num_heads": 4,
    "text_width": 64,
    "text_layers": 2,
    "text_heads": 2,
    "latent_channels": 4,
    "vae_width": 16,
    "vae_levels": 3,
    "image_size": 64,
}
"""``tiny-sd15`` fields of the shapes generator: 64 px images, 16 x 16 x 4 latents, ~2.5M parameters."""


def shapes_scheduler(prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction") -> DDIMScheduler:
    """SD's scaled-linear betas rescaled to zero terminal SNR, DDIM with trailing timesteps.

    Zero terminal SNR makes the last training step pure noise, as sampling starts: without it the model never
    learns to set the mean colour of an image from scratch (the tinted backgrounds ENV.md saw).
    """
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


class GeneratorPretrainTask(L.LightningModule):
    """Two-phase pretraining of a tiny SD-1.5-style pipeline on shapes renders (module docstring).

    Args:
        generator: Registry name of the pipeline to build (an SD-1.5-style family).
        size: ``TinyGeneratorSize`` fields (see :data:`DEFAULT_SIZE`).
        init_seed: Seed of the random initial weights.
        vae_steps: Optimizer steps of phase 1 (VAE only).
        vae_lr: Adam learning rate of the VAE.
        kl_weight: Weight of the VAE's KL term (small: the latents only need to be well-scaled, not Gaussian).
        lr: AdamW learning rate of UNet and text encoder (after a linear warmup of ``warmup_steps``).
        warmup_steps: Warmup of phase 2.
        weight_decay: AdamW weight decay.
        prediction_type: ``v_prediction`` (default) or ``epsilon``.
        prompt_dropout: Probability of training on the empty prompt (classifier-free guidance).
        ema_decay: Decay of the EMA weights that are evaluated and exported.
        guidance_scale: Classifier-free guidance weight for evaluation samples (stored as the default to use).
        num_inference_steps: DDIM steps for evaluation samples.
        eval_every: Evaluate every this many optimizer steps of phase 2 (0: only at the end).
        eval_per_tag: Prompts per GenEval tag in the fixed evaluation set (``shapes:val``).
        eval_samples_per_prompt: Images per evaluation prompt.
        final_eval_per_tag: Prompts per tag for the evaluation recorded with the export.
        export_dir: Folder to save the EMA pipeline and its training record to at the end (None: no export).
        run_command: The command line, recorded in the training record.
    """

    def __init__(
        self,
        generator: str = "tiny-sd15",
        size: dict[str, Any] | None = None,
        init_seed: int = 0,
        vae_steps: int = 1500,
        vae_lr: float = 1e-3,
        kl_weight: float = 1e-6,
        lr: float = 6e-4,
        warmup_steps: int = 200,
        weight_decay: float = 0.0,
        prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction",
        prompt_dropout: float = 0.1,
        ema_decay: float = 0.999,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 20,
        eval_every: int = 1000,
        eval_per_tag: int = 8,
        eval_samples_per_prompt: int = 2,
        final_eval_per_tag: int = 25,
        export_dir: str | None = None,
        run_command: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator: Generator | None = None
        self._latent_sq: list[float] = []
        self._start = time.monotonic()
        self.history: list[dict[str, float]] = []
        self._batch_metadata: list[dict[str, Any]] = []  # the current batch's prompts, for the VAE's oracle check

    # -- model ------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.generator is not None:
            return
        h = self.hparams
        generator = load_generator(h.generator, seed=h.init_seed, **{**DEFAULT_SIZE, **(h.size or {})})
        if generator.family != "sd15":
            raise UsageError(
                f"model.init_args.generator: GeneratorPretrainTask trains SD-1.5-style pipelines, not "
                f"{generator.family!r} ({h.generator!r}): use an sd15 generator (e.g. tiny-sd15)."
            )
        generator.pipeline.scheduler = shapes_scheduler(h.prediction_type)
        self.generator = generator
        pipe = generator.pipeline
        self.vae, self.unet, self.text_encoder = pipe.vae, pipe.unet, pipe.text_encoder
        self.ema_unet = copy.deepcopy(pipe.unet).requires_grad_(False)
        self.ema_text_encoder = copy.deepcopy(pipe.text_encoder).requires_grad_(False)

    def ema_generator(self) -> Generator:
        """The pipeline with the EMA weights (what is evaluated and exported); shares the VAE and scheduler."""
        assert self.generator is not None
        pipe = self.generator.pipeline
        components = {**pipe.components, "unet": self.ema_unet, "text_encoder": self.ema_text_encoder}
        return Generator(type(pipe)(**components), "sd15", "unet", "t2i", "shapes-t2i (EMA)")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        h = self.hparams
        vae = torch.optim.Adam(self.vae.parameters(), lr=h.vae_lr)
        denoiser = torch.optim.AdamW(
            [*self.unet.parameters(), *self.text_encoder.parameters()], lr=h.lr, weight_decay=h.weight_decay
        )
        return [vae, denoiser]

    def configure_callbacks(self) -> list[L.Callback]:
        return task_callbacks(self)  # stop on a NaN loss or gradient (manual optimization: checked in manual_backward)

    @property
    def in_vae_phase(self) -> bool:
        return self.global_step < self.hparams.vae_steps

    # -- training ---------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["images"].to(self.device, torch.float32) / 127.5 - 1.0
        vae_opt, denoiser_opt = self.optimizers()
        if self.in_vae_phase:
            loss = self._vae_step(images, vae_opt)
            if self.global_step == self.hparams.vae_steps:
                self._finish_vae(images)
        else:
            loss = self._denoiser_step(images, batch["prompts"], denoiser_opt)
            step = self.global_step - self.hparams.vae_steps
            every = self.hparams.eval_every
            if every and step % every == 0:
                self.evaluate(self.hparams.eval_per_tag)
        return loss

    def _vae_step(self, images: Tensor, optimizer: Any) -> Tensor:
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        recon = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = recon + self.hparams.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=1.0)
        optimizer.step()
        # The latent scale is measured over the last 50 steps of the phase.
        self._latent_sq = [*self._latent_sq[-49:], float(posterior.mode().detach().pow(2).mean())]
        self.log_dict({"vae/loss": recon.detach(), "vae/kl": kl.detach()}, prog_bar=True)
        return loss.detach()

    @torch.no_grad()
    def _finish_vae(self, images: Tensor) -> None:
        scale = 1.0 / math.sqrt(sum(self._latent_sq) / len(self._latent_sq))
        self.vae.register_to_config(scaling_factor=scale)
        self.vae.requires_grad_(False).eval()
        reconstruction = self.vae.decode(self.vae.encode(images).latent_dist.mode()).sample
        pixels = ((reconstruction + 1) / 2).clamp(0, 1)
        originals = ((images + 1) / 2).clamp(0, 1)
        # The oracle must judge reconstructions like the originals, or the VAE caps what the generator can do.
        report = geneval_report(to_pil_images(pixels), self._batch_metadata)
        truth = geneval_report(to_pil_images(originals), self._batch_metadata)
        metrics = {"vae/latent_scale": scale, "vae/oracle": report["correct"], "vae/oracle_originals": truth["correct"]}
        self.log_dict(metrics)
        self.history.append({"step": float(self.global_step), **metrics})
        rank_zero_info(
            f"[rewarddance] VAE done: scaling_factor {scale:.4f}, oracle on reconstructions {report['correct']:.3f} "
            f"(originals {truth['correct']:.3f})"
        )

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._batch_metadata = batch["metadata"]

    def _denoiser_step(self, images: Tensor, prompts: list[str], optimizer: Any) -> Tensor:
        h = self.hparams
        scheduler = self.generator.pipeline.scheduler
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.mode() * self.vae.config.scaling_factor
        drop = torch.rand(len(prompts)) < h.prompt_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
        states = self.encode_prompts(prompts, self.text_encoder)
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=self.device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if h.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        prediction = self.unet(noisy, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(prediction, target)
        step = self.global_step - h.vae_steps
        for group in optimizer.param_groups:
            group["lr"] = h.lr * min(1.0, (step + 1) / max(1, h.warmup_steps))
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=1.0)
        optimizer.step()
        self._update_ema(step)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss.detach()

    def encode_prompts(self, prompts: list[str], text_encoder: torch.nn.Module) -> Tensor:
        """The last hidden state of the text encoder, tokenized exactly as ``StableDiffusionPipeline.encode_prompt``."""
        tokenizer = self.generator.pipeline.tokenizer
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return text_encoder(ids)[0]

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        # Warm-started decay: early EMA weights would otherwise be dominated by the random init.
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        for live, ema in ((self.unet, self.ema_unet), (self.text_encoder, self.ema_text_encoder)):
            for p, e in zip(live.parameters(), ema.parameters(), strict=True):
                e.lerp_(p.detach(), 1.0 - decay)

    # -- evaluation and export --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, per_tag: int) -> dict[str, float]:
        """Sample the fixed ``shapes:val`` prompts with the EMA pipeline and judge them with the oracle."""
        h = self.hparams
        prompts = geneval_prompts(per_tag, split="val", seed=0)
        n = h.eval_samples_per_prompt
        generator = self.ema_generator()
        side = {**DEFAULT_SIZE, **(h.size or {})}["image_size"]
        images: list[Any] = []
        for start in range(0, len(prompts), 32):
            chunk = [m["prompt"] for m in prompts[start : start + 32] for _ in range(n)]
            images += sample(
                generator,
                chunk,
                height=side,
                width=side,
                num_inference_steps=h.num_inference_steps,
                guidance_scale=h.guidance_scale,
                seed=start,
                output_type="pil",
            )
        report = geneval_report(images, [m for m in prompts for _ in range(n)])
        metrics = {f"oracle/{k}": v for k, v in report.items() if k != "images"}
        if self.logger is not None:  # not self.log: the final evaluation runs in on_train_end
            self.logger.log_metrics(metrics, step=self.global_step)
        self.history.append({"step": float(self.global_step), "wall_s": time.monotonic() - self._start, **metrics})
        rank_zero_info(f"[rewarddance] step {self.global_step}: {format_report(report)}")
        return report

    def on_train_end(self) -> None:
        if self.hparams.export_dir and not self.in_vae_phase:
            self.export(self.hparams.export_dir)

    @rank_zero_only
    def export(self, folder: str) -> Path:
        """Save the EMA pipeline (a diffusers folder) with ``training_record.json`` and ``TRAINING_RECORD.md``."""
        h = self.hparams
        out = Path(folder)
        final = self.evaluate(h.final_eval_per_tag)
        # float16 on disk halves the bundle; load_generator reads it back as float32 unless asked otherwise.
        self.ema_generator().to(dtype=torch.float16).save_pretrained(out)
        # What sampling should use unless told otherwise (load_generator reads it): not the pipeline's guidance 7.5.
        defaults = {"guidance_scale": h.guidance_scale, "num_inference_steps": h.num_inference_steps}
        (out / SAMPLING_DEFAULTS).write_text(json.dumps(defaults, indent=2) + "\n")
        record = {
            "command": h.run_command,
            "hyperparameters": dict(h),
            "global_step": self.global_step,
            "vae_steps": h.vae_steps,
            "wall_time_s": round(time.monotonic() - self._start, 1),
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "parameters": {
                name: sum(p.numel() for p in module.parameters())
                for name, module in (("unet", self.unet), ("text_encoder", self.text_encoder), ("vae", self.vae))
            },
            "final_eval": {"prompts_per_tag": h.final_eval_per_tag, **final},
            "history": self.history,
        }
        (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
        rank_zero_info(f"[rewarddance] exported the EMA pipeline to {out}: {format_report(final)}")
        return out
