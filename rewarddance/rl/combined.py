"""Several rewards in one RL run: each normalised within its prompt group, weighted, summed, and logged on its own.

Users combine a preference reward model with alignment and aesthetic scores, in-process and remote. Scales differ
(P(yes) in (0, 1), aesthetic scores in 1..10), so each component can be normalised first, within the samples of
one prompt (a GRPO group):

- ``zscore``: ``(r - mean) / (std + eps)`` over the group (0 for a group of one, or a group whose scores are equal);
- ``rank``: the sample's rank in its group mapped to ``[-1, 1]`` (ties share their mean rank): only the order
  counts, so an outlier cannot dominate;
- ``none``: the raw reward.

A component that goes flat (every sample of a group the same score) contributes nothing to the advantage; the sum
hides that, so :meth:`CombinedReward.log_values` reports every component's raw mean and std and the fraction of its
groups that were flat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rewarddance.errors import UsageError
from rewarddance.rl.rewards import CandidateSampler, Reward, build_reward

Normalization = Literal["none", "zscore", "rank"]
NORMALIZATIONS = ("none", "zscore", "rank")
FLAT_STD = 1e-6
"""A group whose scores spread less than this is flat (gives no signal)."""


def prompt_groups(prompts: Sequence[str]) -> Tensor:
    """Group index of each sample: samples with the same prompt text form a group (first appearance order)."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts], dtype=torch.long)


def normalize_in_groups(rewards: Tensor, groups: Tensor, how: Normalization, eps: float = 1e-6) -> Tensor:
    """``rewards`` ``[B]`` normalised within each group (see the module docstring); float32, same device."""
    if how == "none":
        return rewards.float()
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {how!r}")
    out = torch.zeros_like(rewards, dtype=torch.float32)
    groups = groups.to(rewards.device)
    for g in groups.unique():
        mask = groups == g
        r = rewards[mask].float()
        if r.numel() < 2:
            continue  # one sample: nothing to compare it with
        if how == "zscore":
            std = r.std()
            out[mask] = (r - r.mean()) / (std + eps) if std > FLAT_STD else torch.zeros_like(r)
        else:
            # Average rank of ties: each value's rank is the mean of the positions it occupies when sorted.
            less = (r[None, :] < r[:, None]).sum(dim=1).float()
            equal = (r[None, :] == r[:, None]).sum(dim=1).float()
            rank = less + (equal - 1) / 2
            out[mask] = 2 * rank / (r.numel() - 1) - 1
    return out


