"""Settings of RL fine-tuning, as :class:`~rewarddance.tasks.GeneratorRLTask` takes them from a config.

``refl:`` (:class:`ReFLSettings`), ``grpo:`` (:class:`GRPOSettings`), ``nft:`` (:class:`NFTSettings`) and
``lora:`` (:class:`GeneratorLora`) are dataclasses so that LightningCLI documents and type-checks every field; the
task stores them as plain dicts in its hyperparameters and rebuilds them with :func:`as_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from rewarddance.errors import UsageError
from rewarddance.models.lora import LoraSettings

__all__ = ["DENOISER_LORA_TARGETS", "GRPOSettings", "GeneratorLora", "NFTSettings", "ReFLSettings", "as_settings"]

T = TypeVar("T")

DENOISER_LORA_TARGETS = (
    r".*\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|proj_mlp|net\.0\.proj|net\.2)"
)
"""Attention and feed-forward projections of every supported denoiser (UNet, SD3/FLUX MMDiT, Wan DiT).

Feed-forward layers are included: adapters on attention alone barely moved the tiny generators this project
trains and tests with (docs/notes.md)."""


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

    def check(self, num_inference_steps: int) -> None:
        """Refuse a step window or anchor that does not fit a schedule of ``num_inference_steps`` (ValueError)."""
        steps = num_inference_steps
        t_min, t_max = self.window(steps)
        if not 0 <= t_min <= t_max < steps:
            raise ValueError(f"ReFL needs 0 <= t_min <= t_max < num_inference_steps, got {t_min}, {t_max}, {steps}")
        if self.anchor_weight < 0:
            raise ValueError(f"refl.anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.anchor_steps is not None:
            first, last = self.anchor_steps
            if not 0 <= first <= last < steps:
                raise ValueError(
                    f"refl.anchor_steps must be [first, last] within [0, {steps - 1}], got {self.anchor_steps}"
                )


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
        train_steps: Stochastic steps trained per update, drawn at random; null: all. Each is backpropagated as
            soon as its loss is computed (one step's graph alive at a time), so more steps cost time, not memory.
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

    def check(self) -> None:
        """Refuse a group too small to compare within, or no update per rollout (ValueError)."""
        if self.group_size < 2:
            raise ValueError(f"GRPO compares samples within a group: group_size must be >= 2, got {self.group_size}")
        if self.rollout_reuse < 1:
            raise ValueError(f"rollout_reuse must be >= 1, got {self.rollout_reuse}")


@dataclass
class NFTSettings:
    """DiffusionNFT (Zheng et al. 2025): online RL on the forward process (:mod:`rewarddance.rl.nft`).

    Attributes:
        group_size: Samples per prompt; advantages are normalised within each prompt's group.
        beta: Strength of the implicit positive / negative policies (> 0; the paper's default 1, 0.1 for some
            rewards). The update's gradient is the denoising loss's scaled by ``beta * (2r - 1)``.
        adv_clip_max: The optimality probability is ``0.5 + 0.5 * clip(A / adv_clip_max, -1, 1)`` (> 0; the
            official configs: 5).
        global_std: Normalise advantages by the std of the whole batch instead of each group's (the official
            configs do).
        chunk_size: Most samples per denoiser call of the training pass; each chunk's loss is backpropagated as
            soon as it is computed (one chunk's graph alive at a time). Samples are grouped by their drawn step
            anyway (one step per call); null: no further split.
        rollout_reuse: Optimizer steps per batch of samples. 1: one update, on-policy. k > 1: k updates on the
            samples of one prompt batch (the next k - 1 prompt batches are skipped), each with its own draw of
            steps and noise, all against the prediction of the policy that drew the samples (computed before the
            first update), so the implicit policies keep their anchor while the weights move. Sampling, most of a
            step's cost, is then paid once per k updates.
    """

    group_size: int = 4
    beta: float = 1.0
    adv_clip_max: float = 5.0
    global_std: bool = False
    chunk_size: int | None = None
    rollout_reuse: int = 1

    def check(self) -> None:
        """Refuse settings the algorithm cannot run with (UsageError naming the option)."""
        where = "model.init_args.nft"
        if self.group_size < 2:
            raise UsageError(
                f"{where}.group_size: DiffusionNFT compares samples within a group: it must be >= 2, got {self.group_size}"
            )
        if not self.beta > 0:
            raise UsageError(f"{where}.beta must be > 0 (the implicit policies' strength), got {self.beta}")
        if not self.adv_clip_max > 0:
            raise UsageError(f"{where}.adv_clip_max must be > 0, got {self.adv_clip_max}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise UsageError(f"{where}.chunk_size must be >= 1 or null, got {self.chunk_size}")
        if self.rollout_reuse < 1:
            raise UsageError(
                f"{where}.rollout_reuse must be >= 1 (optimizer steps per batch), got {self.rollout_reuse}"
            )


def as_settings(value: Any, cls: type[T]) -> T | None:
    """``value`` as a ``cls`` dataclass: hyperparameters store plain dicts (checkpoints then load with
    ``torch.load(weights_only=True)``), rebuilt here; None stays None."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"Expected {cls.__name__} or a mapping, got {type(value).__name__}")
