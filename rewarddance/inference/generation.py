"""One prompt's images by plain sampling, best-of-N, or search over denoising paths, with the compute spent.

RewardDance scales inference by spending more denoiser evaluations and letting the reward model pick: best-of-N
draws N samples and keeps the best; search over paths (:mod:`rewarddance.inference.search`) re-noises and re-samples
the most promising trajectories at chosen steps. :func:`generate` runs any of the three for one prompt and
reports the compute spent (denoiser evaluations, ``nfe``), so quality can be plotted against compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from rewarddance.inference.search import search_over_paths
from rewarddance.inference.verifier import Verifier
from rewarddance.models.adapters import DenoisingContext, GeneratorAdapter, adapter_for
from rewarddance.models.generators import Generator

Mode = Literal["plain", "best_of_n", "search"]
MODES: tuple[str, ...] = ("plain", "best_of_n", "search")


@dataclass
class Generation:
    """What :func:`generate` returns for one prompt.

    Attributes:
        images: ``[K, 3, H, W]`` in [0, 1]; best first when a verifier ranked them.
        scores: ``[K]`` verifier scores, or None for plain sampling.
        nfe: Denoiser evaluations spent (sample-steps, plus search's clean-image predictions for the verifier;
            doubled with classifier-free guidance).
        rationales: ``[K]`` the verifier's rationale behind each score (a reasons-first reward model), else None.
    """

    images: Tensor
    scores: Tensor | None
    nfe: int
    rationales: list[str] | None = None


class _PromptRun:
    """One prompt, encoded once: contexts for any batch size (repeats of it), decoding, and verifier scores.

    Mid-schedule the verifier judges the predicted clean image, one more denoiser call per candidate (as Ma et al.
    do); those calls are counted in :attr:`extra_nfe`.
    """

    def __init__(
        self,
        adapter: GeneratorAdapter,
        prompt: str,
        metadata: Mapping[str, Any] | None,
        verifier: Verifier | None,
        **prepare: Any,
    ) -> None:
        self.adapter = adapter
        self.prompt = prompt
        self.metadata = metadata
        self.verifier = verifier
        self.base = adapter.prepare([prompt], **prepare)
        self.steps = self.base.num_steps
        self.cost = 2 if self.base.do_cfg else 1  # denoiser passes per sample-step
        self.extra_nfe = 0
        self.last_rationales: list[str] | None = None
        self._contexts: dict[int, DenoisingContext] = {}

    def context(self, n: int) -> DenoisingContext:
        if n not in self._contexts:
            self._contexts[n] = self.base.repeat_interleave(n)
        return self._contexts[n]

    def decode(self, latents: Tensor) -> Tensor:
        return self.adapter.decode(latents, self.context(latents.shape[0]))

    def verify(self, images: Tensor) -> Tensor:
        if self.verifier is None:
            raise ValueError("this mode needs a verifier (a reward model or reward)")
        scores = self.verifier(images, self.prompt, self.metadata)
        self.last_rationales = getattr(self.verifier, "last_rationales", None)
        return scores

    def score(self, latents: Tensor, step: int) -> Tensor:
        if step < self.steps:
            context = self.context(latents.shape[0])
            output = self.adapter.model_output(latents, step, context)
            latents = self.adapter.predict_x0(output, latents, step, context).to(context.latent_dtype)
            self.extra_nfe += latents.shape[0]
        return self.verify(self.decode(latents))


def _plain(run: _PromptRun, noise: Tensor) -> Generation:
    latents = run.adapter.denoise(noise, run.context(noise.shape[0]), 0, run.steps)
    return Generation(run.decode(latents), None, noise.shape[0] * run.steps * run.cost)


def _best_of_n(run: _PromptRun, noise: Tensor, num_images: int) -> Generation:
    candidates = _plain(run, noise)
    scores = run.verify(candidates.images)
    order = torch.sort(scores, descending=True, stable=True).indices[:num_images]
    return Generation(candidates.images[order], scores[order], candidates.nfe, _pick(run.last_rationales, order))


def _pick(rationales: list[str] | None, indices: Tensor | None) -> list[str] | None:
    return None if rationales is None or indices is None else [rationales[i] for i in indices.tolist()]


def _search(
    run: _PromptRun,
    noise: Tensor,
    num_images: int,
    *,
    seed: int,
    branch_steps: Sequence[int] | None,
    num_branches: int,
    renoise_steps: int,
) -> Generation:
    steps = run.steps
    branches = list(branch_steps) if branch_steps is not None else [steps // 2, (3 * steps) // 4]
    adapter = run.adapter
    result = search_over_paths(
        noise,
        denoise=lambda x, a, b: adapter.denoise(x, run.context(x.shape[0]), a, b),
        renoise=lambda x, a, b, rng: adapter.renoise(x, run.context(x.shape[0]), a, b, rng),
        verifier=run.score,
        num_steps=steps,
        branch_steps=branches,
        num_branches=num_branches,
        renoise_steps=renoise_steps,
        keep_parents=True,
        generator=seed,
    )
    images = run.decode(result.latents[:num_images])
    # The search's last verifier call judged the returned samples: its rationales follow them.
    chosen = result.chosen[:num_images] if result.chosen is not None else None
    rationales = _pick(run.last_rationales, chosen)
    return Generation(images, result.scores[:num_images], (result.nfe + run.extra_nfe) * run.cost, rationales)


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
    run = _PromptRun(
        adapter, prompt, metadata, verifier, height=height, width=width, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )  # fmt: skip
    noise = adapter.initial_latents(run.context(pool), seed)
    if mode == "search":
        return _search(
            run, noise, num_images, seed=seed, branch_steps=branch_steps, num_branches=num_branches,
            renoise_steps=renoise_steps,
        )  # fmt: skip
    if mode == "best_of_n":
        return _best_of_n(run, noise, num_images)
    return _plain(run, noise)
