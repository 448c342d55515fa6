r"""GRPO for flow-matching generators (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470) and UNet ones (DDIM SDE).

**The SDE.** The Euler ODE sampler of a rectified flow is deterministic, so it has no per-step likelihood. Flow-GRPO
replaces it by an SDE with the same marginals. With :math:`x_\sigma = (1-\sigma)x_0 + \sigma\epsilon` and velocity
:math:`v = \epsilon - x_0` (see :mod:`rewarddance.models.schedules`), Tweedie's formula gives the score

.. math:: \nabla\log p_\sigma(x) = -\mathbb{E}[\epsilon\mid x]/\sigma = -\frac{x + (1-\sigma)\,v}{\sigma}.

Any diffusion coefficient :math:`g(\sigma)` gives a reverse-time SDE with the ODE's marginals,
:math:`dx = [v - \tfrac{g^2}{2}\nabla\log p_\sigma(x)]\,d\sigma + g\,d\bar w`, i.e. (with :math:`d\sigma < 0`)

.. math:: dx = \Big[v + \frac{g^2}{2\sigma}\big(x + (1-\sigma)v\big)\Big] d\sigma + g\,d\bar w,
   \qquad g(\sigma) = a\sqrt{\sigma/(1-\sigma)}

(``a`` = ``noise_level``, Flow-GRPO's :math:`a`, 0.7 there). One Euler-Maruyama step from :math:`\sigma` to
:math:`\sigma' < \sigma` (:math:`\Delta = \sigma' - \sigma < 0`) is the Gaussian transition

.. math:: x' \sim \mathcal N(\mu, s^2 I),\quad
   \mu = x\Big(1 + \frac{g^2\Delta}{2\sigma}\Big) + v\Big(1 + \frac{g^2(1-\sigma)}{2\sigma}\Big)\Delta,\quad
   s = g\sqrt{-\Delta},

and :math:`a = 0` gives back the Euler step :math:`x + v\Delta`. At :math:`\sigma = 1` the coefficient is infinite;
as Flow-GRPO, its denominator uses ``sigma_max`` = the schedule's second sigma instead.

**UNet (VP) generators** (SD 1.5 / SDXL with a DDIM or DDPM sampler) use DDIM's stochastic step instead (Song et
al. 2021, eq. 12), the policy of DDPO and DanceGRPO. From the predicted clean latent :math:`\hat x_0` and
:math:`\hat\epsilon = (x - \sqrt{\bar\alpha}\,\hat x_0)/\sqrt{1-\bar\alpha}`, the step from :math:`\bar\alpha` to
:math:`\bar\alpha' > \bar\alpha` is

.. math:: x' \sim \mathcal N(\mu, s^2 I),\quad s = \eta\sqrt{\frac{1-\bar\alpha'}{1-\bar\alpha}}
   \sqrt{1-\frac{\bar\alpha}{\bar\alpha'}},\quad \mu = \sqrt{\bar\alpha'}\,\hat x_0 + \sqrt{1-\bar\alpha'-s^2}\,\hat\epsilon,

with ``noise_level`` as :math:`\eta` (DDPO: 1); :math:`\eta = 0` is the deterministic DDIM step. The last step
(to :math:`\bar\alpha' = 1`) has :math:`s = 0` and is always deterministic.

**Log-probability** of a stored transition: :math:`\log\mathcal N(x';\mu,s^2I)`, averaged over the latent's
elements by default (Flow-GRPO's choice; ``reduce="sum"`` gives the true log-density). Sampling and recomputation
go through the same two functions (:func:`flow_sde_mean_std`, :func:`gaussian_log_prob`), so recomputing with the
unchanged model in the same batch layout gives a ratio of exactly 1.

**Objective** (per step, PPO-style): :math:`\max(-A\,r, -A\,\mathrm{clip}(r, 1-\epsilon, 1+\epsilon))` with
:math:`r = \exp(\log\pi_\theta - \log\pi_{old})` and group-normalised advantages
:math:`A = (R - \mathrm{mean}_g R)/(\mathrm{std}_g R + \varepsilon)`, plus optionally
:math:`\beta\,\mathrm{KL}(\pi_\theta\,\|\,\pi_{ref})`, which for two Gaussians with the same :math:`s` is
:math:`\|\mu - \mu_{ref}\|^2 / (2s^2)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor

from rewarddance.models.adapters import DenoisingContext, GeneratorAdapter
from rewarddance.models.schedules import PredictionType, per_sample, predict_x0_ddpm
from rewarddance.models.seeding import RandomSource, as_generator, randn

Reduce = Literal["mean", "sum"]
"""How per-element log-densities and KLs become one number per sample."""

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def flow_sde_std(sigma: Tensor | float, noise_level: float, sigma_max: Tensor | float | None = None) -> Tensor:
    r"""The SDE's diffusion coefficient :math:`g(\sigma) = a\sqrt{\sigma / (1 - \sigma)}`.

    Args:
        sigma: Current sigma (scalar or ``[B]``).
        noise_level: :math:`a`.
        sigma_max: Used in the denominator where :math:`\sigma = 1` (Flow-GRPO: the schedule's second sigma).

    Returns:
        :math:`g`, float32 (same shape as ``sigma``).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    at_one = sigma >= 1
    if bool(at_one.any()):
        if sigma_max is None:
            raise ValueError("sigma = 1 needs sigma_max (the largest sigma below 1) for the SDE's std")
        denominator_sigma = torch.where(at_one, torch.as_tensor(sigma_max, dtype=torch.float32), sigma)
    else:
        denominator_sigma = sigma
    return noise_level * torch.sqrt(sigma / (1 - denominator_sigma))


def flow_sde_mean_std(
    model_output: Tensor,
    sample: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: float,
    sigma_max: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Mean :math:`\mu` and std :math:`s` of the Gaussian SDE transition :math:`x_{\sigma'} \mid x_\sigma` (module docstring).

    Args:
        model_output: Predicted velocity :math:`v`, ``[B, ...]``.
        sample: :math:`x_\sigma`, same shape.
        sigma: :math:`\sigma` (scalar or ``[B]``), in (0, 1].
        sigma_next: :math:`\sigma' < \sigma`.
        noise_level: :math:`a \ge 0`.
        sigma_max: See :func:`flow_sde_std`.

    Returns:
        ``(mean, std)``: float32 ``[B, ...]`` and a float32 std broadcastable to it (0-d or ``[B, 1, ...]``).
    """
    x, v = sample.float(), model_output.float()
    s, s_next = per_sample(sigma, x), per_sample(sigma_next, x)
    dt = s_next - s
    g = per_sample(flow_sde_std(sigma, noise_level, sigma_max).to(x.device), x)
    mean = x * (1 + g**2 / (2 * s) * dt) + v * (1 + g**2 * (1 - s) / (2 * s)) * dt
    return mean, g * torch.sqrt(-dt)


def ddim_sde_mean_std(
    x0: Tensor, eps: Tensor, alpha_bar: Tensor | float, alpha_bar_next: Tensor | float, eta: float
) -> tuple[Tensor, Tensor]:
    r"""Mean and std of DDIM's stochastic step from :math:`\bar\alpha` to :math:`\bar\alpha'` (module docstring).

    Args:
        x0: Predicted clean latent :math:`\hat x_0` (clipped where the scheduler clips it), ``[B, ...]``.
        eps: Predicted noise :math:`\hat\epsilon` (from the unclipped prediction, as DDIM), same shape.
        alpha_bar: :math:`\bar\alpha` of the current step, in [0, 1).
        alpha_bar_next: :math:`\bar\alpha'` of the next step, in (``alpha_bar``, 1].
        eta: :math:`\eta \ge 0`.

    Returns:
        ``(mean, std)``: float32 ``[B, ...]`` and a 0-d float32 std.
    """
    x0, eps = x0.float(), eps.float()
    a = torch.as_tensor(alpha_bar, dtype=torch.float32, device=x0.device)
    a_next = torch.as_tensor(alpha_bar_next, dtype=torch.float32, device=x0.device)
    std = eta * ((1 - a_next) / (1 - a)).sqrt() * (1 - a / a_next).sqrt()
    mean = a_next.sqrt() * x0 + (1 - a_next - std**2).clamp_min(0).sqrt() * eps
    return mean, std


def _reduce_per_sample(values: Tensor, reduce: str) -> Tensor:
    # Every dimension but the first, so a log-prob or KL is one number per sample.
    dims = tuple(range(1, values.ndim))
    if reduce == "mean":
        return values.mean(dim=dims) if dims else values
    if reduce == "sum":
        return values.sum(dim=dims) if dims else values
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def gaussian_log_prob(value: Tensor, mean: Tensor, std: Tensor | float, reduce: Reduce = "mean") -> Tensor:
    r"""Per-sample :math:`\log\mathcal N(\text{value}; \text{mean}, \text{std}^2 I)`, reduced over all but the batch dim.

    ``reduce="mean"`` averages the per-element log-densities (Flow-GRPO), ``"sum"`` gives the log-density.
    ``value`` is detached: the gradient flows through the mean only, as in a policy gradient.
    """
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    elements = -((value.detach().to(mean.dtype) - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return _reduce_per_sample(elements, reduce)


@dataclass
class SDEStep:
    """One SDE transition.

    Attributes:
        prev_sample: :math:`x_{\\sigma'}` (the drawn or given next latent), float32.
        log_prob: ``[B]`` log-probability of ``prev_sample`` (reduced as requested).
        mean: ``[B, ...]`` transition mean :math:`\\mu` (carries the gradient).
        std: Transition std :math:`s` (0-d or ``[B, 1, ...]``).
    """

    prev_sample: Tensor
    log_prob: Tensor
    mean: Tensor
    std: Tensor


def flow_sde_step(
    model_output: Tensor,
    sample: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: float,
    *,
    sigma_max: Tensor | float | None = None,
    prev_sample: Tensor | None = None,
    generator: RandomSource = None,
    reduce: Reduce = "mean",
) -> SDEStep:
    """One Flow-GRPO SDE step: draw :math:`x_{\\sigma'}` (or take ``prev_sample``) and its log-probability.

    Args:
        model_output: Predicted velocity.
        sample: Current latent.
        sigma: Current sigma.
        sigma_next: Next (smaller) sigma.
        noise_level: :math:`a > 0`.
        sigma_max: See :func:`flow_sde_std`.
        prev_sample: A stored next latent to score instead of drawing one.
        generator: Seed or generator for the noise (drawn on the generator's device, then moved).
        reduce: ``"mean"`` or ``"sum"`` over latent elements.

    Returns:
        The :class:`SDEStep`.
    """
    mean, std = flow_sde_mean_std(model_output, sample, sigma, sigma_next, noise_level, sigma_max)
    if prev_sample is None:
        prev_sample = mean + std * randn(mean.shape, as_generator(generator), mean.device)
    return SDEStep(prev_sample.float(), gaussian_log_prob(prev_sample, mean, std, reduce), mean, std)


def transition_kl(mean: Tensor, ref_mean: Tensor, std: Tensor | float, reduce: Reduce = "mean") -> Tensor:
    r"""Per-sample :math:`\mathrm{KL}(\mathcal N(\mu, s^2I)\,\|\,\mathcal N(\mu_{ref}, s^2I)) = \|\mu-\mu_{ref}\|^2/(2s^2)`.

    ``reduce="mean"`` divides by the number of elements, matching :func:`gaussian_log_prob`'s default. ``s`` is the
    transition std (:math:`g\sqrt{-\Delta}`); Flow-GRPO's code divides by :math:`g^2` alone, i.e. its KL
    coefficient is this one times :math:`1/|\Delta|`.
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    sq = (mean.float() - ref_mean.float()) ** 2 / (2 * std**2)
    return _reduce_per_sample(sq, reduce)


def group_advantages(
    rewards: Tensor,
    groups: int | Sequence[Hashable] | Tensor,
    *,
    eps: float = 1e-4,
    unbiased: bool = False,
    global_std: bool = False,
) -> Tensor:
    r"""Group-normalised advantages :math:`A_i = (r_i - \bar r_{g(i)}) / (\mathrm{std}_{g(i)} + \varepsilon)`.

    Each prompt's samples form a group (GRPO, Shao et al. 2024; Flow-GRPO's per-prompt stat tracker). A group of one
    sample, or of equal rewards, gets advantage 0.

    Args:
        rewards: ``[N]`` rewards.
        groups: Group size ``G`` for contiguous groups (``N`` divisible by ``G``), or one label per reward (e.g. the
            prompt strings, in any order).
        eps: Added to the std (Flow-GRPO: 1e-4).
        unbiased: Use the ``N - 1`` std; default the population std (as Flow-GRPO's ``np.std``).
        global_std: Divide by the std of the whole batch instead of the group's (Flow-GRPO's ``global_std``).

    Returns:
        ``[N]`` advantages, float32 (or wider).
    """
    r = rewards.detach().reshape(-1)
    r = r.to(torch.promote_types(r.dtype, torch.float32))
    n = r.numel()
    if isinstance(groups, int):
        if groups < 1 or n % groups:
            raise ValueError(f"{n} rewards do not split into groups of {groups}")
        index = torch.arange(n, device=r.device) // groups
    else:
        labels = groups.tolist() if isinstance(groups, Tensor) else list(groups)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} group labels for {n} rewards")
        ids: dict[Hashable, int] = {}
        index = torch.tensor([ids.setdefault(label, len(ids)) for label in labels], device=r.device)
    num_groups = int(index.max()) + 1 if n else 0
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, index, r) / count
    centred = r - mean[index]
    if global_std:
        std = r.std(unbiased=unbiased) if n > int(unbiased) else torch.zeros((), dtype=r.dtype)
        return centred / (std + eps)
    ddof = 1 if unbiased else 0
    sq = torch.zeros_like(count).index_add_(0, index, centred**2)
    var = torch.where(count > ddof, sq / (count - ddof).clamp_min(1), torch.zeros_like(sq))
    return centred / (var.sqrt()[index] + eps)


@dataclass
class GRPOLoss:
    """The clipped GRPO objective and what to log about it.

    Attributes:
        loss: ``policy_loss + kl_coef * kl`` (scalar, differentiable).
        policy_loss: Mean clipped surrogate.
        kl: Mean KL to the reference (0 when not given).
        ratio: ``[B]`` importance ratios (detached).
        clip_fraction: Fraction of samples with :math:`|r - 1| > \\epsilon`.
        approx_kl: :math:`\\tfrac12\\,\\mathrm{mean}((\\log\\pi - \\log\\pi_{old})^2)`, the drift from the sampling policy.
    """

    loss: Tensor
    policy_loss: Tensor
    kl: Tensor
    ratio: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor

    def detached(self) -> GRPOLoss:
        """A copy without the graph: keeping it does not keep the step's activations alive."""
        return GRPOLoss(**{f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)})


