r"""Best-of-N reference selection by pairwise win counts (RewardDance, Sec. "context scaling", Table 8).

With the pairwise reward model, ReFL rewards a candidate by :math:`P(\text{candidate better than reference})`. The
reference for a prompt is chosen once, from ``N`` (<= 16) samples of the frozen starting model: every pair is
judged by the pairwise model, each sample's wins are counted, and the top-k (paper: best-of-16 top-2, 83.6) or, as an
ablation, the bottom-k (80.6) become the references.

Conventions chosen here (the paper does not spell them out):

- ``judge(first, second)`` returns :math:`P(\text{second better than first})` for a batch of pairs, as the
  pairwise RM's "Is image 2 better than image 1?" does.
- By default every unordered pair is asked in both orders and averaged,
  :math:`P(i \succ j) = \tfrac12\,[\,\text{judge}(j, i) + 1 - \text{judge}(i, j)\,]`, which cancels a position bias
  (a VLM preferring whichever image comes second); ``both_orders=False`` asks once (``i < j``, ``i`` first).
- A win is :math:`P(i \succ j) > 0.5`; an exact 0.5 counts half a win for each (ties). ``soft=True`` sums the
  probabilities instead (fewer ties, sensitive to calibration).
- Equal counts are ordered by candidate index (stable); candidates are i.i.d. samples, so this is a fair draw.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

PairJudge = Callable[[Tensor, Tensor], Tensor]
"""``judge(first [P, ...], second [P, ...]) -> [P]`` probabilities that ``second`` is better than ``first``."""


def pairwise_win_matrix(
    candidates: Tensor, judge: PairJudge, *, both_orders: bool = True, batch_size: int | None = None
) -> Tensor:
    """Matrix ``W[i, j] = P(candidate i beats candidate j)`` from a batched pairwise judge.

    ``W[i, j] + W[j, i] = 1`` and the diagonal is 0.5. The judge is called on ``N (N - 1) / 2`` pairs (twice
    that with ``both_orders``), ``batch_size`` pairs at a time.

    Args:
        candidates: ``[N, ...]`` samples of one prompt (images, videos, or anything the judge takes).
        judge: See :data:`PairJudge`.
        both_orders: Ask each pair in both orders and average (cancels position bias).
        batch_size: Pairs per judge call (None: all at once).

    Returns:
        ``[N, N]`` float32 win probabilities.
    """
    n = candidates.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=candidates.device)
    first, second = (torch.cat([i, j]), torch.cat([j, i])) if both_orders else (i, j)
    chunk = batch_size or max(len(first), 1)
    probs = [
        torch.as_tensor(judge(candidates[first[s : s + chunk]], candidates[second[s : s + chunk]])).reshape(-1).float()
        for s in range(0, len(first), chunk)
    ]
    p_second = torch.cat(probs).to(candidates.device) if probs else torch.zeros(0, device=candidates.device)
    if p_second.numel() != len(first):
        raise ValueError(f"judge returned {p_second.numel()} probabilities for {len(first)} pairs")
    num_pairs = len(i)
    # P(j beats i) from "i first, j second"; with both orders also 1 - P(i beats j | j first).
    j_beats_i = p_second[:num_pairs]
    if both_orders:
        j_beats_i = 0.5 * (j_beats_i + 1 - p_second[num_pairs:])
    wins = torch.full((n, n), 0.5, device=candidates.device)
    wins[j, i] = j_beats_i
    wins[i, j] = 1 - j_beats_i
    return wins


def win_counts(wins: Tensor, *, soft: bool = False) -> Tensor:
    """Wins per candidate from a win matrix: ``sum_j [W[i, j] > 0.5] + 0.5 [W[i, j] = 0.5]`` over ``j != i``.

    Args:
        wins: ``[N, N]`` from :func:`pairwise_win_matrix`.
        soft: Sum the probabilities ``sum_{j != i} W[i, j]`` instead of counting wins.

    Returns:
        ``[N]`` counts (out of ``N - 1``).
    """
    off_diagonal = ~torch.eye(wins.shape[0], dtype=torch.bool, device=wins.device)
    per_pair = wins if soft else (wins > 0.5).float() + 0.5 * (wins == 0.5).float()
    return (per_pair * off_diagonal).sum(dim=1)


def select_by_wins(counts: Tensor, k: int, which: Literal["top", "bottom"] = "top") -> Tensor:
    """Indices of the ``k`` candidates with the most (``"top"``) or fewest (``"bottom"``) wins, best first for top.

    Ties keep candidate order (stable sort).
    """
    if not 1 <= k <= counts.numel():
        raise ValueError(f"k must be in [1, {counts.numel()}], got {k}")
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")
    order = torch.sort(counts, descending=which == "top", stable=True).indices
    return order[:k]


@dataclass
class ReferenceSelection:
    """The references chosen for one prompt.

    Attributes:
        references: ``[k, ...]`` the chosen candidates.
        indices: ``[k]`` their indices among the candidates.
        counts: ``[N]`` win counts of all candidates.
        wins: ``[N, N]`` the win matrix.
    """

    references: Tensor
    indices: Tensor
    counts: Tensor
    wins: Tensor


def select_references(
    candidates: Tensor,
    judge: PairJudge,
    *,
    k: int = 1,
    which: Literal["top", "bottom"] = "top",
    both_orders: bool = True,
    soft: bool = False,
    batch_size: int | None = None,
) -> ReferenceSelection:
    """Choose ``k`` reference samples among ``N`` candidates of one prompt by pairwise win counts.

    Args:
        candidates: ``[N, ...]`` samples of the frozen starting model for one prompt (N <= 16 in the paper).
        judge: See :data:`PairJudge` (bind the prompt with a closure or ``functools.partial``).
        k: Number of references (paper: 2).
        which: ``"top"`` (the paper's choice) or ``"bottom"`` (its ablation).
        both_orders: See :func:`pairwise_win_matrix`.
        soft: See :func:`win_counts`.
        batch_size: Pairs per judge call.

    Returns:
        The :class:`ReferenceSelection`.
    """
    wins = pairwise_win_matrix(candidates, judge, both_orders=both_orders, batch_size=batch_size)
    counts = win_counts(wins, soft=soft)
    indices = select_by_wins(counts, k, which)
    return ReferenceSelection(candidates[indices.to(candidates.device)], indices, counts, wins)


class ReferenceCache:
    """References per prompt, computed once and kept (least recently used evicted beyond ``max_prompts``).

    References come from the frozen starting model, so they never go stale during training; the cache saves
    ``N`` samples and ``N (N - 1)`` judge calls per prompt revisit.

    Args:
        max_prompts: Most prompts kept (None: unbounded). Stored tensors are moved to ``storage_device``.
        storage_device: Where references are kept (CPU by default, off the accelerator).
    """

    def __init__(self, max_prompts: int | None = None, storage_device: str | torch.device = "cpu") -> None:
        if max_prompts is not None and max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        self.max_prompts = max_prompts
        self.storage_device = torch.device(storage_device)
        self._entries: OrderedDict[Hashable, ReferenceSelection] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> ReferenceSelection | None:
        """The cached selection for ``key`` (a prompt, or a prompt plus its metadata), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, selection: ReferenceSelection) -> ReferenceSelection:
        """Store a selection (on ``storage_device``) and return the stored copy."""
        stored = ReferenceSelection(
            *(
                t.to(self.storage_device)
                for t in (selection.references, selection.indices, selection.counts, selection.wins)
            )
        )
        self._entries[key] = stored
        self._entries.move_to_end(key)
        if self.max_prompts is not None:
            while len(self._entries) > self.max_prompts:
                self._entries.popitem(last=False)
        return stored

    def get_or_select(
        self,
        key: Hashable,
        make_candidates: Callable[[], Tensor],
        judge: PairJudge,
        *,
        k: int = 1,
        which: Literal["top", "bottom"] = "top",
        both_orders: bool = True,
        soft: bool = False,
        batch_size: int | None = None,
    ) -> ReferenceSelection:
        """The cached selection, or sample candidates, select references (:func:`select_references`) and cache them.

        Args:
            key: Cache key (usually the prompt). The selection arguments are not part of it: use one cache per
                setting.
            make_candidates: Draws the ``[N, ...]`` candidates (called only on a miss).
            judge: See :data:`PairJudge`.
            k: See :func:`select_references`.
            which: See :func:`select_references`.
            both_orders: See :func:`select_references`.
            soft: See :func:`select_references`.
            batch_size: See :func:`select_references`.
        """
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        selection = select_references(
            make_candidates(), judge, k=k, which=which, both_orders=both_orders, soft=soft, batch_size=batch_size
        )
        return self.put(key, selection)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
