"""RL fine-tuning of a diffusers generator against a frozen reward: ReFL, Flow-GRPO or DiffusionNFT, as one
LightningModule.

:class:`GeneratorRLTask` loads a generator by name (``tiny-sd3``, ``sd3``, a ``save_pretrained`` folder...; see
:mod:`rewarddance.models.generators`) and a reward (:mod:`rewarddance.rl.rewards`: an exported rewarddance reward
model, pairwise with best-of-N references or pointwise, or any differentiable callable), both in
:meth:`~GeneratorRLTask.configure_model`, and trains the denoiser (LoRA or full) on prompt batches from
:class:`~rewarddance.data.prompts.PromptDataModule`. The math is in :mod:`rewarddance.rl`; this module orchestrates:

- ``algorithm: refl`` (RewardDance's choice): sample without gradient down to a random late step of the window,
  one denoiser call with gradient, predict :math:`\\hat x_0`, decode, score, maximise the reward
  (:mod:`rewarddance.rl.refl`).
- ``algorithm: grpo`` (Flow-GRPO for flow-matching generators, DDIM's SDE for UNets): SDE rollouts with per-step
  log-probs, group-normalised advantages over ``group_size`` samples per prompt, the clipped policy loss on
  ``train_steps`` of the steps, optionally a KL to the starting model (:mod:`rewarddance.rl.grpo`).
- ``algorithm: nft`` (DiffusionNFT): ``group_size`` ordinary samples per prompt, their rewards mapped to optimality
  probabilities, and the denoising loss of implicit positive / negative policies on the samples' own clean latents
  noised again by the forward process; no log-probs, any sampler, trained without guidance (:mod:`rewarddance.rl.nft`).

GRPO's and DiffusionNFT's updates live in :mod:`rewarddance.tasks.generator_online`.

Guard rails: a non-finite reward, loss or gradient stops the run *before* the update, saves the still-good weights
to ``last-good.ckpt`` and raises :class:`~rewarddance.callbacks.NonFiniteError` (the shared
:class:`~rewarddance.callbacks.NonFiniteGuard` checks loss and gradients, the task its reward); gradient clipping
is the task's ``max_grad_norm``; samples whose pixels stop varying raise a :class:`SampleCollapseWarning`.

Memory: GRPO backpropagates each trained step's loss (divided by the number of steps) as soon as it is computed
(manual optimization), so one step's activations are alive at a time, as in DDPO; the update is the mean loss's.
DiffusionNFT does the same per chunk of samples.

Diagnostics: the reward std in a sliding window of iterations (:class:`rewarddance.metrics.RewardVariance`, the
paper's measure); every ``eval_every`` steps (and before the first) a fixed prompt set (the DataModule's ``val``)
is sampled and judged by the evaluator of its metadata (the shapes world's pixel oracle for its prompts),
GenEval-style, next to the reward on the same images and the sample diversity per prompt, with a reward-hacking
check (:class:`~rewarddance.callbacks.rl_evaluation.RLEvaluation`). At fit end a plot of reward mean and band,
reward variance and oracle score is saved to ``<log dir>/rl_curves.png`` (and logged to wandb when a
``WandbLogger`` is attached; :mod:`rewarddance.callbacks.rl_curves`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

import rewarddance.judge  # noqa: F401 - registers the reward_model reward
from rewarddance.callbacks import check_finite, gradient_norms, task_callbacks
from rewarddance.callbacks.rl_curves import save_rl_curves
from rewarddance.callbacks.rl_evaluation import RLEvaluation
from rewarddance.data.prompts import PromptItem
from rewarddance.errors import UsageError
from rewarddance.metrics import RewardVariance
from rewarddance.models.generators import Generator
from rewarddance.rl.refl import anchor_loss, refl_loss, refl_predict_x0, refl_step_latents, sample_refl_step
from rewarddance.rl.rewards import RewardSpec, build_reward
from rewarddance.rl.settings import GeneratorLora, GRPOSettings, NFTSettings, ReFLSettings, as_settings
from rewarddance.tasks.generator_online import GroupUpdates
from rewarddance.tasks.generator_sampling import SampleCollapseWarning

__all__ = ["GeneratorRLTask", "SampleCollapseWarning"]

DEFAULT_LR = 1e-5
"""AdamW learning rate when no optimizer is configured (ImageReward's ReFL used 1e-5 on SD 1.4)."""

VP_SDE_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")
"""UNet schedulers GRPO can sample DDIM's SDE with (their latents are VP: no sigma scaling)."""


# -------------------------------------------------------------------------------------------------- the task


class GeneratorRLTask(GroupUpdates):
    """Fine-tune a diffusers generator against a frozen reward with ReFL, Flow-GRPO or DiffusionNFT.

    Batches are lists of ``{"prompt", "metadata"}`` (:class:`~rewarddance.data.prompts.PromptDataModule`). The
    generator and the reward are built in :meth:`configure_model`; only the denoiser is a submodule (trained,
    checkpointed); the VAE, text encoders and reward model are frozen and kept out of checkpoints.

    Args:
        generator: Generator name, hub id or folder (``tiny-sd3``, ``sd3``, ``data/generators/shapes-t2i``...).
        generator_kwargs: Further ``load_generator`` arguments: ``dtype``, ``size``, ``revision``, tiny-size
            fields (``width``, ``num_layers``...).
        reward: What to maximise: a registered name (``shapes-color``, a toy), ``{kind: reward_model, path: <export
            folder>, best_of_n: 16, top_k: 2, ...}`` (see ``rewarddance.judge.reward.RewardModelReward``), an import
            path of a reward class or function, or (from Python) any callable ``fn(images, prompts, metadata)``.
        algorithm: ``refl`` (one gradient step at a late step, reward backpropagated), ``grpo`` (Flow-GRPO, or
            DDIM-SDE GRPO for UNets with a DDIM/DDPM scheduler) or ``nft`` (DiffusionNFT: forward process, any
            sampler, trained without guidance).
        refl: ReFL settings (step window, hinge, scale).
        grpo: GRPO settings (group size, SDE noise, clip range, KL, steps trained).
        nft: DiffusionNFT settings (group size, beta, advantage scale, chunk size).
        lora: LoRA on the denoiser; null fine-tunes it fully.
        gradient_checkpointing: Recompute the denoiser's activations in the backward pass.
        frozen_dtype: Cast the frozen VAE and text encoders (and the starting-model copy) to this dtype, e.g.
            ``bfloat16``; use with ``trainer.precision: bf16-mixed``. null keeps float32.
        height: Sample height in pixels.
        width: Sample width in pixels.
        num_frames: Frames per video (video generators only; 4k + 1 for Wan).
        num_inference_steps: Steps of the sampling schedule (ReFL's window and GRPO's rollouts use it).
        guidance_scale: Classifier-free guidance weight; null: the pipeline's default.
        negative_prompt: Negative prompt for classifier-free guidance.
        eval_every: Judge the DataModule's fixed ``val`` prompt set with the shapes oracle every this many
            optimizer steps (and before the first); null or 0: never.
        eval_samples_per_prompt: Samples per evaluation prompt (2 or more also measure diversity per prompt).
        eval_batch_size: Evaluation prompts sampled together.
        reward_window: Iterations in the sliding window of the reward std (the paper: 1,000); the std of
            ``Reward.monitored``, for a combined reward its components' raw scores.
        hacking_window: Steps the reward-hacking check fits its trends over; null: 5 x ``eval_every``.
        hacking_signal: Oracle series compared with the reward: ``parts`` (mean of per-part scores, informative
            early) or ``geneval`` (all-or-nothing GenEval overall).
        collapse_std: Warn when the mean per-image pixel std of a training batch falls below this ([0, 1] pixels).
        seed: Seed of noise, ReFL steps, GRPO draws and evaluation samples (combined with the step and rank).
        optimizer: Optimizer factory; null: AdamW, lr 1e-5, no weight decay.
        lr_scheduler: Learning-rate scheduler factory, stepped every optimizer step; null: none.
        max_grad_norm: Clip the gradients' global L2 norm to this before each update (replaces
            ``trainer.gradient_clip_val``, which manual optimization refuses); null or 0: no clipping.
        plot: Save ``rl_curves.png`` to the log dir at fit end (needs matplotlib).
        export: Save the tuned generator to ``<log dir>/export`` at fit end (a diffusers folder, LoRA fused in,
            the adapter alone in ``export/lora``), loadable by ``load_generator`` and the ``generate`` /
            ``evaluate`` commands. Single-process runs only: sharded runs export from their checkpoint.
    """

    def __init__(
        self,
        generator: str = "tiny-sd3",
        generator_kwargs: dict[str, Any] | None = None,
        reward: RewardSpec | dict[str, Any] = "shapes-color",
        algorithm: Literal["refl", "grpo", "nft"] = "refl",
        refl: ReFLSettings | None = None,
        grpo: GRPOSettings | None = None,
        nft: NFTSettings | None = None,
        lora: GeneratorLora | None = None,
        gradient_checkpointing: bool = False,
        frozen_dtype: str | None = None,
        height: int = 32,
        width: int = 32,
        num_frames: int | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        eval_every: int | None = 50,
        eval_samples_per_prompt: int = 2,
        eval_batch_size: int = 8,
        reward_window: int = 1000,
        hacking_window: int | None = None,
        hacking_signal: Literal["parts", "geneval"] = "parts",
        collapse_std: float = 0.01,
        seed: int = 0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        max_grad_norm: float | None = 1.0,
        plot: bool = True,
        export: bool = True,
    ) -> None:
        super().__init__()  # GeneratorSampling: the generator, its adapter and the reward, loaded in configure_model
        if algorithm not in ("refl", "grpo", "nft"):
            raise ValueError(f"algorithm must be 'refl', 'grpo' or 'nft', got {algorithm!r}")
        # Cheap on purpose: LightningCLI builds the module to print configs; networks load in configure_model().
        ignore = ["optimizer", "lr_scheduler"] + ([] if isinstance(reward, (str, Mapping)) else ["reward"])
        self.save_hyperparameters(ignore=ignore)
        for name in ("refl", "grpo", "nft", "lora"):
            value = self.hparams.get(name)
            if dataclasses.is_dataclass(value):
                # Plain data in checkpoints: they then load with torch.load(weights_only=True).
                self.hparams[name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        self.reward_spec = reward
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.automatic_optimization = False  # the steps below backpropagate, clip and step themselves
        self._validate()

        self.reward_variance = RewardVariance(window=reward_window)
        self.evaluation = RLEvaluation(
            eval_every, eval_samples_per_prompt, eval_batch_size, hacking_window, hacking_signal
        )
        """The fixed-prompt evaluation and its reward-hacking check, run from this task's hooks."""
        self.history: dict[str, dict[str, list[float]]] = {
            "train": {"step": [], "reward_mean": [], "reward_std": [], "window_std": []},
            "eval": self.evaluation.history,
        }
        self.first_ratio: Tensor | None = None
        """GRPO: the importance ratios of the latest fresh rollout's first recompute (exactly 1 when consistent)."""
        self.plot_path: Path | None = None
        self._rollout = None

    # -- settings ----------------------------------------------------------------------------------------------

    @property
    def refl_settings(self) -> ReFLSettings:
        """ReFL settings (defaults when none were given)."""
        return as_settings(self.hparams.refl, ReFLSettings) or ReFLSettings()

    def _validate(self) -> None:
        steps = self.hparams.num_inference_steps
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if self.hparams.algorithm == "refl":
            self.refl_settings.check(steps)
        elif self.hparams.algorithm == "grpo":
            self.grpo_settings.check()
        else:
            self.nft_settings.check()
        if self.hparams.eval_samples_per_prompt < 1 or self.hparams.eval_batch_size < 1:
            raise ValueError("eval_samples_per_prompt and eval_batch_size must be >= 1")
        if (self.hparams.max_grad_norm or 0) < 0:
            raise ValueError(f"max_grad_norm must be >= 0 or null, got {self.hparams.max_grad_norm}")

    # -- model -------------------------------------------------------------------------------------------------

    def check_generator(self, generator: Generator) -> None:
        scheduler = type(generator.scheduler).__name__
        if self.hparams.algorithm == "grpo" and generator.kind == "unet" and scheduler not in VP_SDE_SCHEDULERS:
            raise UsageError(
                f"model.init_args.algorithm: grpo on a UNet ({generator.family}) samples DDIM's SDE and needs a DDIM or DDPM "
                f"scheduler, not {scheduler}: pass generator_kwargs.pipeline_kwargs.scheduler, or use algorithm: refl."
            )

    def configure_model(self) -> None:
        """Load the generator (LoRA or full fine-tuning, checkpointing) and set up the reward; idempotent."""
        if self.generator is not None:
            return
        self.load_generator()
        self.keep_candidate_latents = self.hparams.algorithm == "refl" and self.refl_settings.anchor_weight > 0
        reward = build_reward(self.reward_spec)
        reward.setup(sampler=self.sample_starting_model)
        self.reward = reward
        if self.hparams.algorithm == "refl" and not reward.differentiable:
            raise UsageError(
                f"model.init_args.algorithm: refl backpropagates the reward into the generator, and {reward!r} is not "
                "differentiable (model.init_args.reward): use algorithm: grpo (or nft)."
            )
        if self.hparams.algorithm == "refl" and self.refl_settings.anchor_weight > 0 and not reward.needs_references:
            raise UsageError(
                f"model.init_args.refl.anchor_weight trains on the best-of-N references, and {reward!r} chooses none: use a pairwise "
                "reward model, or set anchor_weight: 0."
            )
        grpo_kl = self.hparams.algorithm == "grpo" and self.grpo_settings.kl_coef > 0
        if self.lora_settings is None and (reward.needs_references or grpo_kl):
            self.keep_starting_model()  # the references and the KL are the starting model's

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(params, lr=DEFAULT_LR, weight_decay=0.0)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- training ----------------------------------------------------------------------------------------------

    def training_step(self, batch: list[PromptItem], batch_idx: int) -> Tensor:
        """One update: the algorithm's step backpropagates its loss; then clipping (in
        :meth:`on_before_optimizer_step`), the optimizer step and the scheduler's, as automatic optimization would."""
        prompts = [item["prompt"] for item in batch]
        metadata = [item.get("metadata") or {} for item in batch]
        self.register_conditions(prompts, metadata)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if self.hparams.algorithm == "refl":
            loss = self.refl_step(prompts, metadata)
            self.backward_part(loss)
        elif self.hparams.algorithm == "grpo":
            loss = self.grpo_step(prompts, metadata)
        else:
            loss = self.nft_step(prompts, metadata)
        optimizer.step()  # counts global_step, as the automatic loop's step does
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]
        return loss.detach()

    def refl_step(self, prompts: list[str], metadata: list[dict[str, Any]]) -> Tensor:
        """One ReFL update's loss (the caller backpropagates it): no-grad sampling to a random late step, one step
        with gradient, reward."""
        self.components()
        assert self.adapter is not None and self.reward is not None
        settings = self.refl_settings
        steps = self.hparams.num_inference_steps
        rng = self.step_rng("refl")
        t_min, t_max = settings.window(steps)
        step = sample_refl_step(steps, t_min, t_max, generator=rng)
        # References (pairwise) are sampled now, while no graph is held.
        self.reward.prepare(prompts, metadata)
        state = refl_step_latents(self.adapter, prompts, step, seed=rng, **self.sampling_kwargs())
        images = state.adapter.decode(refl_predict_x0(state), state.context)
        rewards = self.reward(images, prompts, metadata)
        check_finite(self, "reward", rewards)
        loss = refl_loss(rewards, scale=settings.scale, hinge=settings.hinge)
        if settings.anchor_weight > 0:
            anchor = self.anchor_step(prompts, rng)
            self.log("train/anchor_loss", anchor.detach(), batch_size=len(prompts))
            loss = loss + settings.anchor_weight * anchor
        self._record_rewards(rewards, images, len(prompts))
        self.log("train/refl_step", float(step), batch_size=len(prompts))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(prompts))
        return loss

    def anchor_step(self, prompts: list[str], rng: torch.Generator) -> Tensor:
        """The denoising loss on the prompts' best-of-N references at a random step (``refl.anchor_weight``)."""
        assert self.adapter is not None and self.reward is not None
        x0 = self.reference_latents(prompts)
        k = x0.shape[0] // len(prompts)
        # The conditional model without guidance: what pretraining trained.
        kwargs = {**self.sampling_kwargs(), "guidance_scale": 1.0}
        context = self.adapter.prepare(prompts, **kwargs).repeat_interleave(k)
        first, last = self.refl_settings.anchor_steps or (0, context.num_steps - 1)
        step = int(torch.randint(first, last + 1, (), generator=rng))
        return anchor_loss(self.adapter, context, x0, step, rng)

    # -- guard rails and logging -------------------------------------------------------------------------------

    def configure_callbacks(self) -> list[L.Callback]:
        self.check_trainer()  # before Lightning's own checks, whose refusal of clipping names no replacement
        return task_callbacks(self)  # the loss and gradient checks (the reward is checked in the step)

    def on_non_finite(self) -> None:
        """Called by the guard before it stops the run: the curves so far, next to the last good weights."""
        self.save_plot()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Inside optimizer.step(), after the loss scaler unscaled the gradients: where automatic optimization clips.
        norms = gradient_norms(self)
        if norms:
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(list(norms.values()))))
        if self.hparams.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")

    def _record_rewards(self, rewards: Tensor, images: Tensor, batch_size: int) -> None:
        assert self.reward is not None
        r = self.reward.monitored(rewards).detach().float()  # a group-normalised reward's raw scores: they can move
        self.reward_variance.update(r)
        window_std = float(self.reward_variance.compute())
        std = float(r.std()) if r.numel() > 1 else 0.0
        self.log("train/reward", r.mean(), prog_bar=True, batch_size=batch_size)
        self.log("train/reward_std", std, batch_size=batch_size)
        self.log("train/reward_window_std", window_std, batch_size=batch_size)
        for key, value in self.reward.log_values().items():
            self.log(f"reward/{key}", value, batch_size=batch_size)
        pixel_std = self.check_collapse(images)
        self.log("train/pixel_std", pixel_std, batch_size=batch_size)
        train = self.history["train"]
        train["step"].append(float(self.global_step))
        train["reward_mean"].append(float(r.mean()))
        train["reward_std"].append(std)
        train["window_std"].append(window_std)

    # -- evaluation --------------------------------------------------------------------------------------------

    @property
    def last_eval(self) -> dict[str, float]:
        """Metrics of the latest evaluation (``oracle/geneval``, ``oracle/<tag>``, ``hacking/flag``...)."""
        return self.evaluation.last

    def on_train_start(self) -> None:
        if self.evaluation.every:
            items = self.evaluation.prompts(self)
            self.register_conditions([i["prompt"] for i in items], [i["metadata"] for i in items])
        self.evaluation.maybe_evaluate(self, force=True)  # the baseline: the starting model

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.evaluation.maybe_evaluate(self)

    def on_train_end(self) -> None:
        # The final model, when the last step was not an evaluation step.
        self.evaluation.maybe_evaluate(self, force=True)

    # -- plot and checkpoints ----------------------------------------------------------------------------------

    def save_plot(self, path: str | Path | None = None) -> Path | None:
        """Write the RL curves (:func:`~rewarddance.callbacks.rl_curves.save_rl_curves`) to ``path`` (default
        ``<log dir>/rl_curves.png``); call it on every rank (rank 0 writes); returns the path (None elsewhere)."""
        written = save_rl_curves(self, self.history, path)
        if written is not None:
            self.plot_path = written
        return written

    def on_fit_end(self) -> None:
        if self.hparams.plot:
            path = self.save_plot()
            if path is not None:
                print(f"[rewarddance] RL curves: {path}")
        if self.hparams.export:
            if self.trainer.world_size > 1:
                rank_zero_warn("export: skipped in a multi-process run; export from the saved checkpoint instead")
            else:
                # Trainer.log_dir is collective under DDP (it broadcasts rank 0's): read on every rank.
                folder = self.export(Path(self.trainer.log_dir or self.trainer.default_root_dir) / "export")
                print(f"[rewarddance] tuned generator: {folder}")
        summary = self.evaluation.summary()
        if summary is not None:
            print(f"[rewarddance] {summary}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The reward-std window too (torchmetrics keeps metric states out of state_dict): a resumed run's
        # window_std then continues the uninterrupted run's.
        window = {name: getattr(self.reward_variance, name) for name in self.reward_variance._defaults}
        checkpoint["rewarddance_rl"] = {
            "history": self.history,
            "generator": str(self.hparams.generator),
            "reward_window": window,
            **self.reuse_checkpoint(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # checkpoints of automatic optimization resume at their step
        record = checkpoint.get("rewarddance_rl")
        if record is not None:
            self.history = record["history"]
            self.evaluation.history = self.history["eval"]
            for name, value in record.get("reward_window", {}).items():
                setattr(self.reward_variance, name, value.to(self.reward_variance.device))
            self.restore_reuse(record)