def grpo_log_values(results: Sequence[GRPOLoss]) -> dict[str, Tensor]:
    """What an update logs about the losses of its trained steps: their means, and the largest ``|ratio - 1|``."""

    def mean(name: str) -> Tensor:
        return torch.stack([getattr(r, name).detach() for r in results]).mean()

    return {
        "train/policy_loss": mean("policy_loss"),
        "train/kl": mean("kl"),
        "train/clip_fraction": mean("clip_fraction"),
        "train/approx_kl": mean("approx_kl"),
        "train/ratio_deviation": (torch.cat([r.ratio.detach() for r in results]) - 1).abs().max(),
    }


def grpo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    *,
    clip_range: float = 1e-4,
    adv_clip_max: float | None = 5.0,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
) -> GRPOLoss:
    r"""PPO-clipped policy loss on one denoising step, :math:`\mathrm{mean}\max(-A r,\,-A\,\mathrm{clip}(r, 1\pm\epsilon)) + \beta\,\mathrm{KL}`.

    Defaults follow Flow-GRPO: ``clip_range = 1e-4`` (the ratio of element-averaged log-probs moves little; PPO's
    0.2 suits summed log-probs) and advantages clipped to ``[-5, 5]``.

    Args:
        log_prob: ``[B]`` log-probs of the stored transitions under the current policy (differentiable).
        old_log_prob: ``[B]`` log-probs recorded while sampling.
        advantages: ``[B]`` advantages (:func:`group_advantages`).
        clip_range: :math:`\epsilon`.
        adv_clip_max: Clip advantages to ``[-adv_clip_max, adv_clip_max]``; None leaves them.
        kl: ``[B]`` per-sample KL to the reference policy (:func:`transition_kl`), or None.
        kl_coef: :math:`\beta`.

    Returns:
        The :class:`GRPOLoss`.
    """
    adv = advantages.detach().to(log_prob.dtype)
    if adv_clip_max is not None:
        adv = adv.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    kl_mean = kl.mean() if kl is not None else torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
    return GRPOLoss(
        loss=policy_loss + kl_coef * kl_mean,
        policy_loss=policy_loss,
        kl=kl_mean,
        ratio=ratio.detach(),
        clip_fraction=((ratio.detach() - 1).abs() > clip_range).float().mean(),
        approx_kl=0.5 * (log_ratio.detach() ** 2).mean(),
    )


