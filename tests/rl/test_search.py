"""Search over paths: a hand-traced deterministic run, a 1-D flow whose optimum is known, and a tiny SD3."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rewarddance.inference.search import search_over_paths
from rewarddance.models.adapters import adapter_for
from rewarddance.models.generators import Generator
from rewarddance.models.schedules import flow_renoise
from tests.rl.helpers import PROMPTS, SIDE


def test_search_by_hand_with_deterministic_branches() -> None:
    # Identity "sampler"; re-noising moves copy m of each path by [-1, 0, +1][m]; verifier -|x - 4.2|.
    offsets = torch.tensor([-1.0, 0.0, 1.0])

    def renoise(x: torch.Tensor, a: int, b: int, g: torch.Generator | None) -> torch.Tensor:
        return x + offsets.repeat(len(x) // 3)

    result = search_over_paths(
        torch.tensor([0.0, 10.0]),
        denoise=lambda x, a, b: x,
        renoise=renoise,
        verifier=lambda x, step: -(x - 4.2).abs(),
        num_steps=4,
        branch_steps=[1, 2, 3],
        num_branches=3,
        renoise_steps=1,
    )
    # Round 1: [-1, 0, 1, 9, 10, 11] -> keep 1 (-3.2) and 9 (-4.8); round 2: [0, 1, 2, 8, 9, 10] -> 2 (-2.2) and
    # 1 (-3.2); round 3: [1, 2, 3, 0, 1, 2] -> 3 (-1.2), then 2 (-2.2) twice: the tie goes to the earlier candidate.
    assert result.latents.tolist() == [3.0, 2.0]
    assert result.scores.tolist() == pytest.approx([-1.2, -2.2])
    assert result.best_scores == pytest.approx([-3.2, -2.2, -1.2])
    # Denoiser work: 2 paths x 1 step, then 3 rounds of 6 copies x 2 steps (from s - 1 to the next branch step).
    assert result.nfe == 2 + 3 * 6 * 2


def test_keep_parents_never_loses_the_best_path() -> None:
    # Re-noising only makes things worse here; with elitism the starting optimum survives.
    result = search_over_paths(
        torch.tensor([4.2, 0.0]),
        denoise=lambda x, a, b: x,
        renoise=lambda x, a, b, g: x + 1.0,
        verifier=lambda x, step: -(x - 4.2).abs(),
        num_steps=3,
        branch_steps=[1, 2],
        num_branches=2,
        renoise_steps=1,
        keep_parents=True,
    )
    assert result.latents[0].item() == pytest.approx(4.2) and result.scores[0].item() == pytest.approx(0.0)


def _gaussian_flow(steps: int) -> tuple[Callable, Callable, torch.Tensor]:
    """Exact 1-D rectified flow for data N(0, 1): the ODE only rescales, x_sigma = x_1 * s(sigma) / s(1)."""
    sigmas = torch.linspace(1, 0, steps + 1)

    def scale(k: int) -> torch.Tensor:
        return torch.sqrt((1 - sigmas[k]) ** 2 + sigmas[k] ** 2)

    def denoise(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        return x * scale(b) / scale(a)

    def renoise(x: torch.Tensor, a: int, b: int, g: torch.Generator | None) -> torch.Tensor:
        return flow_renoise(x, sigmas[a], sigmas[b], torch.randn(x.shape, generator=g))

    return denoise, renoise, sigmas


def test_search_finds_the_known_optimum_of_a_1d_flow() -> None:
    # Samples are N(0, 1); the verifier wants x = 2.5 (a 1-in-160 event). 4 paths x 4 branches pruned at 5 steps
    # land next to it; plain sampling of the 4 paths, and best-of-N at the same compute, do not.
    denoise, renoise, _ = _gaussian_flow(20)

    def verifier(x: torch.Tensor, step: int) -> torch.Tensor:
        return -(denoise(x, step, 20) - 2.5).abs()  # score the sample the path would end at

    noise = torch.randn(4, generator=torch.Generator().manual_seed(0))
    plain = search_over_paths(
        noise,
        denoise=denoise,
        renoise=renoise,
        verifier=verifier,
        num_steps=20,
        branch_steps=[],
        num_branches=1,
        renoise_steps=1,
    )
    searched = search_over_paths(
        noise,
        denoise=denoise,
        renoise=renoise,
        verifier=verifier,
        num_steps=20,
        branch_steps=[4, 8, 12, 16, 19],
        num_branches=4,
        renoise_steps=4,
        generator=0,
    )
    assert plain.nfe == 4 * 20
    error = abs(searched.latents[0].item() - 2.5)
    best_of_n = torch.randn(searched.nfe // 20, generator=torch.Generator().manual_seed(100))  # 29 full samples
    assert error < 0.1 < (best_of_n - 2.5).abs().min().item() < abs(plain.latents[0].item() - 2.5)
    assert searched.scores.tolist() == sorted(searched.scores.tolist(), reverse=True)
    # Same seed, same result.
    again = search_over_paths(
        noise,
        denoise=denoise,
        renoise=renoise,
        verifier=verifier,
        num_steps=20,
        branch_steps=[4, 8, 12, 16, 19],
        num_branches=4,
        renoise_steps=4,
        generator=0,
    )
    assert torch.equal(again.latents, searched.latents)


def test_search_argument_checks() -> None:
    common = {"denoise": lambda x, a, b: x, "renoise": lambda x, a, b, g: x, "verifier": lambda x, s: x}
    with pytest.raises(ValueError, match="increasing"):
        search_over_paths(torch.zeros(2), num_steps=5, branch_steps=[3, 2], num_branches=2, renoise_steps=1, **common)
    with pytest.raises(ValueError, match="lie in"):
        search_over_paths(torch.zeros(2), num_steps=5, branch_steps=[1], num_branches=2, renoise_steps=2, **common)


def test_search_on_a_tiny_sd3(tiny: Callable[[str], Generator]) -> None:
    adapter = adapter_for(tiny("sd3"))
    context = adapter.prepare(PROMPTS[:1], height=SIDE, width=SIDE, num_inference_steps=4, guidance_scale=1.0)
    contexts = {n: context.repeat_interleave(n) for n in (2, 4)}  # the conditioning follows the batch size

    def denoise(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        return adapter.denoise(x, contexts[len(x)], a, b)

    def renoise(x: torch.Tensor, a: int, b: int, g: torch.Generator | None) -> torch.Tensor:
        return adapter.renoise(x, contexts[len(x)], a, b, g)

    def brightness(x: torch.Tensor, step: int) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))  # a stand-in verifier on latents

    noise = adapter.initial_latents(contexts[2], 0)
    result = search_over_paths(
        noise,
        denoise=denoise,
        renoise=renoise,
        verifier=brightness,
        num_steps=4,
        branch_steps=[2],
        num_branches=2,
        renoise_steps=1,
        generator=0,
    )
    assert result.latents.shape == noise.shape and result.nfe == 2 * 2 + 4 * 3
    assert result.scores[0] >= result.scores[1]
