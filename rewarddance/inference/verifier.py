"""The verifier of inference-time scaling: scores one prompt's candidate images, higher is better.

A pointwise or regressive reward model, or any :mod:`rewarddance.rl.rewards` reward, scores each candidate alone.
A pairwise reward model (the paper's main one) needs a reference: here the candidates are their own references,
in a round robin. Each candidate serves once as image 1 for all the others (one shared-prefix call,
:meth:`RewardModel.score_candidates`), so every pair is judged in both orders, and a candidate's score is its mean
win probability (soft win count) against the rest.

A reasons-first reward model is a verifier like any other (no gradient is needed): it writes a rationale
before each judgment, and :attr:`Verifier.last_rationales` keeps those of the last call, one per candidate.
The prompt's GenEval ``tag`` (from its metadata) reaches a model that retrieves its in-context examples by tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.rewards import build_reward


class Verifier:
    """Scores one prompt's candidate images (``[N, 3, H, W]`` in [0, 1]) -> ``[N]``, higher is better.

    Args:
        reward: A reward-model export folder, or a reward spec of :func:`rewarddance.rl.rewards.build_reward` (a
            registered name such as ``shapes-color``, a mapping with ``kind``, or a callable).
        criteria: Reward models: the criteria to ask with (default: the exported one).
    """

    def __init__(self, reward: str | Mapping[str, Any] | Any, *, criteria: str | None = None) -> None:
        self.model: RewardModel | None = None
        self.reward: Any = None
        self.criteria = criteria
        if isinstance(reward, (str, Path)) and (Path(reward) / EXPORT_CONFIG).is_file():
            self.model = RewardModel.from_pretrained(reward)
        else:
            self.reward = build_reward(reward)
            self.reward.setup(None)
        self.judgments = 0
        """Reward-model judgments (or reward calls per image) made so far: the verifier's share of the compute."""
        self.last_rationales: list[str] | None = None
        """Reasons-first reward models: the rationale behind each score of the last call (pairwise: one line per
        opponent, ``vs candidate <i>: <rationale>``); None otherwise."""

    @property
    def pairwise(self) -> bool:
        return self.model is not None and self.model.kind == "generative" and self.model.paradigm == "pairwise"

    @torch.no_grad()
    def __call__(self, images: Tensor, prompt: str, metadata: Mapping[str, Any] | None = None) -> Tensor:
        n = images.shape[0]
        self.last_rationales = None
        if self.model is None:
            self.judgments += n
            scores = self.reward(images, [prompt] * n, [dict(metadata or {})] * n).float().cpu()
            rationales = getattr(self.reward, "last_rationales", None)
            self.last_rationales = list(rationales) if rationales is not None and len(rationales) == n else None
            return scores
        pil = to_pil_images(images)
        tag = (metadata or {}).get("tag")
        tag = str(tag) if tag else None
        if not self.pairwise:
            self.judgments += n
            scores = self.model.score([prompt] * n, pil, criteria=self.criteria, tags=[tag] * n)
            self.last_rationales = self.model.last_rationales
            return scores
        if n == 1:
            return torch.full((1,), 0.5)
        # beats[j, i] = P(candidate j better than candidate i), from the round with i as image 1.
        beats = torch.full((n, n), 0.5)
        reasons: list[list[str]] = [[] for _ in range(n)]
        for i in range(n):
            others = [j for j in range(n) if j != i]
            beats[others, i] = self.model.score_candidates(
                prompt, [pil[j] for j in others], pil[i], criteria=self.criteria, tag=tag
            )
            for j, text in zip(others, self.model.last_rationales or []):
                reasons[j].append(f"vs candidate {i}: {text}")
            self.judgments += n - 1
        if self.model.reasons_first:
            self.last_rationales = ["\n".join(lines) for lines in reasons]
        # Both orders of each pair: P(j beats i) = mean of "j better than i" and "i not better than j".
        wins = 0.5 * (beats + 1 - beats.T)
        wins.fill_diagonal_(0)
        return wins.sum(dim=1) / (n - 1)