# -------------------------------------------------------------------------------------------------- rollouts


@dataclass
class Trajectory:
    """A batch of SDE rollouts with the per-step log-probs recorded while sampling.

    Attributes:
        latents: ``[B, S + 1, ...]`` latents from pure noise (index 0) to the final sample (index ``S``), in the
            context's latent dtype (what the denoiser saw).
        log_probs: ``[B, S]`` log-prob of each transition ``k -> k + 1`` (0 at deterministic steps).
        stochastic: ``[S]`` which steps were SDE steps (trainable); the others were Euler ODE steps.
        noise_level: The :math:`a` of the SDE steps.
        reduce: How the log-probs were reduced.
    """

    latents: Tensor
    log_probs: Tensor
    stochastic: Tensor
    noise_level: float
    reduce: Reduce

    @property
    def final(self) -> Tensor:
        """``[B, ...]`` final latents (decode them for the reward)."""
        return self.latents[:, -1]

    def select(self, index: Sequence[int] | Tensor) -> Trajectory:
        """The rollouts at ``index`` (minibatches; pair with ``DenoisingContext.select``)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Trajectory(
            self.latents[index.to(self.latents.device)],
            self.log_probs[index.to(self.log_probs.device)],
            self.stochastic,
            self.noise_level,
            self.reduce,
        )


def _sigma_max(context: DenoisingContext) -> Tensor:
    assert context.sigmas is not None
    return context.sigmas[1] if len(context.sigmas) > 2 else context.sigmas[0]


def _check_space(context: DenoisingContext) -> None:
    if context.space not in ("flow", "vp"):
        raise ValueError(
            f"GRPO needs a flow-matching generator or a UNet with a VP sampler (DDIM, DDPM); this context's latent "
            f"space is {context.space!r} (Euler-type schedulers): swap in a DDIMScheduler"
        )
    if context.space == "vp":
        assert context.alpha_bars is not None
        if not bool((context.alpha_bars[1:] > context.alpha_bars[:-1]).all()):
            raise ValueError(
                "GRPO's DDIM SDE needs strictly decreasing noise levels; this schedule repeats a timestep (PNDM's "
                "warm-up): swap in a DDIMScheduler"
            )


def _transition(
    adapter: GeneratorAdapter, context: DenoisingContext, latents: Tensor, step: int, noise_level: float
) -> tuple[Tensor, Tensor]:
    output = adapter.model_output(latents, step, context)
    if context.space == "vp":
        assert context.alpha_bars is not None
        alpha_bar = context.alpha_bars[step]
        x = latents.float()
        # DDIM's noise estimate comes from the unclipped clean-latent prediction; only x0 itself is clipped.
        raw_x0 = predict_x0_ddpm(output, x, alpha_bar, cast(PredictionType, context.prediction_type))
        eps = (x - alpha_bar.sqrt() * raw_x0) / (1 - alpha_bar).sqrt()
        x0 = adapter.predict_x0(output, latents, step, context)
        return ddim_sde_mean_std(x0, eps, alpha_bar, context.alpha_bars[step + 1], noise_level)
    assert context.sigmas is not None
    return flow_sde_mean_std(
        output, latents, context.sigmas[step], context.sigmas[step + 1], noise_level, _sigma_max(context)
    )


def default_sde_steps(context: DenoisingContext) -> list[int]:
    """Every step, except a VP schedule's last (to the clean latent), whose DDIM step has no noise."""
    steps = context.num_steps
    return list(range(steps - 1 if context.space == "vp" else steps))


