"""Safe, rank-balanced streaming of rewarddance shards.

This is the reader behind :class:`~rewarddance.data.datamodule.ShardDataModule`. It reads the tar
shards itself instead of going through WebDataset's pipeline, for three reasons:

* **Safety.** Only the ``json`` member and image members (see :mod:`rewarddance.data.schema`) are
  ever read, and they are parsed by :func:`~rewarddance.data.schema.decode_sample` (``json.loads``
  and PIL). Every other member -- ``.pyd``/``.pickle``/``.pth``/``.pt`` included -- is skipped
  without its bytes even being read, so a crafted shard cannot run code (WebDataset's default
  ``.decode()`` unpickles such members).
* **Speed.** Members a task does not use (reference images, or all visuals) are not read or decoded,
  and samples outside this worker's slice are skipped by seeking past them in the tar, not decoded.
* **Equal batches on every rank.** Unequal batch counts across DDP ranks deadlock training. In the
  default (finite) mode the shards of one epoch, shuffled with ``seed + epoch``, are laid end to end
  as one sequence of N samples; rank r reads a contiguous slice of exactly ``ceil(N / world)``
  (``even_out="pad"``: up to ``world - 1`` samples, at most one per rank, are read twice and marked
  ``Sample.padding``) or ``floor(N / world)`` samples (``even_out="drop"``: at most one per rank
  left out). A rank's slice is cut into batches and the batches are dealt to its DataLoader
  workers as contiguous runs, so every rank yields the same number of batches, with at most one
  short batch (its last). Batches are collated inside the workers.

Sample counts come from ``manifest.json`` next to the shards (written by
:class:`~rewarddance.data.writer.SampleWriter`). For shards without a manifest entry the reader makes
a **counting pass** before the first epoch: it walks the tar headers (seeking over member data for
local files; streaming the bytes for ``pipe:``/``http:`` URLs) and counts samples, decoding nothing.
Resampled mode (``resampled=True``, infinite training with an explicit ``epoch_length``) needs no
counts at all, which suits remote shards.

Bad samples raise :class:`~rewarddance.data.schema.ShardFormatError` (truncated or unreadable
archives: :class:`ShardReadError`) naming the shard, the sample key and the field. With
``on_error="skip"`` they are skipped, counted per field, replaced by reading on (so batch counts stay
equal across ranks) and reported at the end of the epoch by :class:`StreamLoader`.

Every checkpoint holds the stream's position (:meth:`StreamLoader.state_dict`), so a run resumed
mid-epoch continues with exactly the batches an uninterrupted run would have had (``docs/resume.md``).

The modules, lowest first: :mod:`~rewarddance.data.stream.shards` (which shards a source names, and
their counts), :mod:`~rewarddance.data.stream.tar_reader` (one shard's members),
:mod:`~rewarddance.data.stream.epoch` (an epoch's split over ranks and workers, the seeded shuffle),
:mod:`~rewarddance.data.stream.dataset` (:class:`ShardStream`), :mod:`~rewarddance.data.stream.loader`
(:class:`StreamLoader`, the position in checkpoints). Import the names below from this package.
"""

from rewarddance.data.stream.dataset import EvenOut, OnError, ShardStream
from rewarddance.data.stream.epoch import EpochPlan
from rewarddance.data.stream.loader import STATE_FORMAT, ResumeError, StreamLoader
from rewarddance.data.stream.shards import ShardInfo, ShardSource, resolve_shards
from rewarddance.data.stream.tar_reader import ARCHIVE_FIELD, ShardReadError, count_samples, iter_tar_samples

__all__ = [
    "ARCHIVE_FIELD",
    "STATE_FORMAT",
    "EpochPlan",
    "EvenOut",
    "OnError",
    "ResumeError",
    "ShardInfo",
    "ShardReadError",
    "ShardSource",
    "ShardStream",
    "StreamLoader",
    "count_samples",
    "iter_tar_samples",
    "resolve_shards",
]
