"""The shard stream itself: decoded, batched samples, split by rank and DataLoader worker, resumable."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch.utils.data import IterableDataset, get_worker_info

from rewarddance.data.schema import Sample, ShardFormatError, decode_sample
from rewarddance.data.stream.epoch import EpochPlan, buffer_shuffle, emitted_slots, seeded_rng, worker_range
from rewarddance.data.stream.shards import ShardInfo, ShardSource, resolve_shards
from rewarddance.data.stream.tar_reader import MemberPolicy, ShardReadError, count_samples, iter_tar_samples
from rewarddance.errors import BadFileError, UsageError

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
EvenOut = Literal["pad", "drop"]

# What a worker's stream sends its StreamLoader (rewarddance.data.stream.loader), and the worker's position.


class CarriedBatch(NamedTuple):
    """A batch on its way from a worker, with the counts that worker gathered since its last batch
    and the worker's position once this batch was cut (what a resumed run must skip to continue after it)."""

    batch: Any
    counts: dict[str, int]
    worker: int
    position: int
    good: int


class WorkerCursor:
    """A worker's position in its epoch: raw sample slots consumed (good, bad or replaced) and samples yielded.

    Everything else about the stream (shard order, slice, shuffle buffer draws) is a pure function of
    (seed, epoch, rank, worker), so these two numbers are the whole per-worker state of an epoch.
    """

    def __init__(self, position: int = 0, good: int = 0) -> None:
        self.position, self.good = position, good


class ResumePoint(NamedTuple):
    """Where a restored epoch continues: (position, good) per worker's share, and whose batch is next."""

    epoch: int
    workers: list[tuple[int, int]]
    next: int
    """The share whose batch comes next. The DataLoader takes batches from its workers in turn,
    starting with worker 0 at every ``iter()``; so a resumed iteration gives worker ``i`` the share
    ``(next + i) % workers`` to keep the uninterrupted run's order."""


class WorkerFailure:
    """A bad-data error raised in a worker, re-raised as itself by :class:`~rewarddance.data.stream.loader.StreamLoader`.

    torch re-raises worker exceptions as a RuntimeError around the traceback text; sending the
    error as data keeps its type and its ``shard``/``key``/``field`` attributes.
    """

    def __init__(self, error: ShardFormatError) -> None:
        self.error = error


class LostSample(NamedTuple):
    """A sample position that could not be read (truncated, corrupt or missing shard)."""

    error: ShardReadError


