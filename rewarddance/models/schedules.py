r"""Noise-schedule math: predicting the clean sample and re-noising, for the three latent spaces of the generators.

Every generator family stores its noisy latent ``x`` in one of three forms (``eps`` is standard normal noise):

- ``"vp"`` (variance preserving; DDPM/DDIM/PNDM on SD-style UNets): :math:`x = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\epsilon`,
  with :math:`\bar\alpha` the scheduler's ``alphas_cumprod`` at the step's timestep.
- ``"ve"`` (variance exploding; Euler-type schedulers, e.g. SDXL's): :math:`x = x_0 + \sigma\,\epsilon` with
  :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`. The UNet still sees the VP form :math:`x / \sqrt{1+\sigma^2}`.
- ``"flow"`` (rectified flow; SD3, FLUX, Wan): :math:`x = (1-\sigma)\,x_0 + \sigma\,\epsilon`, ``sigma`` in [0, 1].

Flow-matching convention of diffusers (``FlowMatchEulerDiscreteScheduler``), derived from its code: ``scale_noise``
builds ``x = sigma * noise + (1 - sigma) * x0`` and ``step`` moves ``x_next = x + (sigma_next - sigma) * v``. The
Euler step is exact along the straight path only if ``v = dx/dsigma = noise - x0``, which is also the target the
diffusers SD3/FLUX training scripts regress. Hence :math:`x_0 = x - \sigma v` (and :math:`\epsilon = x + (1-\sigma) v`).
The transformer is called with ``timestep = 1000 * sigma`` (FLUX divides it by 1000 again inside the pipeline).

All functions compute in at least float32 (the schedulers upcast the same way) and accept a scalar or a per-sample
``[B]`` noise level.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample"]
"""What an SD-style UNet predicts (the scheduler's ``config.prediction_type``)."""


def per_sample(value: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or a per-sample ``[B]`` value against ``like`` (``[B, ...]``).

    A ``[B]`` tensor becomes ``[B, 1, ..., 1]``; a scalar stays a 0-d tensor. Dtype and device follow
    ``like``, so the arithmetic that uses the result runs in ``like``'s precision.
    """
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value
    if value.ndim != 1 or value.shape[0] != like.shape[0]:
        raise ValueError(f"Expected a scalar or a [{like.shape[0]}] tensor, got shape {tuple(value.shape)}")
    return value.view(-1, *([1] * (like.ndim - 1)))


def _float(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def predict_x0_ddpm(
    model_output: Tensor,
    sample: Tensor,
    alpha_bar: Tensor | float,
    prediction_type: PredictionType = "epsilon",
) -> Tensor:
    r"""Clean-sample prediction for a VP (DDPM-style) latent.

    With :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` (Ho et al. 2020, eq. 4):

    - ``"epsilon"``: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon) / \sqrt{\bar\alpha_t}`;
    - ``"v_prediction"`` (Salimans & Ho 2022, :math:`v = \sqrt{\bar\alpha}\epsilon - \sqrt{1-\bar\alpha}x_0`):
      :math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v`;
    - ``"sample"``: the output is :math:`\hat x_0`.

    This is ``pred_original_sample`` of diffusers' DDPM/DDIM ``step``. For a VE latent (Euler schedulers) pass
    ``sample / sqrt(1 + sigma^2)`` and ``alpha_bar = 1 / (1 + sigma^2)``.

    Args:
        model_output: The UNet output (after classifier-free guidance), ``[B, ...]``.
        sample: The noisy latent :math:`x_t`, same shape.
        alpha_bar: :math:`\bar\alpha_t` (``scheduler.alphas_cumprod[t]``), scalar or ``[B]``.
        prediction_type: The scheduler's ``config.prediction_type``.

    Returns:
        :math:`\hat x_0` in float32 (or wider).
    """
    out, x = _float(model_output), _float(sample)
    a = per_sample(alpha_bar, x)
    if prediction_type == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    if prediction_type == "sample":
        return out
    raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")


def predict_x0_flow(model_output: Tensor, sample: Tensor, sigma: Tensor | float) -> Tensor:
    r"""Clean-sample prediction for a rectified-flow latent: :math:`\hat x_0 = x_\sigma - \sigma\,\hat v`.

    With :math:`x_\sigma = (1-\sigma)x_0 + \sigma\epsilon` and :math:`v = \epsilon - x_0` (the module docstring
    derives this convention from diffusers' scheduler). At the last step of an Euler schedule
    (``sigma_next = 0``) this equals the scheduler's final latent exactly.

    Args:
        model_output: The predicted velocity :math:`\hat v`, ``[B, ...]`` (FLUX: packed ``[B, L, 4C]`` works too).
        sample: The noisy latent :math:`x_\sigma`, same shape.
        sigma: The step's sigma in [0, 1], scalar or ``[B]``.

    Returns:
        :math:`\hat x_0` in float32 (or wider).
    """
    x = _float(sample)
    return x - per_sample(sigma, x) * _float(model_output)


def flow_renoise(sample: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float, noise: Tensor) -> Tensor:
    r"""Move a rectified-flow latent back to a higher noise level with the exact forward transition.

    From :math:`x_b = (1-\sigma_b)x_0 + \sigma_b\epsilon_1` to :math:`\sigma_a \ge \sigma_b`:
    :math:`x_a = \frac{1-\sigma_a}{1-\sigma_b}\,x_b + \sqrt{\sigma_a^2 - \left(\frac{(1-\sigma_a)\sigma_b}{1-\sigma_b}\right)^2}\;\epsilon`,
    which has the marginal :math:`(1-\sigma_a)x_0 + \sigma_a\epsilon'` (the coefficient keeps :math:`x_0`'s weight,
    the fresh noise tops the variance up to :math:`\sigma_a^2`). Used by search over paths.

    Args:
        sample: :math:`x_b`.
        sigma_from: :math:`\sigma_b < 1`.
        sigma_to: :math:`\sigma_a \ge \sigma_b`.
        noise: Standard normal noise shaped like ``sample``.

    Returns:
        :math:`x_a` in float32 (or wider).
    """
    x = _float(sample)
    b, a = per_sample(sigma_from, x), per_sample(sigma_to, x)
    if bool((a < b).any()) or bool((b >= 1).any()):
        raise ValueError("flow_renoise needs sigma_from < 1 and sigma_to >= sigma_from")
    scale = (1 - a) / (1 - b)
    return scale * x + (a.square() - (scale * b).square()).clamp_min(0).sqrt() * _float(noise)


def vp_renoise(sample: Tensor, alpha_bar_from: Tensor | float, alpha_bar_to: Tensor | float, noise: Tensor) -> Tensor:
    r"""Move a VP latent back to a higher noise level: :math:`x_a = \sqrt{\bar\alpha_a/\bar\alpha_b}\,x_b + \sqrt{1-\bar\alpha_a/\bar\alpha_b}\,\epsilon`.

    The DDPM forward process between two noise levels (Ho et al. 2020, eq. 2 composed over steps), with
    :math:`\bar\alpha_a \le \bar\alpha_b`.

    Args:
        sample: :math:`x_b`.
        alpha_bar_from: :math:`\bar\alpha_b` (1 for a clean sample).
        alpha_bar_to: :math:`\bar\alpha_a \le \bar\alpha_b`.
        noise: Standard normal noise shaped like ``sample``.

    Returns:
        :math:`x_a` in float32 (or wider).
    """
    x = _float(sample)
    ratio = per_sample(alpha_bar_to, x) / per_sample(alpha_bar_from, x)
    if bool((ratio > 1).any()):
        raise ValueError("vp_renoise needs alpha_bar_to <= alpha_bar_from (a noisier target)")
    return ratio.sqrt() * x + (1 - ratio).sqrt() * _float(noise)
