"""The RL task's updates on groups of fresh samples per prompt: GRPO and DiffusionNFT (a base of
:class:`~rewarddance.tasks.generator_rl.GeneratorRLTask`; the math is in :mod:`rewarddance.rl.grpo` and
:mod:`rewarddance.rl.nft`).

Both sample ``group_size`` images per prompt without gradient, score them with the task's reward
(:meth:`GroupUpdates.score_groups`: the reward, its guard rail, its logs and the diversity per prompt) and
normalise the rewards within each prompt's group. They differ in what they train on: GRPO on the SDE
trajectory's per-step log-probs, DiffusionNFT on the clean latents alone (noised again by the forward process).
Both backpropagate part by part (a trained step, a chunk of samples) as soon as the part's loss is computed, so one
part's activations are alive at a time (:meth:`~rewarddance.tasks.generator_sampling.GeneratorSampling.backward_part`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rewarddance.callbacks import check_finite
from rewarddance.models.adapters import DenoisingContext
from rewarddance.rl.diagnostics import sample_diversity
from rewarddance.rl.grpo import (
    GRPOLoss,
    Trajectory,
    group_advantages,
    grpo_log_values,
    grpo_loss,
    recompute_step,
    sample_trajectory,
    transition_kl,
)
from rewarddance.rl.nft import nft_chunks, nft_loss, optimality_probability
from rewarddance.rl.settings import GRPOSettings, NFTSettings, as_settings
from rewarddance.tasks.generator_sampling import GeneratorSampling

__all__ = ["GroupUpdates"]


@dataclass
class _Rollout:
    """GRPO rollouts kept for ``rollout_reuse`` updates."""

    context: DenoisingContext
    trajectory: Trajectory
    advantages: Tensor
    uses: int = 0


@dataclass
class _NFTSamples:
    """DiffusionNFT samples kept for ``rollout_reuse`` updates: the clean latents and their optimality
    probabilities; per update, the drawn step and noisy latents of each sample; per reused update, the sampling
    policy's prediction from them."""

    prompts: list[str]
    context: DenoisingContext | None
    """The training conditioning (None after a restore, until rebuilt from ``prompts``)."""
    x0: Tensor
    r: Tensor
    steps: list[Tensor] = field(default_factory=list)
    noisy: list[Tensor] = field(default_factory=list)
    x0_old: list[Tensor] = field(default_factory=list)
    uses: int = 0


