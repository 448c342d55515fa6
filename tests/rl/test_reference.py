"""Best-of-N references by pairwise win counts, with a judge built from known qualities."""

from __future__ import annotations

import pytest
import torch

from rewarddance.rl.reference import (
    ReferenceCache,
    pairwise_win_matrix,
    select_by_wins,
    select_references,
    win_counts,
)

# Candidate "images" are [N, 1] tensors holding their quality; candidates 1 and 3 tie for best.
QUALITY = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5])
CANDIDATES = QUALITY[:, None]


def judge(first: torch.Tensor, second: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """P(second better than first) = sigmoid(10 (q2 - q1) + bias); bias > 0 favours whichever comes second."""
    return torch.sigmoid(10 * (second[:, 0] - first[:, 0]) + bias)


def test_win_counts_by_hand_with_a_tie() -> None:
    wins = pairwise_win_matrix(CANDIDATES, judge)
    assert torch.allclose(wins + wins.T, torch.ones(5)) and torch.all(wins.diagonal() == 0.5)
    assert wins[1, 3] == 0.5  # equal quality: an exact tie
    # 1 and 3 beat {0, 2, 4} and tie with each other: 3.5; 4 beats {0, 2}: 2; 0 beats {2}: 1; 2 beats nobody.
    assert win_counts(wins).tolist() == [1.0, 3.5, 0.0, 3.5, 2.0]
    soft = win_counts(wins, soft=True)
    assert soft.sum().item() == pytest.approx(10.0)  # one unit per unordered pair
    assert soft[1].item() == pytest.approx(soft[3].item())  # the tie, up to rounding
    assert soft.argsort(descending=True).tolist()[2:] == [4, 0, 2]


def test_top_and_bottom_k_with_stable_tie_breaking() -> None:
    counts = torch.tensor([1.0, 3.5, 0.0, 3.5, 2.0])
    assert select_by_wins(counts, 1).tolist() == [1]  # the tie goes to the lower index
    assert select_by_wins(counts, 2).tolist() == [1, 3]
    assert select_by_wins(counts, 3).tolist() == [1, 3, 4]
    assert select_by_wins(counts, 2, "bottom").tolist() == [2, 0]
    with pytest.raises(ValueError, match="k must be"):
        select_by_wins(counts, 6)
    with pytest.raises(ValueError, match="which"):
        select_by_wins(counts, 1, "best")  # type: ignore[arg-type]


def test_select_references_returns_the_chosen_samples() -> None:
    top = select_references(CANDIDATES, judge, k=2)
    assert top.indices.tolist() == [1, 3] and top.references[:, 0].tolist() == pytest.approx([0.9, 0.9])
    bottom = select_references(CANDIDATES, judge, k=2, which="bottom")
    assert bottom.references[:, 0].tolist() == pytest.approx([0.1, 0.3])


def test_both_orders_cancel_a_position_bias() -> None:
    def biased(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return judge(a, b, bias=3.0)

    fair = win_counts(pairwise_win_matrix(CANDIDATES, judge))
    assert torch.equal(win_counts(pairwise_win_matrix(CANDIDATES, biased)), fair)
    # Asked once, (0 first, 2 second): sigmoid(10 * (0.1 - 0.3) + 3) = sigmoid(1) > 0.5, so the worse one "wins".
    one_order = win_counts(pairwise_win_matrix(CANDIDATES, biased, both_orders=False))
    assert not torch.equal(one_order, fair)


def test_judge_is_batched_over_pairs() -> None:
    calls: list[int] = []

    def counting(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(len(a))
        return judge(a, b)

    batched = pairwise_win_matrix(CANDIDATES, counting, batch_size=3)
    assert calls == [3] * 6 + [2]  # 5 * 4 = 20 ordered pairs, 3 at a time
    assert torch.equal(batched, pairwise_win_matrix(CANDIDATES, judge))

    def image_judge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(len(a))
        return torch.sigmoid(b.flatten(1).mean(1) - a.flatten(1).mean(1))

    calls.clear()
    images = torch.rand(16, 3, 4, 4)  # N = 16, as in the paper: 240 ordered pairs in one call
    counts = win_counts(pairwise_win_matrix(images, image_judge))
    assert calls == [240] and counts.argmax() == images.flatten(1).mean(1).argmax()


def test_reference_cache_samples_once_per_prompt_and_evicts_oldest() -> None:
    drawn: list[str] = []

    def make(prompt: str) -> torch.Tensor:
        drawn.append(prompt)
        return CANDIDATES

    cache = ReferenceCache(max_prompts=2)
    first = cache.get_or_select("a red circle", lambda: make("a red circle"), judge, k=2)
    again = cache.get_or_select("a red circle", lambda: make("a red circle"), judge, k=2)
    assert drawn == ["a red circle"] and again is first and (cache.hits, cache.misses) == (1, 1)
    cache.get_or_select("b", lambda: make("b"), judge)
    cache.get("a red circle")  # touch: "b" is now the least recently used
    cache.get_or_select("c", lambda: make("c"), judge)
    assert "a red circle" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    assert first.references.device == torch.device("cpu")
    cache.clear()
    assert len(cache) == 0