class ShardStream(IterableDataset):
    """Decoded, batched samples from shards; splits by rank and DataLoader worker itself.

    Iterating yields batches: ``collate_fn(list_of_samples)``, or the list itself. Use it through
    :class:`~rewarddance.data.stream.loader.StreamLoader`, which sets the epoch, collects skip counts from the workers and reports
    them at the end of each epoch.

    Args:
        source: Shards: folder with ``manifest.json``, shard paths, brace patterns, ``pipe:`` URLs.
        batch_size: Samples per batch, batched (and collated) inside the workers.
        collate_fn: Turns a list of :class:`Sample` into a batch; ``None`` keeps the list.
        shuffle: Shuffle the shard order (per epoch, from ``seed`` and the epoch) and the samples
            (through a buffer of ``shuffle_buffer``).
        shuffle_buffer: Size of the per-worker sample shuffle buffer (raw bytes are buffered, not
            decoded images); 0 or 1 keeps the order within the worker's slice.
        seed: Base seed; shard order, buffer and resampling derive from it and the epoch.
        resampled: Draw shards with replacement forever; each epoch is ``epoch_length`` samples per rank.
        epoch_length: Samples per rank per epoch in resampled mode.
        even_out: How ranks get equal sample counts in finite mode: ``"pad"`` reads up to one sample
            per rank twice (marked ``Sample.padding``), ``"drop"`` leaves up to one per rank out.
        on_error: ``"raise"`` a :class:`ShardFormatError` on the first bad sample, or ``"skip"``
            it, count it per field and read on.
        load_visuals: Decode images; ``False`` gives metadata-only samples (visual fields ``None``).
        load_references: Decode reference images (``Sample.references``); their bytes are not
            even read when ``False``.
        rank: This process's rank; default from ``torch.distributed`` (0 when not initialised).
        world_size: Number of ranks; default from ``torch.distributed`` (1 when not initialised).
        name: Name used in reports and log lines.
    """

    def __init__(
        self,
        source: ShardSource | Sequence[ShardInfo],
        *,
        batch_size: int = 1,
        collate_fn: Callable[[list[Sample]], Any] | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        resampled: bool = False,
        epoch_length: int | None = None,
        even_out: EvenOut = "pad",
        on_error: OnError = "raise",
        load_visuals: bool = True,
        load_references: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        name: str = "stream",
    ) -> None:
        # UsageError (a ValueError): these values come from configs and command flags.
        if batch_size < 1:
            raise UsageError(f"{name}: batch_size must be at least 1, got {batch_size}")
        if on_error not in ("raise", "skip"):
            raise UsageError(f"{name}: on_error must be 'raise' or 'skip', got {on_error!r}")
        if even_out not in ("pad", "drop"):
            raise UsageError(f"{name}: even_out must be 'pad' or 'drop', got {even_out!r}")
        if resampled and (epoch_length is None or epoch_length < 1):
            raise UsageError(
                f"{name}: resampled=True streams forever: give epoch_length (samples per rank per epoch, at least 1), "
                f"got {epoch_length}"
            )
        if epoch_length is not None and not resampled:
            raise UsageError(
                f"{name}: epoch_length only applies with resampled=True (a finite epoch is the whole data set)"
            )
        if isinstance(source, Sequence) and source and all(isinstance(s, ShardInfo) for s in source):
            self.shards: list[ShardInfo] = list(source)  # type: ignore[arg-type]
        else:
            self.shards = resolve_shards(source)  # type: ignore[arg-type]
        self.batch_size, self.collate_fn = batch_size, collate_fn
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.resampled, self.epoch_length, self.even_out = resampled, epoch_length, even_out
        self.on_error: OnError = on_error
        self.policy = MemberPolicy(load_visuals, load_references)
        self.rank, self.world_size, self.name = rank, world_size, name
        # The epoch lives in shared memory so persistent DataLoader workers (which keep their own
        # copy of the dataset between epochs) still see set_epoch() calls made in the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.carry = False  # set by StreamLoader: send each batch as a CarriedBatch (with counts and position)
        self.resume_point: ResumePoint | None = None  # set by StreamLoader: where each worker continues
        self.counts: Counter[str] = Counter()
        """Counts gathered when iterated in this process (``num_workers=0`` or direct iteration)."""

    # -- configuration -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: shard order, shuffle buffer and resampling all derive from it."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def _dist(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank = rank if rank is not None else (dist.get_rank() if on else 0)
            world = world if world is not None else (dist.get_world_size() if on else 1)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world_size {world}")
        return rank, world

    def prepare(self) -> None:
        """Resolve rank and world size and count uncounted shards, in the main process.

        :class:`~rewarddance.data.stream.loader.StreamLoader` calls this before starting workers, so the counting pass (shards
        without a manifest entry) happens once per process rather than once per worker.
        """
        self.rank, self.world_size = self._dist()
        if not self.resampled and any(s.samples is None for s in self.shards):
            todo = [s for s in self.shards if s.samples is None]
            log.info("%s: counting samples in %d shards without a manifest entry", self.name, len(todo))
            self.shards = [s if s.samples is not None else ShardInfo(s.url, count_samples(s.url)) for s in self.shards]

    @property
    def num_samples(self) -> int:
        """Samples in all shards (counting uncounted shards first)."""
        self.prepare()
        return sum(s.samples or 0 for s in self.shards)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The split of one epoch over ranks (finite mode)."""
        if self.resampled:
            raise ValueError("a resampled stream has no finite epoch plan")
        self.prepare()
        epoch = self.epoch if epoch is None else epoch
        _, world = self._dist()
        order = [s for s in self.shards if s.samples]
        if self.shuffle:
            # Re-drawn from seed and epoch, so the shard order changes every epoch (WebDataset's
            # shardshuffle draws once) yet is the same on every rank and worker.
            seeded_rng(self.seed, epoch, 0x5A4D).shuffle(order)
        n = sum(s.samples or 0 for s in order)
        if n == 0:
            where = self.shards[0].url if len(self.shards) == 1 else f"{len(self.shards)} shards"
            raise BadFileError(f"{self.name}: no samples in {where}; point it at shards that hold samples")
        base, extra = divmod(n, world)
        quota = base + (extra > 0) if self.even_out == "pad" else base
        if quota == 0:
            log.warning(
                "%s: %d samples cannot fill %d ranks with even_out='drop'; the epoch is empty", self.name, n, world
            )
        return EpochPlan(
            epoch=epoch,
            shards=tuple(s.url for s in order),
            num_samples=n,
            world_size=world,
            samples_per_rank=quota,
            batches_per_rank=math.ceil(quota / self.batch_size),
            padded=world * quota - n if self.even_out == "pad" else 0,
            dropped=n - world * quota if self.even_out == "drop" else 0,
        )

    def samples_per_rank(self) -> int:
        if self.resampled:
            return int(self.epoch_length or 0)
        return self.plan().samples_per_rank

    def __len__(self) -> int:
        """Batches per rank per epoch: the same on every rank."""
        return math.ceil(self.samples_per_rank() / self.batch_size)

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        # Not a generator itself: the epoch and the resume point are read now, when the DataLoader
        # makes the iterator, so the loader can clear a one-time resume point right after.
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, resume = self.epoch, self.resume_point
        cursor = WorkerCursor()
        if resume is not None and resume.epoch == epoch:
            worker = (worker + resume.next) % workers
            cursor = WorkerCursor(*resume.workers[worker])
        return self._iter(epoch, worker, workers, cursor)

    def _iter(self, epoch: int, worker: int, workers: int, cursor: WorkerCursor) -> Iterator[Any]:
        rank, _ = self._dist()
        counts: Counter[str] = Counter()
        sent: Counter[str] = Counter()
        try:
            if self.resampled:
                samples = self._resampled_samples(epoch, rank, worker, workers, counts, cursor)
            else:
                samples = self._finite_samples(self.plan(epoch), rank, worker, workers, counts, cursor)
            for batch in self._batches(samples):
                out = self.collate_fn(batch) if self.collate_fn is not None else batch
                if self.carry:
                    delta = {k: v - sent[k] for k, v in counts.items() if v != sent[k]}
                    sent = Counter(counts)
                    yield CarriedBatch(out, delta, worker, cursor.position, cursor.good)
                else:
                    yield out
        except ShardFormatError as err:
            if not self.carry:
                raise
            yield WorkerFailure(err)
        finally:
            self.counts.update(counts)

    def _batches(self, samples: Iterator[Sample]) -> Iterator[list[Sample]]:
        while batch := list(itertools.islice(samples, self.batch_size)):
            yield batch

    def _decode(self, raw: dict[str, Any] | LostSample, padding: bool, counts: Counter[str]) -> Sample | None:
        """Decode one raw sample; None (counted) for a bad one when skipping."""
        try:
            if isinstance(raw, LostSample):
                raise raw.error
            visuals = self.policy.load_visuals
            sample = decode_sample(raw, load_references=visuals and self.policy.load_references, load_visuals=visuals)
        except ShardFormatError as err:
            if self.on_error == "raise":
                raise
            counts[f"skipped/{_reason(err)}"] += 1
            return None
        sample.padding = padding
        return sample

    def _finite_samples(
        self, plan: EpochPlan, rank: int, worker: int, workers: int, counts: Counter[str], cursor: WorkerCursor
    ) -> Iterator[Sample]:
        """This worker's samples; a ``cursor`` restored from a checkpoint continues after its position."""
        start, length, real = worker_range(
            plan.num_samples, plan.world_size, rank, plan.samples_per_rank, workers, worker, self.batch_size
        )
        if length == 0 or cursor.good >= length:
            return
        shard_counts = {s.url: s.samples or 0 for s in self.shards}
        sizes = [shard_counts[u] for u in plan.shards]
        size = self.shuffle_buffer if self.shuffle else 0
        # Slots used before the checkpoint: the shuffle buffer's first ``done`` outputs, then any
        # replacement reads past the slice. They are passed over unread and never decoded.
        done = min(cursor.position, length)
        used = emitted_slots(length, size, seeded_rng(self.seed, plan.epoch, rank, worker, 0xB0F), done)
        used |= frozenset(range(length, cursor.position))
        raws = self._cyclic_raw(plan.shards, sizes, start, used)
        tagged = ((i, raw) for i, raw in enumerate(itertools.islice(raws, length)))
        rng = seeded_rng(self.seed, plan.epoch, rank, worker, 0xB0F)
        buffered = buffer_shuffle(tagged, size, rng)
        for i, raw in itertools.islice(buffered, done, None):
            cursor.position += 1
            sample = self._decode(raw, padding=i >= real, counts=counts)
            if sample is not None:
                cursor.good += 1
                counts["samples"] += 1
                counts["padded"] += sample.padding
                yield sample
        for _ in range(cursor.position - length):
            next(raws)  # replacement reads made before the checkpoint (bare: nothing read)
        # Skipped samples are replaced by reading on past the slice (cyclically), so this worker --
        # and so this rank -- still yields exactly its share of batches: a rank that ran short would
        # leave the others waiting in a collective forever.
        reads_since_good = 0
        while cursor.good < length:
            reads_since_good += 1
            if reads_since_good > plan.num_samples:
                raise RuntimeError(f"{self.name}: a whole pass over the data set without a good sample")
            cursor.position += 1
            sample = self._decode(next(raws), padding=True, counts=counts)
            if sample is not None:
                reads_since_good = 0
                cursor.good += 1
                counts["samples"] += 1
                counts["replaced"] += 1
                yield sample

    def _cyclic_raw(
        self, urls: Sequence[str], sizes: Sequence[int], start: int, unread: frozenset[int] = frozenset()
    ) -> Iterator[dict[str, Any] | LostSample]:
        """Raw samples from global position ``start`` on, wrapping around the epoch's shard sequence.

        The ``n``-th raw sample yielded is bare (no member read) when ``n`` is in ``unread``."""
        offsets = list(itertools.accumulate(sizes, initial=0))
        total = offsets[-1]
        pos = start % total
        k = bisect.bisect_right(offsets, pos) - 1
        skip = pos - offsets[k]
        n = 0  # raw samples yielded so far
        while True:
            url, expected = urls[k], sizes[k]
            got = skip
            read = _reader(unread, n - skip)
            try:
                for raw in iter_tar_samples(url, skip=skip, policy=self.policy, read=read):
                    if got >= expected:
                        break  # more samples than the manifest says: the rest belong to nobody
                    got += 1
                    n += 1
                    yield raw
                if got < expected:
                    raise ShardReadError(url, f"has {got} samples, the manifest says {expected}")
            except ShardReadError as err:
                if self.on_error == "raise":
                    raise
                # Every position this shard still owed is lost; report each so the slot accounting
                # (padding flags, replacements) stays exact.
                for _ in range(expected - got):
                    n += 1
                    yield LostSample(err)
            k, skip = (k + 1) % len(urls), 0

    def _resampled_samples(
        self, epoch: int, rank: int, worker: int, workers: int, counts: Counter[str], cursor: WorkerCursor
    ) -> Iterator[Sample]:
        quota = int(self.epoch_length or 0)
        batches = math.ceil(quota / self.batch_size)
        b0, b1 = worker * batches // workers, (worker + 1) * batches // workers
        length = max(0, min(b1 * self.batch_size, quota) - b0 * self.batch_size)
        if length == 0 or cursor.good >= length:
            return
        pick = seeded_rng(self.seed, epoch, rank, worker, 0x5E1)
        size = self.shuffle_buffer if self.shuffle else 0
        done = cursor.position  # outputs of the shuffle buffer used before the checkpoint
        unread = emitted_slots(None, size, seeded_rng(self.seed, epoch, rank, worker, 0xB0F), done)

        def raws() -> Iterator[dict[str, Any] | LostSample]:
            empty_in_a_row, n = 0, 0
            while True:
                url = self.shards[pick.randrange(len(self.shards))].url
                got_any = False
                try:
                    for raw in iter_tar_samples(url, policy=self.policy, read=_reader(unread, n)):
                        got_any = True
                        n += 1
                        yield raw
                except ShardReadError as err:
                    if self.on_error == "raise":
                        raise
                    n += 1
                    yield LostSample(err)  # one count per failed shard read: without counts, positions are unknown
                empty_in_a_row = 0 if got_any else empty_in_a_row + 1
                if empty_in_a_row > 10 * len(self.shards) + 100:
                    raise RuntimeError(f"{self.name}: drew {empty_in_a_row} shards in a row without a sample")

        buf_rng = seeded_rng(self.seed, epoch, rank, worker, 0xB0F)
        stream = buffer_shuffle(raws(), size, buf_rng)
        bad_in_a_row = 0
        for raw in itertools.islice(stream, done, None):
            cursor.position += 1
            sample = self._decode(raw, padding=False, counts=counts)
            if sample is None:
                bad_in_a_row += 1
                if bad_in_a_row >= 1000:
                    raise RuntimeError(f"{self.name}: 1000 bad samples in a row; see the skipped counts {dict(counts)}")
                continue
            bad_in_a_row = 0
            cursor.good += 1
            counts["samples"] += 1
            yield sample
            if cursor.good >= length:
                return


def _reason(err: ShardFormatError) -> str:
    return err.field


def _reader(unread: frozenset[int], base: int) -> Callable[[int], bool] | None:
    """``iter_tar_samples``'s ``read`` for a shard whose sample index 0 would be raw slot ``base``."""
    if not unread:
        return None
    return lambda index: base + index not in unread
