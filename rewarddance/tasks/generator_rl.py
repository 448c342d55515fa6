"""RL fine-tuning of a diffusers generator against a frozen reward: ReFL or Flow-GRPO, as one LightningModule.

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

Guard rails: a non-finite reward, loss or gradient stops the run *before* the update, saves the still-good weights
to ``last-good.ckpt`` and raises :class:`~rewarddance.callbacks.NonFiniteError` (the shared
:class:`~rewarddance.callbacks.NonFiniteGuard` checks loss and gradients, the task its reward); gradient clipping
is the Trainer's ``gradient_clip_val``; samples whose pixels stop varying raise a :class:`SampleCollapseWarning`.

Diagnostics: the reward std in a sliding window of iterations (:class:`rewarddance.metrics.RewardVariance`, the
paper's measure); every ``eval_every`` steps (and before the first) a fixed prompt set (the DataModule's ``val``)
is sampled and judged by the shapes oracle, GenEval-style (per-tag accuracy, and their mean), next to the reward
on the same images and the sample diversity per prompt; :func:`rewarddance.rl.detect_reward_hacking` compares the
two trends and a :class:`RewardHackingWarning` fires when the reward rises while the oracle does not. At fit end
a plot of reward mean and band, reward variance and oracle score is saved to ``<log dir>/rl_curves.png`` (and
logged to wandb when a ``WandbLogger`` is attached).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

import rewarddance.judge  # noqa: F401 - registers the reward_model reward
from rewarddance.callbacks import check_finite, gradient_norms, task_callbacks
from rewarddance.data.prompts import PromptItem
from rewarddance.errors import UsageError
from rewarddance.metrics import RewardVariance
from rewarddance.models.adapters import DenoisingContext, PipelineAdapter, adapter_for
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.generators import Generator, load_generator
from rewarddance.models.lora import LoraSettings
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.diagnostics import detect_reward_hacking, sample_diversity
from rewarddance.rl.grpo import (
    Trajectory,
    group_advantages,
    grpo_loss,
    recompute_step,
    sample_trajectory,
    transition_kl,
)
from rewarddance.rl.refl import anchor_loss, refl_loss, refl_predict_x0, refl_step_latents, sample_refl_step
from rewarddance.rl.rewards import Reward, RewardSpec, build_reward
from rewarddance.shapes import evaluate, evaluate_parts, evaluate_video, evaluate_video_parts

__all__ = [
    "DENOISER_LORA_TARGETS",
    "GRPOSettings",
    "GeneratorLora",
    "GeneratorRLTask",
    "ReFLSettings",
    "RewardHackingWarning",
    "SampleCollapseWarning",
    "plot_rl_history",
]

DEFAULT_LR = 1e-5
"""AdamW learning rate when no optimizer is configured (ImageReward's ReFL used 1e-5 on SD 1.4)."""

DENOISER_LORA_TARGETS = (
    r".*\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|proj_mlp|net\.0\.proj|net\.2)"
)
"""Attention and feed-forward projections of every supported denoiser (UNet, SD3/FLUX MMDiT, Wan DiT).

Feed-forward layers are included: adapters on attention alone barely move a small generator (ENV.md)."""

ORACLE_PARTS = ("colors", "count", "shape", "position", "mean")
VP_SDE_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")
"""UNet schedulers GRPO can sample DDIM's SDE with (their latents are VP: no sigma scaling)."""
"""Per-part oracle scores logged as ``oracle/parts/<part>`` (video adds ``motion``)."""


class SampleCollapseWarning(UserWarning):
    """The generator's samples have collapsed to near-constant (black, white, flat) images."""


class RewardHackingWarning(UserWarning):
    """The reward keeps rising while the oracle score falls or stalls."""


# -------------------------------------------------------------------------------------------------- settings


@dataclass
class GeneratorLora(LoraSettings):
    """LoRA on the denoiser (diffusers' ``add_adapter``; the base weights stay frozen).

    Attributes:
        r: Rank of the update.
        alpha: Scaling numerator (the update is scaled by alpha / r).
        dropout: Dropout on the LoRA input.
        target_modules: Regex (full match on module names) of the layers that get adapters; the default covers
            attention and feed-forward projections of every supported denoiser.
        use_rslora: Scale by alpha / sqrt(r).
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = DENOISER_LORA_TARGETS


@dataclass
class ReFLSettings:
    """ReFL (ImageReward's Alg. 1, as RewardDance fine-tunes its generators).

    Attributes:
        t_min: First step index of the window the gradient step is drawn from (0 is the noisiest step); null:
            three quarters into the schedule (ImageReward: 30 of 40 steps).
        t_max: Last step index of the window; null: the last step.
        hinge: null maximises the reward (RewardDance); a number lambda minimises ReLU(lambda - reward)
            (ImageReward's loss: samples above lambda stop pulling).
        scale: Multiplies the loss (ImageReward's grad_scale, 1e-3 on its z-scored reward).
        anchor_weight: Weight of the denoising loss on the best-of-N references (0: off). ImageReward adds the
            pretraining loss on real data to ReFL because the reward alone drifts into images it misjudges;
            here the data are the starting model's own best samples, which the pairwise reward model has
            already chosen (needs a reward with references).
        anchor_steps: Step window ``[first, last]`` the anchor loss noises to; null: the whole schedule.
    """

    t_min: int | None = None
    t_max: int | None = None
    hinge: float | None = None
    scale: float = 1.0
    anchor_weight: float = 0.0
    anchor_steps: list[int] | None = None

    def window(self, num_inference_steps: int) -> tuple[int, int]:
        """``(t_min, t_max)`` with the defaults filled in for a schedule of ``num_inference_steps``."""
        t_max = num_inference_steps - 1 if self.t_max is None else self.t_max
        t_min = min(int(0.75 * num_inference_steps), t_max) if self.t_min is None else self.t_min
        return t_min, t_max


@dataclass
class GRPOSettings:
    """GRPO: Flow-GRPO (Liu et al. 2025) for flow-matching generators (sd3, flux, wan-t2v); DDIM's SDE (DDPO,
    DanceGRPO) for UNets with a DDIM/DDPM scheduler (sd15, sdxl, the bundled shapes generator).

    Attributes:
        group_size: Samples per prompt; advantages are normalised within each prompt's group.
        noise_level: SDE noise level a (Flow-GRPO: 0.7); for UNets DDIM's eta (DDPO: 1.0).
        clip_range: Clip epsilon of the importance ratio (Flow-GRPO: 1e-4, for element-averaged log-probs).
        adv_clip_max: Advantages are clipped to [-adv_clip_max, adv_clip_max]; null: not clipped.
        kl_coef: Weight beta of the KL to the starting model (0: none). With LoRA the starting model is the
            denoiser with adapters disabled; with full fine-tuning a frozen copy is kept.
        sde_steps: Step indices sampled with the SDE (the trainable ones); null: all (a UNet's last step is
            always deterministic). The others take the deterministic Euler / DDIM step (cheaper training, as Flow-GRPO-Fast / MixGRPO).
        train_steps: Stochastic steps trained per update, drawn at random; null: all. Each trained step keeps its
            graph until the backward pass: fewer steps, or gradient checkpointing, bound the memory.
        global_std: Normalise advantages by the std of the whole batch instead of each group's.
        rollout_reuse: Optimizer steps per batch of rollouts. 1 is on-policy: every ratio is exactly 1 and the
            clip never acts. k > 1 trains k updates on the rollouts of one prompt batch (each with a new draw of
            steps; the next k - 1 prompt batches are skipped), and the clip bounds how far they move the policy.
    """

    group_size: int = 4
    noise_level: float = 0.7
    clip_range: float = 1e-4
    adv_clip_max: float | None = 5.0
    kl_coef: float = 0.0
    sde_steps: list[int] | None = None
    train_steps: int | None = None
    global_std: bool = False
    rollout_reuse: int = 1


def _settings(value: Any, cls: type) -> Any:
    # Hyperparameters store plain dicts (checkpoints then load with weights_only=True); rebuild the dataclass.
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"Expected {cls.__name__} or a mapping, got {type(value).__name__}")


@dataclass
class _Rollout:
    """GRPO rollouts kept for ``rollout_reuse`` updates."""

    context: DenoisingContext
    trajectory: Trajectory
    advantages: Tensor
    uses: int = 0


# -------------------------------------------------------------------------------------------------- pure helpers


def plot_rl_history(history: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """Save the RL curves: reward mean and batch std band, windowed reward std, oracle scores; returns the path.

    Args:
        history: ``{"train": {"step", "reward_mean", "reward_std", "window_std"}, "eval": {"step", "reward",
            "geneval", "parts", "hacking"}}`` lists, as :class:`GeneratorRLTask` records them.
        path: Where to write the PNG.
    """
    # The Agg canvas directly: no pyplot, so the caller's matplotlib backend (a notebook's) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, evaluation = history.get("train", {}), history.get("eval", {})
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    ax_reward, ax_std, ax_oracle = figure.subplots(1, 3)
    steps = list(train.get("step", []))
    if steps:
        mean = torch.tensor(train["reward_mean"], dtype=torch.float64)
        band = torch.tensor(train["reward_std"], dtype=torch.float64)
        ax_reward.plot(steps, mean.tolist(), label="train reward (batch mean)")
        ax_reward.fill_between(steps, (mean - band).tolist(), (mean + band).tolist(), alpha=0.25, label="± batch std")
        ax_std.plot(steps, list(train["window_std"]), color="tab:purple")
    eval_steps = list(evaluation.get("step", []))
    if eval_steps:
        ax_reward.plot(eval_steps, list(evaluation["reward"]), "o-", color="tab:red", label="reward on eval prompts")
        ax_oracle.plot(eval_steps, list(evaluation["geneval"]), "o-", label="GenEval overall (all-or-nothing)")
        ax_oracle.plot(eval_steps, list(evaluation["parts"]), "s--", label="oracle parts mean")
        flagged = [s for s, h in zip(eval_steps, evaluation.get("hacking", [])) if h]
        for step in flagged:
            ax_oracle.axvline(step, color="tab:red", alpha=0.3)
        if flagged:
            ax_oracle.plot([], [], color="tab:red", alpha=0.3, label="reward hacking flagged")
    ax_reward.set(title="reward", xlabel="step")
    ax_std.set(title="reward std, sliding window", xlabel="step")
    ax_oracle.set(title="shapes oracle on the eval prompts", xlabel="step", ylim=(-0.02, 1.02))
    for ax in (ax_reward, ax_oracle):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across runs and processes, unlike ``hash``)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -------------------------------------------------------------------------------------------------- the task


class GeneratorRLTask(L.LightningModule):
    """Fine-tune a diffusers generator against a frozen reward with ReFL or Flow-GRPO.

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
        algorithm: ``refl`` (one gradient step at a late step, reward backpropagated) or ``grpo`` (Flow-GRPO, or
            DDIM-SDE GRPO for UNets with a DDIM/DDPM scheduler).
        refl: ReFL settings (step window, hinge, scale).
        grpo: GRPO settings (group size, SDE noise, clip range, KL, steps trained).
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
        reward_window: Iterations in the sliding window of the reward std (the paper: 1,000).
        hacking_window: Steps the reward-hacking check fits its trends over; null: 5 x ``eval_every``.
        hacking_signal: Oracle series compared with the reward: ``parts`` (mean of per-part scores, informative
            early) or ``geneval`` (all-or-nothing GenEval overall).
        collapse_std: Warn when the mean per-image pixel std of a training batch falls below this ([0, 1] pixels).
        seed: Seed of noise, ReFL steps, GRPO draws and evaluation samples (combined with the step and rank).
        optimizer: Optimizer factory; null: AdamW, lr 1e-5, no weight decay.
        lr_scheduler: Learning-rate scheduler factory, stepped every optimizer step; null: none.
        plot: Save ``rl_curves.png`` to the log dir at fit end (needs matplotlib).
        export: Save the tuned generator to ``<log dir>/export`` at fit end (a diffusers folder, LoRA fused in,
            the adapter alone in ``export/lora``), loadable by ``load_generator`` and the ``generate`` /
            ``evaluate`` commands. Single-process runs only: sharded runs export from their checkpoint.
    """

    def __init__(
        self,
        generator: str = "tiny-sd3",
        generator_kwargs: dict[str, Any] | None = None,
        reward: RewardSpec = "shapes-color",
        algorithm: Literal["refl", "grpo"] = "refl",
        refl: ReFLSettings | None = None,
        grpo: GRPOSettings | None = None,
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
        plot: bool = True,
        export: bool = True,
    ) -> None:
        super().__init__()
        if algorithm not in ("refl", "grpo"):
            raise ValueError(f"algorithm must be 'refl' or 'grpo', got {algorithm!r}")
        # Cheap on purpose: LightningCLI builds the module to print configs; networks load in configure_model().
        ignore = ["optimizer", "lr_scheduler"] + ([] if isinstance(reward, (str, Mapping)) else ["reward"])
        self.save_hyperparameters(ignore=ignore)
        for name in ("refl", "grpo", "lora"):
            value = self.hparams.get(name)
            if dataclasses.is_dataclass(value):
                # Plain data in checkpoints: they then load with torch.load(weights_only=True).
                self.hparams[name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        self.reward_spec = reward
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self._validate()

        self.generator: Generator | None = None
        self.adapter: PipelineAdapter | None = None
        self.reward: Reward | None = None
        self.reward_variance = RewardVariance(window=reward_window)
        self.history: dict[str, dict[str, list[float]]] = {
            "train": {"step": [], "reward_mean": [], "reward_std": [], "window_std": []},
            "eval": {"step": [], "reward": [], "geneval": [], "parts": [], "diversity": [], "hacking": []},
        }
        self.last_eval: dict[str, float] = {}
        """Metrics of the latest oracle evaluation (``oracle/geneval``, ``oracle/<tag>``, ``hacking/flag``...)."""
        self.first_ratio: Tensor | None = None
        """GRPO: the importance ratios of the latest fresh rollout's first recompute (exactly 1 when consistent)."""
        self.plot_path: Path | None = None
        self._starting_denoiser: torch.nn.Module | None = None
        self._rollout: _Rollout | None = None
        self._eval_items: list[PromptItem] | None = None
        self._candidate_latents: dict[str, Tensor] = {}  # per prompt: clean latents of the reference candidates
        self._collapsed = False
        self._hacking = False
        self._last_eval_step = -1

    # -- settings ----------------------------------------------------------------------------------------------

    @property
    def refl_settings(self) -> ReFLSettings:
        """ReFL settings (defaults when none were given)."""
        return _settings(self.hparams.refl, ReFLSettings) or ReFLSettings()

    @property
    def grpo_settings(self) -> GRPOSettings:
        """GRPO settings (defaults when none were given)."""
        return _settings(self.hparams.grpo, GRPOSettings) or GRPOSettings()

    @property
    def lora_settings(self) -> GeneratorLora | None:
        """LoRA settings, or None for full fine-tuning."""
        return _settings(self.hparams.lora, GeneratorLora)

    def _validate(self) -> None:
        steps = self.hparams.num_inference_steps
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if self.hparams.algorithm == "refl":
            t_min, t_max = self.refl_settings.window(steps)
            if not 0 <= t_min <= t_max < steps:
                raise ValueError(f"ReFL needs 0 <= t_min <= t_max < num_inference_steps, got {t_min}, {t_max}, {steps}")
            refl = self.refl_settings
            if refl.anchor_weight < 0:
                raise ValueError(f"refl.anchor_weight must be >= 0, got {refl.anchor_weight}")
            if refl.anchor_steps is not None:
                first, last = refl.anchor_steps
                if not 0 <= first <= last < steps:
                    raise ValueError(
                        f"refl.anchor_steps must be [first, last] within [0, {steps - 1}], got {refl.anchor_steps}"
                    )
        else:
            grpo = self.grpo_settings
            if grpo.group_size < 2:
                raise ValueError(
                    f"GRPO compares samples within a group: group_size must be >= 2, got {grpo.group_size}"
                )
            if grpo.rollout_reuse < 1:
                raise ValueError(f"rollout_reuse must be >= 1, got {grpo.rollout_reuse}")
        if self.hparams.eval_samples_per_prompt < 1 or self.hparams.eval_batch_size < 1:
            raise ValueError("eval_samples_per_prompt and eval_batch_size must be >= 1")

    # -- model -------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load the generator (LoRA or full fine-tuning, checkpointing) and set up the reward; idempotent."""
        if self.generator is not None:
            return
        generator = load_generator(self.hparams.generator, **(self.hparams.generator_kwargs or {}))
        scheduler = type(generator.scheduler).__name__
        if self.hparams.algorithm == "grpo" and generator.kind == "unet" and scheduler not in VP_SDE_SCHEDULERS:
            raise UsageError(
                f"model.init_args.algorithm: grpo on a UNet ({generator.family}) samples DDIM's SDE and needs a DDIM or DDPM "
                f"scheduler, not {scheduler}: pass generator_kwargs.pipeline_kwargs.scheduler, or use algorithm: refl."
            )
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

        reward = build_reward(self.reward_spec)
        reward.setup(sampler=self.sample_starting_model)
        self.reward = reward
        if self.hparams.algorithm == "refl" and not reward.differentiable:
            raise UsageError(
                f"model.init_args.algorithm: refl backpropagates the reward into the generator, and {reward!r} is not "
                "differentiable (model.init_args.reward): use algorithm: grpo."
            )
        if self.hparams.algorithm == "refl" and self.refl_settings.anchor_weight > 0 and not reward.needs_references:
            raise UsageError(
                f"model.init_args.refl.anchor_weight trains on the best-of-N references, and {reward!r} chooses none: use a pairwise "
                "reward model, or set anchor_weight: 0."
            )
        grpo_kl = self.hparams.algorithm == "grpo" and self.grpo_settings.kl_coef > 0
        if lora is None and (reward.needs_references or grpo_kl):
            # Full fine-tuning changes the weights themselves: keep the starting model for references / the KL.
            # A plain attribute, not a submodule: it must not be trained, checkpointed or counted.
            starting = copy.deepcopy(denoiser).requires_grad_(False).eval()
            object.__setattr__(self, "_starting_denoiser", starting)

    def _components(self) -> Generator:
        if self.generator is None or self.adapter is None or self.reward is None:
            self.configure_model()
        assert self.generator is not None
        return self.generator

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Every frozen network: VAE, text encoders, the starting-model copy, the reward's networks."""
        generator = self._components()
        modules = [generator.vae, *generator.text_encoders]
        if generator.image_encoder is not None:
            modules.append(generator.image_encoder)
        if self._starting_denoiser is not None:
            modules.append(self._starting_denoiser)
        assert self.reward is not None
        return modules + self.reward.frozen_modules()

    def on_fit_start(self) -> None:
        # Lightning moved the denoiser (the only submodule); the frozen parts follow by hand.
        generator = self._components()
        cast = {"dtype": resolve_dtype(self.hparams.frozen_dtype)} if self.hparams.frozen_dtype else {}
        for module in (generator.vae, *generator.text_encoders, generator.image_encoder, self._starting_denoiser):
            if module is not None:
                module.to(device=self.device, **cast)
        assert self.reward is not None
        self.reward.to(self.device)

    @contextlib.contextmanager
    def starting_policy(self) -> Iterator[None]:
        """Run the generator as the *starting* model inside this block (LoRA disabled, or the frozen copy)."""
        generator = self._components()
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

    # -- sampling ----------------------------------------------------------------------------------------------

    def sampling_kwargs(self) -> dict[str, Any]:
        """The arguments of ``PipelineAdapter.prepare`` (geometry, schedule, guidance)."""
        h = self.hparams
        return {
            "height": h.height,
            "width": h.width,
            "num_inference_steps": h.num_inference_steps,
            "guidance_scale": h.guidance_scale,
            "num_frames": h.num_frames,
            "negative_prompt": h.negative_prompt,
        }

    def _rng(self, *tags: Any) -> torch.Generator:
        # From the seed, the step and the rank: reproducible, resumable, different on every rank.
        rank = self.global_rank if self._trainer is not None else 0
        return torch.Generator().manual_seed(_seed(self.hparams.seed, self.global_step, rank, *tags))

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
        self._components()
        assert self.adapter is not None
        context = self.adapter.prepare(list(prompts), **self.sampling_kwargs()).repeat_interleave(samples_per_prompt)
        latents = self.adapter.initial_latents(context, seed)
        return self.adapter.denoise(latents, context, 0, context.num_steps, seed + 1), context

    def sample_starting_model(self, prompt: str, n: int, seed: int) -> Tensor:
        """``n`` samples of the starting model for one prompt: the candidates of best-of-N references."""
        with torch.no_grad(), self.starting_policy(), self._precision():
            latents, context = self._sample_latents([prompt], n, seed)
            if self.hparams.algorithm == "refl" and self.refl_settings.anchor_weight > 0:
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

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        # Hooks outside training_step run without the precision plugin's autocast; mixed-dtype parts need it.
        if self._trainer is None:
            return contextlib.nullcontext()
        return self.trainer.precision_plugin.forward_context()

    # -- training ----------------------------------------------------------------------------------------------

    def training_step(self, batch: list[PromptItem], batch_idx: int) -> Tensor:
        prompts = [item["prompt"] for item in batch]
        metadata = [item.get("metadata") or {} for item in batch]
        if self.hparams.algorithm == "refl":
            return self.refl_step(prompts, metadata)
        return self.grpo_step(prompts, metadata)

    def refl_step(self, prompts: list[str], metadata: list[dict[str, Any]]) -> Tensor:
        """One ReFL update's loss: no-grad sampling to a random late step, one step with gradient, reward."""
        self._components()
        assert self.adapter is not None and self.reward is not None
        settings = self.refl_settings
        steps = self.hparams.num_inference_steps
        rng = self._rng("refl")
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

    def grpo_step(self, prompts: list[str], metadata: list[dict[str, Any]]) -> Tensor:
        """One GRPO update's loss on fresh (or reused) rollouts of the batch's prompts."""
        self._components()
        assert self.adapter is not None
        settings = self.grpo_settings
        fresh = self._rollout is None or self._rollout.uses >= settings.rollout_reuse
        if fresh:
            self._rollout = self._sample_rollouts(prompts, metadata)
        rollout = self._rollout
        assert rollout is not None
        rollout.uses += 1
        trajectory, context = rollout.trajectory, rollout.context
        stochastic = torch.nonzero(trajectory.stochastic).flatten()
        if settings.train_steps is not None and settings.train_steps < len(stochastic):
            pick = torch.randperm(len(stochastic), generator=self._rng("grpo-steps"))[: settings.train_steps]
            stochastic = stochastic[pick.sort().values]
        losses, policy, kls, clipped, drift, ratios = [], [], [], [], [], []
        for i, step in enumerate(stochastic.tolist()):
            kl = None
            if settings.kl_coef > 0:
                # Before the gradient pass: disabling LoRA toggles requires_grad on the adapter weights.
                with torch.no_grad(), self.starting_policy():
                    reference_mean = recompute_step(self.adapter, context, trajectory, step).mean
            current = recompute_step(self.adapter, context, trajectory, step)
            if settings.kl_coef > 0:
                kl = transition_kl(current.mean, reference_mean, current.std, trajectory.reduce)
            result = grpo_loss(
                current.log_prob,
                trajectory.log_probs[:, step],
                rollout.advantages,
                clip_range=settings.clip_range,
                adv_clip_max=settings.adv_clip_max,
                kl=kl,
                kl_coef=settings.kl_coef,
            )
            if i == 0 and fresh:
                self._check_first_ratio(result.ratio, settings.clip_range)
            losses.append(result.loss)
            policy.append(result.policy_loss.detach())
            kls.append(result.kl.detach())
            clipped.append(result.clip_fraction)
            drift.append(result.approx_kl)
            ratios.append(result.ratio)
        loss = torch.stack(losses).mean()
        n = len(prompts)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        self.log("train/policy_loss", torch.stack(policy).mean(), batch_size=n)
        self.log("train/kl", torch.stack(kls).mean(), batch_size=n)
        self.log("train/clip_fraction", torch.stack(clipped).mean(), batch_size=n)
        self.log("train/approx_kl", torch.stack(drift).mean(), batch_size=n)
        self.log("train/ratio_deviation", (torch.cat(ratios) - 1).abs().max(), batch_size=n)
        return loss

    def _sample_rollouts(self, prompts: list[str], metadata: list[dict[str, Any]]) -> _Rollout:
        assert self.adapter is not None and self.reward is not None
        settings = self.grpo_settings
        group = settings.group_size
        rng = self._rng("grpo")
        with torch.no_grad():
            self.reward.prepare(prompts, metadata)
            context = self.adapter.prepare(prompts, **self.sampling_kwargs()).repeat_interleave(group)
            latents = self.adapter.initial_latents(context, rng)
            trajectory = sample_trajectory(
                self.adapter,
                context,
                latents,
                noise_level=settings.noise_level,
                sde_steps=settings.sde_steps,
                generator=rng,
            )
            images = self.adapter.decode(trajectory.final, context)
            rewards = self.reward(
                images, [p for p in prompts for _ in range(group)], [m for m in metadata for _ in range(group)]
            )
        check_finite(self, "reward", rewards)
        self._record_rewards(rewards, images, len(prompts))
        diversity = sample_diversity(images.view(len(prompts), group, *images.shape[1:]))
        self.log("train/diversity", diversity.nanmean(), batch_size=len(prompts))
        advantages = group_advantages(rewards, group, global_std=settings.global_std)
        return _Rollout(context, trajectory, advantages)

    def _check_first_ratio(self, ratio: Tensor, clip_range: float) -> None:
        self.first_ratio = ratio.detach().clone()
        error = float((ratio.detach() - 1).abs().max())
        self.log("train/first_ratio_error", error, batch_size=ratio.numel())
        if error > clip_range:
            rank_zero_warn(
                f"GRPO: the first recompute of fresh rollouts gives ratios up to {error:.2e} away from 1 (> clip_range "
                f"{clip_range}): sampling and training log-probs disagree (non-deterministic kernels, mixed precision, "
                "dropout, or a different batch layout), so the clip acts on on-policy samples."
            )

    # -- guard rails and logging -------------------------------------------------------------------------------

    def configure_callbacks(self) -> list[L.Callback]:
        return task_callbacks(self)  # the loss and gradient checks (the reward is checked in the step)

    def _log_dir(self) -> Path:
        # Collective under DDP (Trainer.log_dir broadcasts rank 0's): call it on every rank.
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def on_non_finite(self) -> None:
        """Called by the guard before it stops the run: the curves so far, next to the last good weights."""
        self.save_plot()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = gradient_norms(self)
        if norms:
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(list(norms.values()))))

    def _record_rewards(self, rewards: Tensor, images: Tensor, batch_size: int) -> None:
        r = rewards.detach().float()
        self.reward_variance.update(r)
        window_std = float(self.reward_variance.compute())
        std = float(r.std()) if r.numel() > 1 else 0.0
        self.log("train/reward", r.mean(), prog_bar=True, batch_size=batch_size)
        self.log("train/reward_std", std, batch_size=batch_size)
        self.log("train/reward_window_std", window_std, batch_size=batch_size)
        assert self.reward is not None
        for key, value in self.reward.log_values().items():
            self.log(f"reward/{key}", value, batch_size=batch_size)
        pixel_std = self.check_collapse(images)
        self.log("train/pixel_std", pixel_std, batch_size=batch_size)
        train = self.history["train"]
        train["step"].append(float(self.global_step))
        train["reward_mean"].append(float(r.mean()))
        train["reward_std"].append(std)
        train["window_std"].append(window_std)

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

    # -- oracle evaluation -------------------------------------------------------------------------------------

    def eval_prompts(self) -> list[PromptItem]:
        """The fixed evaluation prompts: the DataModule's ``val_prompts()``, those with GenEval metadata."""
        if self._eval_items is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            items = datamodule.val_prompts() if hasattr(datamodule, "val_prompts") else []
            self._eval_items = [i for i in items if (i.get("metadata") or {}).get("include")]
            if not items:
                rank_zero_warn(
                    "eval_every is set but the DataModule gives no evaluation prompts (PromptDataModule val, e.g. "
                    "shapes:test-id): no oracle evaluation, no reward-hacking check."
                )
            elif not self._eval_items:
                rank_zero_warn("No evaluation prompt has GenEval metadata (tag, include): the oracle cannot judge them")
        return self._eval_items

    def _oracle(self, sample: Tensor, metadata: dict[str, Any]) -> tuple[bool, dict[str, float]]:
        if sample.ndim == 4:  # a video: [T, 3, H, W]
            frames = to_pil_images(sample)
            return evaluate_video(frames, metadata)[0], evaluate_video_parts(frames, metadata)
        (image,) = to_pil_images(sample[None])
        return evaluate(image, metadata)[0], evaluate_parts(image, metadata)

    @torch.no_grad()
    def evaluate_oracle(self) -> dict[str, float]:
        """Sample the fixed prompts, judge them with the oracle and the reward; returns (and logs) the metrics.

        Metrics: ``oracle/geneval`` (mean over tags of per-tag accuracy), ``oracle/<tag>``,
        ``oracle/parts/<part>``, ``oracle/reward`` (the reward of the same samples), ``oracle/diversity`` (mean
        pairwise RMS pixel distance between a prompt's samples), and the hacking check ``hacking/flag``,
        ``hacking/reward_gain``, ``hacking/oracle_gain``. Under DDP each rank samples a slice of the prompts.
        """
        items = self.eval_prompts()
        if not items:
            return {}
        assert self.reward is not None
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        tags = sorted({str(i["metadata"].get("tag", "other")) for i in items})
        parts = list(ORACLE_PARTS) + (["motion"] if self._components().kind == "video" else [])
        n = self.hparams.eval_samples_per_prompt
        # Sums over this rank's samples, in one vector so that one all-reduce gathers them:
        # [correct per tag | count per tag | part sums | reward sum | sample count | diversity sum | prompt count]
        totals = torch.zeros(2 * len(tags) + len(parts) + 4, dtype=torch.float64)
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            mine = items[rank::world]
            for chunk_index, chunk in enumerate(_chunks(mine, self.hparams.eval_batch_size)):
                prompts = [i["prompt"] for i in chunk]
                metadata = [i["metadata"] for i in chunk]
                with self._precision():
                    self.reward.prepare(prompts, metadata)
                    # The same seeds at every evaluation: curves compare the model, not the noise.
                    images = self.generate(
                        prompts, samples_per_prompt=n, seed=_seed(self.hparams.seed, rank, chunk_index)
                    )
                    rewards = self.reward(
                        images, [p for p in prompts for _ in range(n)], [m for m in metadata for _ in range(n)]
                    )
                for j, sample in enumerate(images.float().cpu()):
                    meta = metadata[j // n]
                    correct, scores = self._oracle(sample, meta)
                    t = tags.index(str(meta.get("tag", "other")))
                    totals[t] += float(correct)
                    totals[len(tags) + t] += 1
                    for p, part in enumerate(parts):
                        totals[2 * len(tags) + p] += float(scores.get(part, math.nan))
                base = 2 * len(tags) + len(parts)
                totals[base] += float(rewards.float().sum())
                totals[base + 1] += rewards.numel()
                if n > 1:
                    diversity = sample_diversity(images.view(len(chunk), n, *images.shape[1:]).float())
                    totals[base + 2] += float(diversity.sum())
                    totals[base + 3] += len(chunk)
        finally:
            self.denoiser.train(was_training)
        if world > 1:
            totals = self.trainer.strategy.reduce(totals.to(self.device), reduce_op="sum").cpu()
        return self._finish_eval(tags, parts, totals)

    def _finish_eval(self, tags: list[str], parts: list[str], totals: Tensor) -> dict[str, float]:
        k, base = len(tags), 2 * len(tags) + len(parts)
        count = totals[k : 2 * k]
        per_tag = {tag: float(totals[i] / count[i]) for i, tag in enumerate(tags) if count[i] > 0}
        samples = float(count.sum())
        metrics = {"oracle/geneval": sum(per_tag.values()) / len(per_tag) if per_tag else math.nan}
        metrics.update({f"oracle/{tag}": acc for tag, acc in per_tag.items()})
        metrics.update({f"oracle/parts/{part}": float(totals[2 * k + p]) / samples for p, part in enumerate(parts)})
        metrics["oracle/reward"] = float(totals[base] / totals[base + 1])
        metrics["oracle/diversity"] = float(totals[base + 2] / totals[base + 3]) if totals[base + 3] > 0 else math.nan

        metrics = self.check_hacking(metrics)
        self.last_eval = metrics
        self._last_eval_step = self.global_step
        self._log_metrics(metrics)
        return metrics

    def check_hacking(self, metrics: Mapping[str, float], step: int | None = None) -> dict[str, float]:
        """Record an evaluation (``oracle/reward``, ``oracle/geneval``, ``oracle/parts/mean``...) in the history and
        run the reward-hacking check on the series so far (:func:`rewarddance.rl.detect_reward_hacking`).

        Warns (:class:`RewardHackingWarning`) when the check turns positive.

        Args:
            metrics: The evaluation's metrics.
            step: Its step (default: the current global step).

        Returns:
            ``metrics`` plus ``hacking/flag``, ``hacking/reward_gain`` and ``hacking/oracle_gain``.
        """
        step = self.global_step if step is None else step
        record = self.history["eval"]
        record["step"].append(float(step))
        record["reward"].append(float(metrics["oracle/reward"]))
        record["geneval"].append(float(metrics["oracle/geneval"]))
        record["parts"].append(float(metrics["oracle/parts/mean"]))
        record["diversity"].append(float(metrics.get("oracle/diversity", math.nan)))
        signal = record["parts"] if self.hparams.hacking_signal == "parts" else record["geneval"]
        window = self.hparams.hacking_window or 5 * max(int(self.hparams.eval_every or 1), 1)
        check = detect_reward_hacking(record["step"], record["reward"], record["step"], signal, window=window)
        record["hacking"].append(float(check.hacking))
        if check.hacking and not self._hacking:
            rank_zero_warn(
                f"Reward hacking suspected at step {step}: over the last {window} steps the reward rose by "
                f"{check.reward_gain:+.3f} while the oracle ({self.hparams.hacking_signal}) changed by "
                f"{check.oracle_gain:+.3f}. Inspect samples; consider stopping, a KL term or a better reward model.",
                category=RewardHackingWarning,
            )
        self._hacking = check.hacking
        return {
            **metrics,
            "hacking/flag": float(check.hacking),
            "hacking/reward_gain": check.reward_gain,
            "hacking/oracle_gain": check.oracle_gain,
        }

    @rank_zero_only
    def _log_metrics(self, metrics: Mapping[str, float]) -> None:
        # Straight to the loggers: self.log is not allowed in on_train_start / on_train_end.
        for logger in self.loggers:
            logger.log_metrics(dict(metrics), step=self.global_step)

    def _maybe_evaluate(self, force: bool = False) -> None:
        every = self.hparams.eval_every
        if not every or self._last_eval_step == self.global_step:
            return
        if force or self.global_step % every == 0:
            self.evaluate_oracle()

    def on_train_start(self) -> None:
        self._maybe_evaluate(force=True)  # the baseline: the starting model

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._maybe_evaluate()

    def on_train_end(self) -> None:
        self._maybe_evaluate(force=True)  # the final model, when the last step was not an evaluation step

    # -- plot and checkpoints ----------------------------------------------------------------------------------

    def save_plot(self, path: str | Path | None = None) -> Path | None:
        """Write the RL curves (:func:`plot_rl_history`) to ``path`` (default ``<log dir>/rl_curves.png``) and log
        them to wandb when a ``WandbLogger`` is attached. Call it on every rank (rank 0 writes); returns the path
        (None on other ranks)."""
        if path is None:
            if self._trainer is None:
                raise ValueError("save_plot needs a path when the task is not attached to a Trainer")
            path = self._log_dir() / "rl_curves.png"  # on every rank: the log dir is broadcast
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        try:
            self.plot_path = plot_rl_history(self.history, path)
        except ImportError:
            rank_zero_warn("matplotlib is not installed: no RL plot (pip install matplotlib)")
            return None
        if self._trainer is not None:
            from lightning.pytorch.loggers import WandbLogger

            for logger in self.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key="rl/curves", images=[str(self.plot_path)], step=self.global_step)
        return self.plot_path

    def on_fit_end(self) -> None:
        if self.hparams.plot:
            path = self.save_plot()
            if path is not None:
                print(f"[rewarddance] RL curves: {path}")
        if self.hparams.export:
            if self.trainer.world_size > 1:
                rank_zero_warn("export: skipped in a multi-process run; export from the saved checkpoint instead")
            else:
                folder = self.export(self._log_dir() / "export")
                print(f"[rewarddance] tuned generator: {folder}")
        evals = self.history["eval"]
        if len(evals["step"]) >= 2:
            print(
                f"[rewarddance] oracle (fixed val prompts) step {evals['step'][0]:.0f} -> {evals['step'][-1]:.0f}: "
                f"geneval {evals['geneval'][0]:.3f} -> {evals['geneval'][-1]:.3f}, parts {evals['parts'][0]:.3f} -> "
                f"{evals['parts'][-1]:.3f}; reward {evals['reward'][0]:.3f} -> {evals['reward'][-1]:.3f}"
            )

    def export(self, folder: str | Path) -> Path:
        """Save the tuned generator as a diffusers folder that ``load_generator`` reads back.

        With LoRA, the adapter is fused into a copy of the denoiser (the folder is a plain pipeline) and also
        saved alone under ``folder/lora`` (``denoiser.load_lora_adapter`` applies it to the starting model).
        """
        generator = self._components()
        folder = Path(folder)
        denoiser: torch.nn.Module = self.denoiser
        if self.lora_settings is not None:
            denoiser.save_lora_adapter(folder / "lora")
            denoiser = copy.deepcopy(denoiser)
            denoiser.fuse_lora()
            denoiser.unload_lora()
        pipeline = generator.pipeline
        attr = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
        type(pipeline)(**{**pipeline.components, attr: denoiser}).save_pretrained(folder)
        return folder

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The reward-std window too (torchmetrics keeps metric states out of state_dict): a resumed run's
        # window_std then continues the uninterrupted run's.
        window = {name: getattr(self.reward_variance, name) for name in self.reward_variance._defaults}
        checkpoint["rewarddance_rl"] = {
            "history": self.history,
            "generator": str(self.hparams.generator),
            "reward_window": window,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get("rewarddance_rl")
        if record is not None:
            self.history = record["history"]
            for name, value in record.get("reward_window", {}).items():
                setattr(self.reward_variance, name, value.to(self.reward_variance.device))