def sample_trajectory(
    adapter: GeneratorAdapter,
    context: DenoisingContext,
    latents: Tensor,
    *,
    noise_level: float = 0.7,
    sde_steps: Sequence[int] | None = None,
    generator: RandomSource = None,
    reduce: Reduce = "mean",
) -> Trajectory:
    r"""Roll out the SDE (Flow-GRPO's, or DDIM's for VP UNets) from ``latents`` (step 0) to the end, recording each
    transition's log-prob.

    Runs without gradients. Steps outside ``sde_steps`` take the deterministic step (Euler / DDIM with eta 0;
    Flow-GRPO-Fast / MixGRPO style: fewer stochastic steps, cheaper training) and record log-prob 0.

    Args:
        adapter: The generator's adapter (flow families, or UNets with a DDIM/DDPM scheduler).
        context: From ``adapter.prepare``; CFG and guidance as configured there.
        latents: Initial noise (``adapter.initial_latents``).
        noise_level: :math:`a` (Flow-GRPO: 0.7), or DDIM's :math:`\eta` for VP UNets (DDPO: 1).
        sde_steps: Step indices that are stochastic; None = :func:`default_sde_steps`.
        generator: Seed or generator for the SDE noise.
        reduce: ``"mean"`` (Flow-GRPO) or ``"sum"`` over latent elements.

    Returns:
        The :class:`Trajectory`.
    """
    _check_space(context)
    num_steps = context.num_steps
    stochastic = torch.zeros(num_steps, dtype=torch.bool)
    stochastic[default_sde_steps(context) if sde_steps is None else list(sde_steps)] = True
    if context.space == "vp" and bool(stochastic[-1]):
        raise ValueError(f"step {num_steps - 1} of a VP schedule ends at the clean latent: DDIM has no noise there")
    if noise_level <= 0 and bool(stochastic.any()):
        raise ValueError("noise_level must be > 0 for SDE steps")
    rng = as_generator(generator)
    states, log_probs = [latents.to(context.latent_dtype)], []
    with torch.no_grad():
        for step in range(num_steps):
            x = states[-1]
            if stochastic[step]:
                mean, std = _transition(adapter, context, x, step, noise_level)
                noise = randn(mean.shape, rng, mean.device)
                # Stored in the denoiser's dtype; the log-prob is of the stored value, exactly what a recompute scores.
                x_next = (mean + std * noise).to(context.latent_dtype)
                log_probs.append(gaussian_log_prob(x_next, mean, std, reduce))
            else:
                mean, _ = _transition(adapter, context, x, step, 0.0)
                x_next = mean.to(context.latent_dtype)
                log_probs.append(torch.zeros(x.shape[0], device=x.device))
            states.append(x_next)
    return Trajectory(torch.stack(states, dim=1), torch.stack(log_probs, dim=1), stochastic, noise_level, reduce)


