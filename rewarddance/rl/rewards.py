"""Rewards that RL maximises: differentiable functions of images, their prompts and the prompts' metadata.

Every reward is called as ``reward(images, prompts, metadata) -> [B]``, with ``images`` ``[B, 3, H, W]`` (videos
``[B, T, 3, H, W]``) in ``[0, 1]`` carrying the generator's graph, ``prompts`` the texts and ``metadata`` their
GenEval-format descriptions (:mod:`rewarddance.data.prompts`). ReFL backpropagates the result into the generator,
so it must be differentiable with respect to ``images``; GRPO only reads its value.

Rewards are registered by name in :data:`REWARDS`:

- ``reward_model``: a trained rewarddance reward model, frozen, differentiable
  (:class:`rewarddance.judge.reward.RewardModelReward`);
- ``shapes-color`` and ``shapes-oracle``: the shapes world's toy reward and pixel oracle, registered by its
  plug-in (:mod:`rewarddance.shapes.rewards`);
- Any callable ``fn(images, prompts, metadata)`` (or ``fn(images, prompts)``), wrapped by :class:`CallableReward`.

:func:`build_reward` turns what a config says into a :class:`Reward`: a registered name (``"shapes-color"``), a
mapping with ``kind`` plus arguments (``{kind: reward_model, path: ..., best_of_n: 16}``), an import path
(``"mypackage.rewards:aesthetic"``: a class is instantiated with the arguments, a function gets them as keyword
arguments), or a callable. :func:`register_reward` adds names.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rewarddance.errors import UsageError
from rewarddance.registry import Registry

__all__ = [
    "REWARDS",
    "CallableReward",
    "CandidateSampler",
    "Reward",
    "RewardSpec",
    "build_reward",
    "register_reward",
]

CandidateSampler = Callable[[str, int, int], Tensor]
"""``sampler(prompt, n, seed) -> [n, ...]`` images of the *starting* generator for one prompt (no gradient)."""

RewardSpec = str | dict[str, Any] | Callable[..., Any]
"""What a config gives as ``reward``: a name, ``{kind: ..., **arguments}``, an import path, or a callable."""


class Reward:
    """Base of the rewards :class:`~rewarddance.tasks.GeneratorRLTask` maximises.

    ``__init__`` stays cheap (configs build rewards to print them); weights load in :meth:`setup`.
    """

    def setup(self, sampler: CandidateSampler | None = None) -> None:
        """Load weights (idempotent) and keep ``sampler``, which draws images from the starting generator."""

    @property
    def needs_references(self) -> bool:
        """Whether the reward samples the starting generator (pairwise references); valid after :meth:`setup`."""
        return False

    differentiable: bool = True
    """Whether gradients flow from the reward to ``images`` (ReFL needs them; GRPO reads values only)."""

    def to(self, device: torch.device | str) -> Reward:
        """Move weights to ``device``; returns self."""
        return self

    def frozen_modules(self) -> list[nn.Module]:
        """The reward's networks (frozen; checked by tests, moved by :meth:`to`)."""
        return []

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging (cache statistics...)."""
        return {}

    def prepare(self, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        """Called before a batch is sampled: expensive per-prompt work (pairwise references) happens here, while
        the generator holds no graph."""

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        """``[B]`` rewards, differentiable with respect to ``images``."""
        raise NotImplementedError


class CallableReward(Reward):
    """A plain function as a reward: ``fn(images, prompts, metadata)``, or ``fn(images, prompts)``.

    An ``nn.Module`` (a differentiable scorer network) is frozen by :meth:`setup` and moved by :meth:`to`.

    Args:
        fn: The function; it must return one reward per image.
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature: assume the full form
            self._takes_metadata = True
        else:
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self._takes_metadata = len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)

    def setup(self, sampler: CandidateSampler | None = None) -> None:
        if isinstance(self.fn, nn.Module):
            self.fn.requires_grad_(False).eval()  # gradients flow through it to the pixels, never into it

    def to(self, device: torch.device | str) -> CallableReward:
        if isinstance(self.fn, nn.Module):
            self.fn.to(device)
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return [self.fn] if isinstance(self.fn, nn.Module) else []

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        out = self.fn(images, prompts, metadata) if self._takes_metadata else self.fn(images, prompts)
        return torch.as_tensor(out).reshape(-1)

    def __repr__(self) -> str:
        return f"CallableReward({getattr(self.fn, '__qualname__', self.fn)!r})"


REWARDS: Registry[Callable[..., Reward]] = Registry(
    "reward", hint="Register one with rewarddance.rl.rewards.register_reward, or give an import path (module:name)."
)
"""Reward factories by name; ``{kind: name, **arguments}`` calls ``REWARDS[name](**arguments)``."""


def register_reward(name: str, factory: Callable[..., Reward] | None = None, *, overwrite: bool = False) -> Any:
    """Register a reward factory (usually a :class:`Reward` subclass) under ``name``; usable as a decorator.

    Raises:
        ValueError: If ``name`` is taken and ``overwrite`` is False.
    """
    return REWARDS.register(name, factory, overwrite=overwrite)


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise UsageError(f"Unknown reward {path!r}: not registered ({list(REWARDS)}) and not an import path")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(
            f"Unknown reward {path!r}: not registered ({list(REWARDS)}) and not importable ({error})"
        ) from error


def build_reward(spec: RewardSpec | Reward) -> Reward:
    """Turn a config's ``reward`` into a :class:`Reward` (see the module docstring for the accepted forms).

    Raises:
        ValueError: An unknown name, or a mapping without ``kind``.
    """
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("kind", None)
        if not isinstance(name, str):
            raise UsageError(f"A reward mapping needs kind: <name>, got {dict(spec)!r}; registered: {list(REWARDS)}")
    elif isinstance(spec, str):
        name, kwargs = spec, {}
    elif callable(spec):
        return CallableReward(spec)
    else:
        raise TypeError(f"Expected a reward name, mapping or callable, got {type(spec).__name__}")
    if name in REWARDS:
        return REWARDS[name](**_arguments(name, REWARDS[name], kwargs))
    target = _import(name)
    if inspect.isclass(target):
        built = target(**_arguments(name, target, kwargs))
        return built if isinstance(built, Reward) else CallableReward(built)
    if callable(target):
        return CallableReward(functools.partial(target, **kwargs) if kwargs else target)
    raise UsageError(f"reward {name!r} is neither a class nor a callable")


def _arguments(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs``, refused with the arguments ``factory`` takes when they do not fit its signature."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check against: let the call itself decide
        return kwargs
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        takes = [p for p in signature.parameters if p != "self"]
        raise UsageError(f"reward {name!r}: {err}; it takes {takes}") from err
    return kwargs
