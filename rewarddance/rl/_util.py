"""Small tensor helpers shared by the RL modules (private)."""

from __future__ import annotations

import torch
from torch import Tensor

RandomSource = int | torch.Generator | None
"""A seed, a ``torch.Generator``, or None for the global RNG."""


def as_generator(source: RandomSource) -> torch.Generator | None:
    """Turn a seed into a fresh CPU generator; pass a generator (or None) through unchanged.

    Seeds make CPU generators (as ``generators.sample`` does) so a seed gives the same noise on any device.
    """
    if isinstance(source, int) and not isinstance(source, bool):
        return torch.Generator("cpu").manual_seed(source)
    if source is None or isinstance(source, torch.Generator):
        return source
    raise TypeError(f"Expected an int seed, a torch.Generator or None, got {type(source).__name__}")


def randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal float32 noise on ``device``, drawn on the generator's own device (CPU for seeds)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=torch.float32).to(device)


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


def reduce_per_sample(values: Tensor, reduce: str) -> Tensor:
    """Reduce every dimension but the first with ``"mean"`` or ``"sum"``."""
    dims = tuple(range(1, values.ndim))
    if reduce == "mean":
        return values.mean(dim=dims) if dims else values
    if reduce == "sum":
        return values.sum(dim=dims) if dims else values
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