def recompute_step(adapter: GeneratorAdapter, context: DenoisingContext, trajectory: Trajectory, step: int) -> SDEStep:
    """Log-prob of the stored transition ``step -> step + 1`` under the adapter's current denoiser (with gradient).

    The PPO ratio is ``exp(result.log_prob - trajectory.log_probs[:, step])``; with the unchanged model and the same
    batch (and CFG layout) it is exactly 1. For a KL term, run this under the reference weights (e.g. peft's
    ``disable_adapter()``) without gradient and pass both means to :func:`transition_kl`.

    Args:
        adapter: The generator's adapter.
        context: The context used for sampling (or ``context.select(i)`` with ``trajectory.select(i)``).
        trajectory: From :func:`sample_flow_trajectory`.
        step: A stochastic step index.

    Returns:
        The :class:`SDEStep` (``mean`` carries the gradient).
    """
    if not bool(trajectory.stochastic[step]):
        raise ValueError(f"step {step} was a deterministic (ODE) step: it has no log-prob to train on")
    x, x_next = trajectory.latents[:, step], trajectory.latents[:, step + 1]
    mean, std = _transition(adapter, context, x, step, trajectory.noise_level)
    return SDEStep(x_next.float(), gaussian_log_prob(x_next, mean, std, trajectory.reduce), mean, std)
