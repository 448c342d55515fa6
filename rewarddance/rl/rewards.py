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
mapping with ``kind`` plus arguments (``{kind: reward_model, path: ..., best_of_n: 16}``), LightningCLI's
``{class_path: RemoteReward, init_args: {url: ...}}``, an import path (``"mypackage.rewards:aesthetic"`` or
``"mypackage.rewards.Aesthetic"``: a class is instantiated with the arguments, a function gets them as keyword
arguments), or a callable. Where a name goes, the class name of a registered reward works too (``RemoteReward``
for ``remote``). :func:`register_reward` adds names.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jsonargparse import Namespace
from jsonargparse.typing import register_type
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


class RewardSpec:
    """The type of a config's ``reward``: a name or import path, ``{kind: <name>, **arguments}``,
    ``{class_path: <name, class name or import path>, init_args: {...}}``, or (from Python) a :class:`Reward` or any
    callable. :func:`build_reward` reads all of them.

    Only an annotation, never instantiated. It is registered with jsonargparse (below) so that LightningCLI hands the
    value over as plain data: with a ``str | dict`` annotation jsonargparse takes a ``{class_path, init_args}``
    mapping for a class of its own to import while it merges configs, and fails on a short name such as
    ``RemoteReward`` (it wants a dotted path) in an error that names neither the field nor the registered rewards.
    """


def _reward_from_config(value: Any) -> Any:
    """jsonargparse's reading of a ``reward`` value: ``{class_path: X, init_args: {...}}`` becomes the equivalent
    ``{kind: X, ...}`` (what the task receives), which jsonargparse leaves alone; anything else is kept as it is
    for :func:`build_reward` to check, so a bad value is refused there, naming the field."""
    if getattr(value, "_fields", None) == ("key", "val"):  # jsonargparse's NestedArg (a private namedtuple)
        # One key given on the command line (--model.init_args.reward.best_of_n=4): refused here so that the
        # annotation's dict branch merges it into the reward's previous mapping, which this function never sees.
        raise ValueError(f"{value.key} alone is not a reward")
    if isinstance(value, Namespace):  # how jsonargparse passes a class_path mapping given on the command line
        value = value.as_dict()
    if isinstance(value, Mapping) and "class_path" in value and set(value) <= {"class_path", "init_args"}:
        init_args = value.get("init_args") or {}
        if isinstance(init_args, Mapping) and "kind" not in init_args:
            return {"kind": value["class_path"], **init_args}
    return value


def _is_reward_value(value: Any, _: type) -> bool:
    # Values jsonargparse keeps as they are; a {class_path, init_args} mapping goes through _reward_from_config.
    return isinstance(value, str) or callable(value) or (isinstance(value, Mapping) and "class_path" not in value)


def _reward_to_config(value: Any) -> Any:
    """How jsonargparse writes a reward (``--print_config``, a run's ``config.yaml``): a reward class named in
    ``kind`` (``RemoteReward``, ``mypackage.rewards.Aesthetic``) as ``{class_path, init_args}`` again, the form
    the user wrote; anything else as it is. Either form reads back the same."""
    if isinstance(value, Mapping) and isinstance(value.get("kind"), str):
        kind = value["kind"]
        if kind not in REWARDS and ":" not in kind and _names_a_class(kind):
            return {"class_path": kind, "init_args": {k: v for k, v in value.items() if k != "kind"}}
    return value


def _names_a_class(name: str) -> bool:
    if _class_name_of(name) is not None:
        return True
    module_name, _, attr = name.rpartition(".")
    try:
        return bool(module_name) and inspect.isclass(getattr(importlib.import_module(module_name), attr))
    except (ImportError, AttributeError):
        return False


register_type(RewardSpec, serializer=_reward_to_config, deserializer=_reward_from_config, type_check=_is_reward_value)


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

    def monitored(self, rewards: Tensor) -> Tensor:
        """What the reward-hacking check follows for the last call, whose result was ``rewards``: the rewards
        themselves, unless they are normalised within prompt groups (then their mean cannot trend)."""
        return rewards


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


