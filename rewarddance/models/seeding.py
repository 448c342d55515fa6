"""Seeds and noise for sampling: one rule, shared by the generators' adapters, RL and search.

A seed makes a fresh CPU ``torch.Generator`` and the noise is drawn on that generator's device, then moved:
so a seed gives the same noise on any device, exactly as :func:`rewarddance.models.generators.sample` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

RandomSource = int | torch.Generator | None
"""A seed, a ``torch.Generator``, or None for the global RNG."""


def as_generator(source: RandomSource) -> torch.Generator | None:
    """Turn a seed into a fresh CPU generator; pass a generator (or None) through unchanged."""
    if isinstance(source, int) and not isinstance(source, bool):
        return torch.Generator("cpu").manual_seed(source)
    if source is None or isinstance(source, torch.Generator):
        return source
    raise TypeError(f"Expected an int seed, a torch.Generator or None, got {type(source).__name__}")


def randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal float32 noise on ``device``, drawn on the generator's own device (CPU for seeds)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=torch.float32).to(device)
