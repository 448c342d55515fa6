"""Step-level access to the generators, for RL and search: one :class:`GeneratorAdapter` per generator family.

- :mod:`~rewarddance.models.adapters.protocol`: the :class:`GeneratorAdapter` protocol and :class:`DenoisingContext`.
- :mod:`~rewarddance.models.adapters.pipeline`: :class:`PipelineAdapter`, the protocol on a diffusers pipeline.
- :mod:`~rewarddance.models.adapters.unet`, :mod:`~rewarddance.models.adapters.flow`,
  :mod:`~rewarddance.models.adapters.video`: the families' hooks.

Supported families: ``sd15`` and ``sdxl`` (UNet), ``sd3`` and ``flux`` (flow transformers), ``wan-t2v`` and ``wan-i2v``. A new family
registers its adapter with ``ADAPTERS.register("family", AdapterClass)`` next to its
:func:`rewarddance.models.generators.register_generator`.
"""

from __future__ import annotations

from collections.abc import Callable

from rewarddance.models.adapters.flow import FluxAdapter, StableDiffusion3Adapter
from rewarddance.models.adapters.pipeline import RESUMABLE_SCHEDULERS, PipelineAdapter
from rewarddance.models.adapters.protocol import DenoisingContext, GeneratorAdapter, LatentSpace
from rewarddance.models.adapters.unet import StableDiffusionAdapter, StableDiffusionXLAdapter
from rewarddance.models.adapters.video import WanAdapter, WanI2VAdapter, load_condition_image
from rewarddance.models.generators import Generator
from rewarddance.registry import Registry

__all__ = [
    "ADAPTERS",
    "RESUMABLE_SCHEDULERS",
    "DenoisingContext",
    "FluxAdapter",
    "GeneratorAdapter",
    "LatentSpace",
    "PipelineAdapter",
    "StableDiffusion3Adapter",
    "StableDiffusionAdapter",
    "StableDiffusionXLAdapter",
    "WanAdapter",
    "WanI2VAdapter",
    "adapter_for",
    "load_condition_image",
]

ADAPTERS: Registry[Callable[[Generator], GeneratorAdapter]] = Registry(
    "generator adapter", hint='Add one with rewarddance.models.adapters.ADAPTERS.register("<family>", AdapterClass).'
)
"""Adapter (a class, or any callable ``generator -> adapter``) per generator family name."""

for _adapter in (
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    StableDiffusion3Adapter,
    FluxAdapter,
    WanAdapter,
    WanI2VAdapter,
):
    for _family in _adapter.families:
        ADAPTERS.register(_family, _adapter)
del _adapter, _family


def adapter_for(generator: Generator) -> GeneratorAdapter:
    """The step-level adapter of a loaded generator.

    Raises:
        NotImplementedError: For families without an adapter.
    """
    if generator.family not in ADAPTERS:
        raise NotImplementedError(f"No RL adapter for {generator.family!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[generator.family](generator)