def _class_name_of(name: str) -> Callable[..., Reward] | None:
    """The registered factory whose class name is ``name`` (``RemoteReward`` for ``remote``), if any."""
    found = [REWARDS[key] for key in REWARDS if getattr(REWARDS[key], "__name__", None) == name]
    return found[0] if found else None


def _known() -> str:
    names = list(REWARDS)
    classes = sorted({REWARDS[n].__name__ for n in names if inspect.isclass(REWARDS[n])})
    return f"registered: {names}; their classes: {classes}"


def _import(path: str, where: str) -> Any:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise UsageError(f"{where}Unknown reward {path!r}: not registered and not an import path ({_known()})")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(
            f"{where}Unknown reward {path!r}: not registered and not importable ({error}); {_known()}"
        ) from error


def build_reward(spec: RewardSpec | Reward | str | Mapping[str, Any] | Callable[..., Any], field: str = "") -> Reward:
    """Turn a config's ``reward`` into a :class:`Reward` (see the module docstring for the accepted forms).

    Args:
        spec: What the config gives.
        field: Where ``spec`` came from (``model.init_args.reward``), named in errors.

    Raises:
        UsageError: An unknown name or class, a malformed mapping, or arguments the reward does not take.
    """
    where = f"{field}: " if field else ""
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "class_path" in kwargs:  # LightningCLI's form (from Python; a config's is already in the kind form)
            init_args = kwargs.pop("init_args", None) or {}
            name = kwargs.pop("class_path")
            if kwargs or not isinstance(init_args, Mapping):
                raise UsageError(
                    f"{where}a reward with class_path takes init_args (a mapping) and nothing else, got {dict(spec)!r}"
                )
            kwargs = dict(init_args)
        else:
            name = kwargs.pop("kind", None)
        if not isinstance(name, str):
            raise UsageError(
                f"{where}a reward mapping needs kind: <name> (or class_path: <class>, init_args: {{...}}), got "
                f"{dict(spec)!r}; {_known()}"
            )
    elif isinstance(spec, str):
        name, kwargs = spec, {}
    elif callable(spec):
        return CallableReward(spec)
    else:
        raise UsageError(f"{where}expected a reward name, mapping or callable, got {type(spec).__name__}")
    factory = REWARDS[name] if name in REWARDS else _class_name_of(name)
    if factory is not None:
        return _construct(factory, _arguments(name, factory, kwargs, where), where)
    target = _import(name, where)
    if inspect.isclass(target):
        built = _construct(target, _arguments(name, target, kwargs, where), where)
        return built if isinstance(built, Reward) else CallableReward(built)
    if callable(target):
        return CallableReward(functools.partial(target, **kwargs) if kwargs else target)
    raise UsageError(f"{where}reward {name!r} is neither a class nor a callable")


def _construct(factory: Callable[..., Any], kwargs: dict[str, Any], where: str) -> Any:
    """``factory(**kwargs)``; a refusal of a value (a combined reward's component...) names ``where`` too."""
    try:
        return factory(**kwargs)
    except UsageError as err:
        if not where or str(err).startswith(where):
            raise
        raise UsageError(f"{where}{err}") from err


def _arguments(name: str, factory: Callable[..., Any], kwargs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``kwargs``, refused with the arguments ``factory`` takes when they do not fit its signature."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check against: let the call itself decide
        return kwargs
    takes = [p for p in signature.parameters if p != "self"]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown and not open_ended:  # named before a missing argument: a misspelt name causes both
        raise UsageError(f"{where}reward {name!r}: got an unexpected keyword argument {unknown[0]!r}; it takes {takes}")
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise UsageError(f"{where}reward {name!r}: {err}; it takes {takes}") from err
    return kwargs