class CombinedReward(Reward):
    """A weighted sum of normalised rewards.

    Args:
        components: Each ``{"reward": <reward spec: a name, {kind: ...}, {class_path: ..., init_args: ...}, an
            import path>, "weight": float, "normalize": "none" | "zscore" | "rank", "name": str (optional; for
            the logs)}``.
        eps: Added to a group's std by ``zscore``.

    Example (a config's ``reward``)::

        class_path: CombinedReward
        init_args:
          components:
            - reward: {class_path: RemoteReward, init_args: {url: "http://127.0.0.1:8000"}}
              weight: 1.0
              normalize: zscore
              name: preference
            - {reward: shapes-color, weight: 0.5, normalize: rank}
    """

    def __init__(self, components: Sequence[Mapping[str, Any]], eps: float = 1e-6) -> None:
        if not components:
            raise UsageError("combined reward: give at least one component")
        self.rewards: list[Reward] = []
        self.weights: list[float] = []
        self.normalizations: list[Normalization] = []
        self.names: list[str] = []
        for i, component in enumerate(components):
            extra = set(component) - {"reward", "weight", "normalize", "name"}
            if "reward" not in component or extra:
                raise UsageError(
                    f"combined reward, component {i}: expected {{reward, weight, normalize, name}}, got "
                    f"{sorted(component)}"
                )
            how = component.get("normalize", "none")
            if how not in NORMALIZATIONS:
                raise UsageError(
                    f"combined reward, component {i}: normalize must be one of {NORMALIZATIONS}, got {how!r}"
                )
            spec = component["reward"]
            reward = build_reward(spec, field=f"combined reward, component {i}")
            default = spec if isinstance(spec, str) else None
            if isinstance(spec, Mapping):
                default = spec.get("kind") or spec.get("class_path")
            name = str(component.get("name") or default or type(reward).__name__)
            if name in self.names:
                name = f"{name}_{i}"
            self.rewards.append(reward)
            self.weights.append(float(component.get("weight", 1.0)))
            self.normalizations.append(how)
            self.names.append(name)
        self.eps = eps
        self._last: dict[str, float] = {}
        self._raw_sum: Tensor | None = None

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Gradients flow only if every component has them and none is ranked (a rank has no gradient)."""
        return all(r.differentiable for r in self.rewards) and "rank" not in self.normalizations

    @property
    def needs_references(self) -> bool:
        return any(r.needs_references for r in self.rewards)

    def setup(self, sampler: CandidateSampler | None = None) -> None:
        for reward in self.rewards:
            reward.setup(sampler)

    def to(self, device: torch.device | str) -> CombinedReward:
        for reward in self.rewards:
            reward.to(device)
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return [m for r in self.rewards for m in r.frozen_modules()]

    def prepare(self, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        for reward in self.rewards:
            reward.prepare(prompts, metadata)

    def log_values(self) -> dict[str, float]:
        """Per component: raw ``mean``, ``std`` and ``flat_groups`` of the last call, and the component's own."""
        values = dict(self._last)
        for name, reward in zip(self.names, self.rewards):
            values.update({f"{name}/{k}": v for k, v in reward.log_values().items()})
        return values

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        groups = prompt_groups(prompts)
        # Remote components start first (submit), so their servers work while in-process ones compute.
        pending = [r.submit(images, prompts, metadata) if hasattr(r, "submit") else None for r in self.rewards]
        parts, raws = [], []
        self._last = {}
        for name, reward, weight, how, future in zip(
            self.names, self.rewards, self.weights, self.normalizations, pending
        ):
            raw = future.result() if future is not None else reward(images, prompts, metadata)
            raw = torch.as_tensor(raw).reshape(-1).to(images.device)
            if raw.numel() != len(prompts):
                raise ValueError(f"combined reward: component {name!r} gave {raw.numel()} rewards for {len(prompts)}")
            self._last.update(self._statistics(name, raw.detach().float(), groups))
            parts.append(weight * normalize_in_groups(raw, groups, how, self.eps))
            raws.append(weight * raw.detach().float())
        self._raw_sum = torch.stack(raws).sum(dim=0)
        return torch.stack(parts).sum(dim=0)

    def monitored(self, rewards: Tensor) -> Tensor:
        """The weighted sum of the components' raw rewards of the last call: the returned sum is normalised within
        prompt groups (zero mean per group with ``zscore`` or ``rank``), so only the raw scores can show a rise."""
        if self._raw_sum is None or self._raw_sum.numel() != rewards.numel():
            raise RuntimeError("CombinedReward.monitored: call the reward on these samples first")
        return self._raw_sum

    @staticmethod
    def _statistics(name: str, raw: Tensor, groups: Tensor) -> dict[str, float]:
        ids = groups.unique()
        flat = [bool(raw[groups.to(raw.device) == g].std() <= FLAT_STD) for g in ids if int((groups == g).sum()) > 1]
        return {
            f"{name}/mean": float(raw.mean()),
            f"{name}/std": float(raw.std()) if raw.numel() > 1 else 0.0,
            f"{name}/flat_groups": sum(flat) / len(flat) if flat else 0.0,
        }

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {w} x {h}" for n, w, h in zip(self.names, self.weights, self.normalizations))
        return f"CombinedReward({parts})"
