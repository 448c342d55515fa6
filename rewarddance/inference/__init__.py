"""Inference-time scaling: plain sampling, best-of-N by a verifier, and search over denoising paths.

RewardDance scales inference by spending more denoiser evaluations and letting the reward model pick: best-of-N
draws N samples and keeps the best; search over paths (:mod:`rewarddance.inference.search`) re-noises and re-samples
the most promising trajectories at chosen steps. :func:`generate` runs any of the three for one prompt and
reports the compute spent (denoiser evaluations, ``nfe``), so quality can be plotted against compute.

The :class:`Verifier` scores a prompt's candidates, higher is better. A pointwise or regressive reward model, or
any :mod:`rewarddance.rl.rewards` reward, scores each candidate alone. A pairwise reward model (the paper's main
one) needs a reference: here the candidates are their own references, in a round robin. Each candidate serves
once as image 1 for all the others (one shared-prefix call, :meth:`RewardModel.score_candidates`), so every pair
is judged in both orders, and a candidate's score is its mean win probability (soft win count) against the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rewarddance.inference.search import search_over_paths
from rewarddance.models.generators import Generator
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.denoising import DenoisingContext, adapter_for

Mode = Literal["plain", "best_of_n", "search"]
MODES: tuple[str, ...] = ("plain", "best_of_n", "search")


class Verifier:
    """Scores one prompt's candidate images (``[N, 3, H, W]`` in [0, 1]) -> ``[N]``, higher is better.

    Args:
        reward: A reward-model export folder, or a reward spec of :func:`rewarddance.rl.rewards.build_reward` (a
            registered name such as ``shapes-color``, a mapping with ``kind``, or a callable).
        criteria: Reward models: the criteria to ask with (default: the exported one).
    """

    def __init__(self, reward: str | Mapping[str, Any] | Any, *, criteria: str | None = None) -> None:
        from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel
        from rewarddance.rl.rewards import build_reward

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

    @property
    def pairwise(self) -> bool:
        return self.model is not None and self.model.kind == "generative" and self.model.paradigm == "pairwise"

    @torch.no_grad()
    def __call__(self, images: Tensor, prompt: str, metadata: Mapping[str, Any] | None = None) -> Tensor:
        n = images.shape[0]
        if self.model is None:
            self.judgments += n
            return self.reward(images, [prompt] * n, [dict(metadata or {})] * n).float().cpu()
        pil = to_pil_images(images)
        if not self.pairwise:
            self.judgments += n
            return self.model.score([prompt] * n, pil, criteria=self.criteria)
        if n == 1:
            return torch.full((1,), 0.5)
        # beats[j, i] = P(candidate j better than candidate i), from the round with i as image 1.
        beats = torch.full((n, n), 0.5)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            beats[others, i] = self.model.score_candidates(
                prompt, [pil[j] for j in others], pil[i], criteria=self.criteria
            )
            self.judgments += n - 1
        # Both orders of each pair: P(j beats i) = mean of "j better than i" and "i not better than j".
        wins = 0.5 * (beats + 1 - beats.T)
        wins.fill_diagonal_(0)
        return wins.sum(dim=1) / (n - 1)


@dataclass
class Generation:
    """What :func:`generate` returns for one prompt.

    Attributes:
        images: ``[K, 3, H, W]`` in [0, 1]; best first when a verifier ranked them.
        scores: ``[K]`` verifier scores, or None for plain sampling.
        nfe: Denoiser evaluations spent (sample-steps, plus search's clean-image predictions for the verifier;
            doubled with classifier-free guidance).
    """

    images: Tensor
    scores: Tensor | None
    nfe: int


def _contexts(adapter: Any, prompt: str, **prepare: Any) -> Any:
    # One encoding of the prompt; contexts for any batch size are repeats of it.
    base = adapter.prepare([prompt], **prepare)
    cache: dict[int, DenoisingContext] = {}

    def of_size(n: int) -> DenoisingContext:
        if n not in cache:
            cache[n] = base.repeat_interleave(n)
        return cache[n]

    return base, of_size


@torch.no_grad()
def generate(
    generator: Generator,
    prompt: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    mode: Mode = "plain",
    num_images: int = 1,
    n: int = 4,
    verifier: Verifier | None = None,
    height: int = 64,
    width: int = 64,
    num_inference_steps: int = 20,
    guidance_scale: float | None = None,
    seed: int = 0,
    branch_steps: Sequence[int] | None = None,
    num_branches: int = 2,
    renoise_steps: int = 2,
) -> Generation:
    """Sample ``num_images`` images for ``prompt`` by plain sampling, best-of-N or search over paths.

    Args:
        generator: A loaded image generator (a family with a step-level adapter: sd15, sdxl, sd3, flux).
        prompt: The prompt.
        metadata: GenEval metadata of the prompt (for metadata-aware rewards).
        mode: ``plain``, ``best_of_n`` (draw ``n``, keep the best ``num_images``) or ``search``
            (:func:`rewarddance.inference.search.search_over_paths` with ``n`` paths).
        num_images: Images returned.
        n: Best-of-N candidates, or search paths.
        verifier: Required for ``best_of_n`` and ``search``.
        height: Pixel height.
        width: Pixel width.
        num_inference_steps: Denoising steps of one pass.
        guidance_scale: Classifier-free guidance (None: the pipeline's default).
        seed: Seed of the initial noise (and of the re-noising in search).
        branch_steps: Search: steps at which paths branch (default: 1/2 and 3/4 of the schedule).
        num_branches: Search: re-noised copies per path and round.
        renoise_steps: Search: how many steps back each copy is re-noised.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "plain" and verifier is None:
        raise ValueError(f"mode {mode!r} needs a verifier (a reward model or reward)")
    pool = num_images if mode == "plain" else n
    if num_images > pool:
        raise ValueError(f"num_images={num_images} exceeds the {pool} candidates of {mode}")
    adapter = adapter_for(generator)
    base, of_size = _contexts(
        adapter, prompt, height=height, width=width, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )  # fmt: skip
    cost = 2 if base.do_cfg else 1
    steps = base.num_steps
    noise = adapter.initial_latents(of_size(pool), seed)

    def decode(latents: Tensor) -> Tensor:
        return adapter.decode(latents, of_size(latents.shape[0]))

    extra_nfe = 0

    def score(latents: Tensor, step: int = steps) -> Tensor:
        # Mid-schedule, the verifier judges the predicted clean image (one more denoiser call), as Ma et al. do.
        nonlocal extra_nfe
        assert verifier is not None
        if step < steps:
            context = of_size(latents.shape[0])
            output = adapter.model_output(latents, step, context)
            latents = adapter.predict_x0(output, latents, step, context).to(context.latent_dtype)
            extra_nfe += latents.shape[0]
        return verifier(decode(latents), prompt, metadata)

    if mode == "search":
        branches = list(branch_steps) if branch_steps is not None else [steps // 2, (3 * steps) // 4]
        result = search_over_paths(
            noise,
            denoise=lambda x, a, b: adapter.denoise(x, of_size(x.shape[0]), a, b),
            renoise=lambda x, a, b, rng: adapter.renoise(x, of_size(x.shape[0]), a, b, rng),
            verifier=score,
            num_steps=steps,
            branch_steps=branches,
            num_branches=num_branches,
            renoise_steps=renoise_steps,
            keep_parents=True,
            generator=seed,
        )
        images = decode(result.latents[:num_images])
        nfe = (result.nfe + extra_nfe) * cost
        return Generation(images, result.scores[:num_images], nfe)
    latents = adapter.denoise(noise, of_size(pool), 0, steps)
    images = decode(latents)
    if mode == "plain":
        return Generation(images, None, pool * steps * cost)
    scores = score(latents)
    order = torch.sort(scores, descending=True, stable=True).indices[:num_images]
    return Generation(images[order], scores[order], pool * steps * cost)
