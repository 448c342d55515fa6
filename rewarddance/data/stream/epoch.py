"""How one epoch is laid out: the split over ranks and workers, and the seeded shuffle buffer.

All of it is a pure function of (seed, epoch, rank, worker), which is what lets a resumed stream
recompute where it was instead of storing it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EpochPlan:
    """How one epoch of a finite stream is spread over ranks (all ranks compute the same plan)."""

    epoch: int
    shards: tuple[str, ...]
    """Shard order of this epoch."""
    num_samples: int
    """N: samples in all shards."""
    world_size: int
    samples_per_rank: int
    batches_per_rank: int
    padded: int
    """Samples read twice, over all ranks, to even out ranks (at most one per rank)."""
    dropped: int
    """Samples left out this epoch, over all ranks, to even out ranks (at most one per rank)."""


def worker_range(
    n: int, world: int, rank: int, quota: int, workers: int, worker: int, batch_size: int
) -> tuple[int, int, int]:
    """(first global position, samples to yield, of which real) for one (rank, worker) slot."""
    base, extra = divmod(n, world)
    rank_start = rank * base + min(rank, extra)
    rank_real = min(base + (rank < extra), quota)
    batches = math.ceil(quota / batch_size)
    # Deal the rank's batches to workers as contiguous runs: I/O stays sequential within a worker,
    # and only the rank's very last batch can be short.
    b0, b1 = worker * batches // workers, (worker + 1) * batches // workers
    lo, hi = b0 * batch_size, min(b1 * batch_size, quota)
    return rank_start + lo, max(0, hi - lo), max(0, min(hi, rank_real) - lo)


def emitted_slots(items: int | None, size: int, rng: random.Random, count: int) -> frozenset[int]:
    """Slots (input indices) among the first ``count`` outputs of :func:`buffer_shuffle` over ``items``
    inputs (``None``: endless). Its draws depend only on the number of items, never on their content,
    so a resumed stream learns which slots it already used without reading any of them."""
    if count == 0:
        return frozenset()
    inputs = iter(range(items)) if items is not None else itertools.count()
    return frozenset(itertools.islice(buffer_shuffle(inputs, size, rng), count))


def buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``size`` items; keeps the set of items."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def seeded_rng(*parts: int) -> random.Random:
    # Seeded from the whole tuple (seed, epoch, rank, worker, purpose) so streams never collide. A str
    # seed is hashed with SHA-512, independent of PYTHONHASHSEED: the same in every process.
    return random.Random("/".join(map(str, parts)))
