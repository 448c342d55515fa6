"""Rewards that RL maximises: differentiable functions of images, their prompts and the prompts' metadata.

Every reward is called as ``reward(images, prompts, metadata) -> [B]``, with ``images`` ``[B, 3, H, W]`` (videos
``[B, T, 3, H, W]``) in ``[0, 1]`` carrying the generator's graph, ``prompts`` the texts and ``metadata`` their
GenEval-format descriptions (:mod:`rewarddance.data.prompts`). ReFL backpropagates the result into the generator,
so it must be differentiable with respect to ``images``; GRPO only reads its value.

- :class:`RewardModelReward` (``kind: reward_model``): a trained rewarddance reward model, frozen, with the exact
  differentiable preprocessing of :func:`rewarddance.models.pixels.differentiable_rewards`. A pairwise model
  scores each candidate against references chosen once per prompt as the best of ``N`` samples of the *starting*
  generator by pairwise win counts (RewardDance Table 8; :mod:`rewarddance.rl.reference`), cached per prompt.
- :class:`ShapesColorReward` (``shapes-color``): a **toy**: how much of each colour the prompt names appears in
  the pixels. It knows nothing about shapes, counts or positions, so maximising it hacks the oracle by design
  (fill the canvas with red): a demonstration of the hacking diagnostics, a stand-in for tests, and an example of
  a metadata-aware reward. Not a model of preference.
- :class:`ShapesOracleReward` (``shapes-oracle``): the pixel oracle itself, the ground truth of the shapes world.
  Not differentiable (GRPO and best-of-N only): the ceiling a learned reward model is measured against.
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
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rewarddance.errors import UsageError
from rewarddance.rl.reference import ReferenceCache, ReferenceSelection
from rewarddance.shapes.scene import COLOR_NAMES, COLORS

__all__ = [
    "REWARDS",
    "CallableReward",
    "CandidateSampler",
    "Reward",
    "RewardModelReward",
    "RewardSpec",
    "ShapesColorReward",
    "ShapesOracleReward",
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


REWARDS: dict[str, Callable[..., Reward]] = {}
"""Reward factories by name; ``{kind: name, **arguments}`` calls ``REWARDS[name](**arguments)``."""


def register_reward(name: str, factory: Callable[..., Reward] | None = None, *, overwrite: bool = False) -> Any:
    """Register a reward factory (usually a :class:`Reward` subclass) under ``name``; usable as a decorator.

    Raises:
        ValueError: If ``name`` is taken and ``overwrite`` is False.
    """

    def add(f: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in REWARDS and not overwrite:
            raise ValueError(f"Reward {name!r} is already registered")
        REWARDS[name] = f
        return f

    return add(factory) if factory is not None else add


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise UsageError(f"Unknown reward {path!r}: not registered ({sorted(REWARDS)}) and not an import path")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(
            f"Unknown reward {path!r}: not registered ({sorted(REWARDS)}) and not importable ({error})"
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
            raise UsageError(f"A reward mapping needs kind: <name>, got {dict(spec)!r}; registered: {sorted(REWARDS)}")
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


# --------------------------------------------------------------------------------------------------- toy


@register_reward("shapes-color")
class ShapesColorReward(Reward):
    r"""**Toy** reward: the share of the image in each colour the prompt names (differentiable, from pixels).

    For a prompt naming colours :math:`c_1..c_m` (``metadata["include"][*]["color"]``), with a soft colour match
    :math:`k_c(p) = \exp(-\lVert p - c\rVert^2 / 2\sigma^2)` per pixel ``p`` (RGB in [0, 1]) and the covered share
    :math:`a_c = \mathrm{mean}_p\,k_c(p)`,

    .. math:: r = \frac1m \sum_{j} \big(1 - e^{-a_{c_j} / a_0}\big),

    saturating once a colour covers about ``coverage`` :math:`a_0` of the image. A prompt without colours scores
    the share of pixels close to *any* palette colour (a "draw something" signal). Videos use all frames.

    It ignores shapes, counts and positions: maximising it soon hacks the shapes oracle (fill the canvas with the
    colour), which is what it is for (the hacking diagnostics, tests, a metadata-aware example).

    Args:
        sigma: Colour match width in RGB units of [0, 1] (the palette's closest pair is ~0.29 apart).
        coverage: Covered share :math:`a_0` at which a colour's term reaches 63% of its maximum.
    """

    def __init__(self, sigma: float = 0.15, coverage: float = 0.05) -> None:
        if sigma <= 0 or coverage <= 0:
            raise UsageError(f"shapes-color reward: sigma and coverage must be > 0, got {sigma}, {coverage}")
        self.sigma, self.coverage = sigma, coverage
        self.palette = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32) / 255.0

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        if len(metadata) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(metadata)} metadata entries")
        channels_dim = images.ndim - 3  # [B, 3, H, W] or [B, T, 3, H, W]
        pixels = images.float().movedim(channels_dim, -1).reshape(images.shape[0], -1, 3)  # [B, P, 3]
        palette = self.palette.to(pixels.device)
        distance = (pixels.unsqueeze(2) - palette).square().sum(-1)  # [B, P, colours]
        match = torch.exp(-distance / (2 * self.sigma**2))
        wanted = torch.zeros(len(metadata), len(COLOR_NAMES), device=pixels.device)
        for i, meta in enumerate(metadata):
            for entry in meta.get("include", []):
                if entry.get("color") in COLORS:
                    wanted[i, COLOR_NAMES.index(entry["color"])] = 1.0
        per_colour = 1 - torch.exp(-match.mean(1) / self.coverage)  # [B, colours]
        any_colour = 1 - torch.exp(-match.amax(-1).mean(1) / self.coverage)  # [B]
        named = (per_colour * wanted).sum(1) / wanted.sum(1).clamp_min(1)
        return torch.where(wanted.sum(1) > 0, named, any_colour)

    def __repr__(self) -> str:
        return f"ShapesColorReward(sigma={self.sigma}, coverage={self.coverage})"


@register_reward("shapes-oracle")
class ShapesOracleReward(Reward):
    """The shapes world's pixel oracle as a reward: GenEval's verdict, or its per-part score, of each image.

    The ground truth the learned reward models are measured against, so RL against it is the ceiling of what a
    reward model could give in a run's budget. Not differentiable (it detects blobs in the pixels): GRPO and
    best-of-N only; ReFL refuses it.

    Args:
        score: ``overall`` (1 iff the image matches the prompt, GenEval's all-or-nothing score) or ``mean`` (the
            mean of the constrained parts: colours, count, shape, position; a denser signal).
    """

    differentiable = False

    def __init__(self, score: Literal["overall", "mean"] = "mean") -> None:
        if score not in ("overall", "mean"):
            raise UsageError(f"shapes-oracle reward: score must be 'overall' or 'mean', got {score!r}")
        self.score = score

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        from rewarddance.shapes.oracle import evaluate_parts  # numpy/scipy detection, loaded on use

        if images.ndim != 4:
            raise ValueError(f"shapes-oracle judges images [B, 3, H, W], got shape {tuple(images.shape)}")
        if len(metadata) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(metadata)} metadata entries")
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        scores = [evaluate_parts(image.numpy(), dict(meta))[self.score] for image, meta in zip(pixels, metadata)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def __repr__(self) -> str:
        return f"ShapesOracleReward(score={self.score!r})"


# --------------------------------------------------------------------------------------------------- reward model


@register_reward("reward_model")
class RewardModelReward(Reward):
    """A trained rewarddance reward model (exported folder), frozen, as a differentiable reward.

    Pointwise and regressive models score each image alone. A pairwise model answers "is image 2 better than
    image 1?" with the candidate as image 2 and a reference as image 1: for each prompt, ``best_of_n`` samples of
    the starting generator are judged against each other (every pair, both orders by default), ranked by their
    win counts, and the ``top_k`` best (``which: bottom``: worst) become its references, cached for the rest of
    the run (the starting generator does not change, so they never go stale). The reward is the mean
    P(candidate better) over a prompt's references.

    Args:
        path: The export folder (``RewardModel.from_pretrained``), e.g. ``runs/shapes_pairwise/version_0/export``.
        criteria: Criteria name or text to ask with; null: the one the model was exported with.
        dtype: Parameter dtype of the frozen model (``bfloat16`` on GPUs); null keeps the saved one.
        best_of_n: Pairwise: starting-model samples per prompt the references are chosen from (paper: 16).
        top_k: Pairwise: references per prompt (paper: 2).
        which: Pairwise: ``top`` (the paper's choice) or ``bottom`` (its ablation) by win count.
        both_orders: Pairwise: judge each pair of samples in both orders while ranking (cancels position bias).
        soft: Pairwise: rank by summed win probabilities instead of win counts.
        judge_batch_size: Pairs per reward-model call while ranking (null: all of a prompt's at once).
        cache_size: Prompts whose references are kept (least recently used dropped first); null: all.
        quantize: Reproduce the processor's uint8 roundings in the forward pass (straight-through gradients).
        seed: Seed of the reference samples (each prompt's samples derive from it and the prompt text).
    """

    def __init__(
        self,
        path: str,
        criteria: str | None = None,
        dtype: str | None = None,
        best_of_n: int = 16,
        top_k: int = 2,
        which: Literal["top", "bottom"] = "top",
        both_orders: bool = True,
        soft: bool = False,
        judge_batch_size: int | None = None,
        cache_size: int | None = None,
        quantize: bool = True,
        seed: int = 0,
    ) -> None:
        if not 2 <= best_of_n <= 64:
            raise UsageError(
                f"reward_model reward: best_of_n must be in [2, 64] (the paper uses up to 16), got {best_of_n}"
            )
        if not 1 <= top_k <= best_of_n:
            raise UsageError(f"reward_model reward: top_k must be in [1, best_of_n={best_of_n}], got {top_k}")
        self.path, self.criteria, self.dtype = path, criteria, dtype
        self.best_of_n, self.top_k, self.which = best_of_n, top_k, which
        self.both_orders, self.soft, self.judge_batch_size = both_orders, soft, judge_batch_size
        self.quantize, self.seed = quantize, seed
        self.cache = ReferenceCache(max_prompts=cache_size)
        self.model: Any = None  # rewarddance.judge.reward_model.RewardModel once set up
        self.sampler: CandidateSampler | None = None

    def setup(self, sampler: CandidateSampler | None = None) -> None:
        """Load the model (once), freeze it, and keep the starting-model sampler for references.

        Raises:
            FileNotFoundError: ``path`` is not an export folder.
            ValueError: A pairwise model without a sampler.
        """
        if self.model is None:
            from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel

            folder = Path(self.path)
            if not (folder / EXPORT_CONFIG).is_file():
                raise FileNotFoundError(
                    f"No reward model at {folder} (no {EXPORT_CONFIG}). Train and export one, e.g. "
                    "`python -m rewarddance fit --config configs/reward/shapes_pairwise.yaml` (it writes "
                    "<log dir>/export), and point reward.path there; or use reward: shapes-color (a toy) to try "
                    "the RL loop."
                )
            model = RewardModel.from_pretrained(folder, dtype=self.dtype)
            # Frozen: ReFL needs gradients through the model to the pixels, never into it.
            model.backbone.model.requires_grad_(False).eval()
            if model.head is not None:
                model.head.requires_grad_(False)
            self.model = model
        self.sampler = sampler
        if self.needs_references and sampler is None:
            raise ValueError("A pairwise reward model needs a sampler of the starting generator for its references")

    @property
    def needs_references(self) -> bool:
        """True for a pairwise generative model."""
        model = self._model()
        return model.kind == "generative" and model.paradigm == "pairwise"

    def _model(self) -> Any:
        if self.model is None:
            raise RuntimeError("Call setup() before using the reward model")
        return self.model

    def to(self, device: torch.device | str) -> RewardModelReward:
        self._model().to(device)
        return self

    def frozen_modules(self) -> list[nn.Module]:
        model = self._model()
        return [model.backbone.model, *([model.head] if model.head is not None else [])]

    def log_values(self) -> dict[str, float]:
        if self.model is None or not self.needs_references:
            return {}
        return {"references/prompts": float(len(self.cache)), "references/hits": float(self.cache.hits)}

    def _differentiable(self, images: Tensor, prompts: Sequence[str], references: Tensor | None = None) -> Tensor:
        from rewarddance.models.pixels import differentiable_rewards

        return differentiable_rewards(
            self._model(), list(prompts), images, references, criteria=self.criteria, quantize=self.quantize
        )

    def judge(self, prompt: str, first: Tensor, second: Tensor) -> Tensor:
        """P(``second`` better than ``first``) for a batch of pairs of one prompt (no gradient)."""
        with torch.no_grad():
            return self._differentiable(second, [prompt] * second.shape[0], references=first).float()

    def reference_seed(self, prompt: str) -> int:
        """Seed of a prompt's candidate samples: fixed per prompt, so references do not depend on batch order."""
        return (self.seed * 1_000_003 + zlib.crc32(prompt.encode())) % 2**31

    def references(self, prompt: str) -> ReferenceSelection:
        """The cached references of ``prompt``, choosing them first on a miss (``best_of_n`` samples, ranked)."""
        if self.sampler is None:
            raise RuntimeError("No starting-model sampler: call setup(sampler)")
        sampler = self.sampler
        return self.cache.get_or_select(
            prompt,
            lambda: sampler(prompt, self.best_of_n, self.reference_seed(prompt)),
            functools.partial(self.judge, prompt),
            k=self.top_k,
            which=self.which,
            both_orders=self.both_orders,
            soft=self.soft,
            batch_size=self.judge_batch_size,
        )

    def prepare(self, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        if self.needs_references:
            for prompt in prompts:
                self.references(prompt)

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        if not self.needs_references:
            return self._differentiable(images, prompts).float()
        k = self.top_k
        references = torch.cat([self.references(p).references for p in prompts]).to(images.device, images.dtype)
        # Each candidate against each of its prompt's k references, in one batch: [B * k].
        rewards = self._differentiable(
            images.repeat_interleave(k, dim=0), [p for p in prompts for _ in range(k)], references=references
        )
        return rewards.float().view(len(prompts), k).mean(dim=1)

    def __repr__(self) -> str:
        return f"RewardModelReward(path={self.path!r}, best_of_n={self.best_of_n}, top_k={self.top_k})"