class GroupUpdates(GeneratorSampling):
    """GRPO's and DiffusionNFT's updates; the subclass declares the ``grpo`` / ``nft`` hyperparameters, sets
    ``first_ratio`` and ``_rollout`` to None, and records rewards (:meth:`_record_rewards`)."""

    first_ratio: Tensor | None
    _rollout: _Rollout | _NFTSamples | None

    @property
    def grpo_settings(self) -> GRPOSettings:
        """GRPO settings (defaults when none were given)."""
        return as_settings(self.hparams.grpo, GRPOSettings) or GRPOSettings()

    @property
    def nft_settings(self) -> NFTSettings:
        """DiffusionNFT settings (defaults when none were given)."""
        return as_settings(self.hparams.nft, NFTSettings) or NFTSettings()

    def _record_rewards(self, rewards: Tensor, images: Tensor, batch_size: int) -> None:
        raise NotImplementedError  # the task's: the reward logs, the reward window and the history

    def score_groups(self, images: Tensor, prompts: list[str], metadata: list[dict[str, Any]], group: int) -> Tensor:
        """The rewards of ``group`` samples per prompt (each prompt's in a row), checked finite, recorded and logged
        with the samples' diversity per prompt; call ``self.reward.prepare(prompts, metadata)`` first."""
        assert self.reward is not None
        with torch.no_grad():
            rewards = self.reward(
                images, [p for p in prompts for _ in range(group)], [m for m in metadata for _ in range(group)]
            )
        check_finite(self, "reward", rewards)
        self._record_rewards(rewards, images, len(prompts))
        diversity = sample_diversity(images.view(len(prompts), group, *images.shape[1:]))
        self.log("train/diversity", diversity.nanmean(), batch_size=len(prompts))
        return rewards

    # -- GRPO --------------------------------------------------------------------------------------------------

    def grpo_step(self, prompts: list[str], metadata: list[dict[str, Any]]) -> Tensor:
        """One GRPO update on fresh (or reused) rollouts of the batch's prompts: backpropagates each trained step's
        loss / steps right away (one step's graph alive at a time; the gradient of the mean) and returns the mean."""
        self.components()
        settings = self.grpo_settings
        fresh = self._rollout is None or self._rollout.uses >= settings.rollout_reuse
        if fresh:
            self._rollout = self._sample_rollouts(prompts, metadata)
        rollout = self._rollout
        assert isinstance(rollout, _Rollout)
        rollout.uses += 1
        results = []
        steps = self.trained_steps(rollout)
        for i, step in enumerate(steps):
            result = self.step_loss(rollout, step)
            if i == 0 and fresh:
                self._check_first_ratio(result.ratio, settings.clip_range)
            self.backward_part(result.loss / len(steps), last=i == len(steps) - 1)  # frees this step's graph
            results.append(result.detached())
        loss = torch.stack([r.loss for r in results]).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prompts))
        self.log_dict(grpo_log_values(results), batch_size=len(prompts))
        return loss

    def trained_steps(self, rollout: _Rollout) -> list[int]:
        """The denoising steps an update trains: the rollout's stochastic ones, ``grpo.train_steps`` of them drawn."""
        stochastic = torch.nonzero(rollout.trajectory.stochastic).flatten()
        limit = self.grpo_settings.train_steps
        if limit is not None and limit < len(stochastic):
            pick = torch.randperm(len(stochastic), generator=self.step_rng("grpo-steps"))[:limit]
            stochastic = stochastic[pick.sort().values]
        return stochastic.tolist()

    def step_loss(self, rollout: _Rollout, step: int) -> GRPOLoss:
        """GRPO's loss at one denoising step of the rollout (with the graph of that step's recompute)."""
        assert self.adapter is not None
        settings, trajectory, context = self.grpo_settings, rollout.trajectory, rollout.context
        kl = None
        if settings.kl_coef > 0:
            # Before the gradient pass: disabling LoRA toggles requires_grad on the adapter weights.
            with torch.no_grad(), self.starting_policy():
                reference_mean = recompute_step(self.adapter, context, trajectory, step).mean
        current = recompute_step(self.adapter, context, trajectory, step)
        if settings.kl_coef > 0:
            kl = transition_kl(current.mean, reference_mean, current.std, trajectory.reduce)
        return grpo_loss(
            current.log_prob, trajectory.log_probs[:, step], rollout.advantages, clip_range=settings.clip_range,
            adv_clip_max=settings.adv_clip_max, kl=kl, kl_coef=settings.kl_coef,
        )  # fmt: skip

    def _sample_rollouts(self, prompts: list[str], metadata: list[dict[str, Any]]) -> _Rollout:
        assert self.adapter is not None and self.reward is not None
        settings = self.grpo_settings
        group = settings.group_size
        rng = self.step_rng("grpo")
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
        rewards = self.score_groups(images, prompts, metadata, group)
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

    # -- DiffusionNFT ------------------------------------------------------------------------------------------

    def nft_step(self, prompts: list[str], metadata: list[dict[str, Any]]) -> Tensor:
        """One DiffusionNFT update (:mod:`rewarddance.rl.nft`) on fresh samples, or on those of an earlier prompt
        batch while ``nft.rollout_reuse`` allows; backpropagates each chunk's share of the loss right away and
        returns the loss (the denoising MSE of the samples, whatever their rewards: the rewards only steer the
        gradient).

        Samples come from the ordinary sampler with the configured guidance (evaluation samples: no SDE, nothing of
        the trajectory kept); the loss trains the conditional model without guidance (``guidance_scale`` 1, as the
        paper's CFG-free training). The tuned model is therefore still sampled with guidance afterwards, and the
        guided prediction then mixes the tuned conditional branch with an unconditional one that moved only through
        the weights both share: the improvement may shrink or grow with the guidance weight; evaluate at the
        guidance used for sampling.

        :math:`x_0^{old}` is the prediction of the policy that drew the samples: for the first update the current
        one, detached (the weights have not moved yet: a separate no-grad pass would compute the same numbers); for
        the reused ones, computed before the first update (:meth:`_sample_nft`). The paper samples with an EMA of
        the policy instead; not done here.
        """
        self.components()
        assert self.adapter is not None
        settings, adapter = self.nft_settings, self.adapter
        if self._rollout is None or self._rollout.uses >= settings.rollout_reuse:
            self._rollout = self._sample_nft(prompts, metadata)
        batch = self._rollout
        assert isinstance(batch, _NFTSamples)
        if batch.context is None:  # restored from a checkpoint (on the CPU): the conditioning is rebuilt
            batch.context = self._nft_context(batch.prompts)
            batch.x0, batch.r = batch.x0.to(self.device), batch.r.to(self.device)
            batch.noisy = [t.to(self.device) for t in batch.noisy]
            batch.x0_old = [t.to(self.device) for t in batch.x0_old]
        use, x0, r = batch.uses, batch.x0, batch.r
        batch.uses += 1
        loss = x0.new_zeros((), dtype=torch.float32)
        drift = x0.new_zeros((), dtype=torch.float32)
        chunks = nft_chunks(batch.steps[use], settings.chunk_size)
        for i, (step, index) in enumerate(chunks):
            part, target, noisy = batch.context.select(index), x0[index], batch.noisy[use][index]
            x0_theta = adapter.predict_x0(adapter.model_output(noisy, step, part), noisy, step, part)
            x0_old = x0_theta.detach() if use == 0 else batch.x0_old[use - 1][index]
            per_sample = nft_loss(x0_theta, x0_old, target, r[index], beta=settings.beta, reduction="none")
            share = per_sample.sum() / len(x0)  # the chunks' shares add up to the mean over all samples
            self.backward_part(share, last=i == len(chunks) - 1)  # frees this chunk's graph
            loss += share.detach()
            drift += (x0_theta.detach().float() - x0_old.float()).square().mean(tuple(range(1, x0.ndim))).sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prompts))
        # The mean r stays 0.5 unless the clip acts (advantages sum to 0 in a group); the spread is how hard the
        # update pulls (its gradient scales with beta * (2r - 1)).
        self.log("train/nft_r", r.mean(), batch_size=len(prompts))
        self.log("train/nft_r_spread", (r - 0.5).abs().mean(), batch_size=len(prompts))
        if settings.rollout_reuse > 1:
            # How far the weights have moved from the sampling policy, in its own prediction (0 on fresh samples).
            self.log("train/nft_drift", drift / len(x0), batch_size=len(prompts))
        return loss

    def _nft_context(self, prompts: list[str]) -> DenoisingContext:
        """The training pass's conditioning: each prompt ``group_size`` times, without guidance (CFG-free)."""
        assert self.adapter is not None
        kwargs = {**self.sampling_kwargs(), "guidance_scale": 1.0}
        return self.adapter.prepare(prompts, **kwargs).repeat_interleave(self.nft_settings.group_size)

    def _sample_nft(self, prompts: list[str], metadata: list[dict[str, Any]]) -> _NFTSamples:
        """Fresh samples, their optimality probabilities, and every update's draw of steps and noise, with the
        sampling policy's predictions for the reused updates."""
        assert self.adapter is not None and self.reward is not None
        settings, adapter = self.nft_settings, self.adapter
        group = settings.group_size
        rng = self.step_rng("nft")
        with torch.no_grad():
            self.reward.prepare(prompts, metadata)
            context = adapter.prepare(prompts, **self.sampling_kwargs()).repeat_interleave(group)
            x0 = adapter.denoise(adapter.initial_latents(context, rng), context, 0, context.num_steps, rng)
            images = adapter.decode(x0, context)
        rewards = self.score_groups(images, prompts, metadata, group)
        r = optimality_probability(rewards, group, adv_clip_max=settings.adv_clip_max, global_std=settings.global_std)
        train = self._nft_context(prompts)
        samples = _NFTSamples(list(prompts), train, x0, r)
        # One step per sample and update, drawn alike on every rank so that every rank makes as many chunks (FSDP
        # reduces each).
        draw = torch.Generator().manual_seed(self.seed_for(self.global_step, "nft-steps"))
        for use in range(settings.rollout_reuse):
            steps = torch.randint(0, train.num_steps, (len(x0),), generator=draw)
            noisy, old = torch.empty_like(x0), torch.empty_like(x0, dtype=torch.float32)
            for step, index in nft_chunks(steps, settings.chunk_size):
                part = train.select(index)
                noisy[index] = adapter.renoise(x0[index], part, part.num_steps, step, rng)
                if use > 0:
                    with torch.no_grad():
                        old[index] = adapter.predict_x0(
                            adapter.model_output(noisy[index], step, part), noisy[index], step, part
                        )
            samples.steps.append(steps)
            samples.noisy.append(noisy)
            if use > 0:
                samples.x0_old.append(old)
        return samples

    # -- checkpoints of a reuse cycle ---------------------------------------------------------------------------

    def reuse_checkpoint(self) -> dict[str, Any]:
        """What a checkpoint needs of a ``rollout_reuse`` cycle in progress: DiffusionNFT's samples as plain tensors
        and lists (they load with ``weights_only=True``), or the fact that GRPO's rollouts (not saved) were part-way
        through theirs; nothing between cycles."""
        batch = self._rollout
        if isinstance(batch, _NFTSamples) and batch.uses < self.nft_settings.rollout_reuse:
            fields = ("prompts", "x0", "r", "steps", "noisy", "x0_old", "uses")
            return {"nft_samples": {name: getattr(batch, name) for name in fields}}
        if isinstance(batch, _Rollout) and batch.uses < self.grpo_settings.rollout_reuse:
            return {"grpo_unfinished_reuse": True}
        return {}

    def restore_reuse(self, record: dict[str, Any]) -> None:
        """Continue the checkpoint's DiffusionNFT reuse cycle as the uninterrupted run would (the conditioning is
        rebuilt from the prompts); warn where GRPO's cannot be continued."""
        if record.get("nft_samples") is not None:
            if self._trainer is not None and self.trainer.world_size > 1:
                # Every rank drew its own samples, and only rank 0's are in the checkpoint.
                rank_zero_warn(
                    "Resuming DiffusionNFT from a checkpoint saved part-way through nft.rollout_reuse in a "
                    "multi-process run: only rank 0's samples are in it, so every rank samples fresh ones where the "
                    "uninterrupted run reused them (not the same run). Save checkpoints at multiples of "
                    "rollout_reuse steps for an exact resume."
                )
            else:
                self._rollout = _NFTSamples(context=None, **record["nft_samples"])
        if record.get("grpo_unfinished_reuse"):
            rank_zero_warn(
                "Resuming GRPO from a checkpoint saved part-way through grpo.rollout_reuse: its rollouts are not in "
                "the checkpoint, so the resumed run samples fresh ones where the uninterrupted run reused them (not "
                "the same run). Save checkpoints at multiples of rollout_reuse steps for an exact resume."
            )
