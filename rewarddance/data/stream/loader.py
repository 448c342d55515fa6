"""The DataLoader of a shard stream: sets each epoch, saves and restores the stream's position, reports skips."""

from __future__ import annotations

import json
import logging
import os
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from rewarddance.data.stream.dataset import CarriedBatch, ResumePoint, ShardStream, WorkerFailure
from rewarddance.errors import UsageError

log = logging.getLogger(__name__)


def _identity(batch: Any) -> Any:
    return batch


class ResumeError(UsageError):
    """A checkpoint's data position cannot be continued exactly with the current settings.

    An expected error (:func:`rewarddance.errors.is_expected`): the command line prints its message, which says
    what changed and how to resume, without a traceback."""


STATE_FORMAT = 1
"""Version of :meth:`StreamLoader.state_dict`'s layout."""


class StreamLoader(DataLoader):
    """A DataLoader for :class:`ShardStream` that keeps the epoch, its position, and reports skipped samples.

    At each ``iter()`` it sets the dataset's epoch -- from ``epoch_fn`` (the DataModule passes the
    trainer's epoch), else the last :meth:`set_epoch`, else a count of previous iterations -- so
    shard order and shuffling change every epoch, also in worker processes. Batches arrive
    already collated by the workers; their skip counts are summed here, and when an epoch's
    iteration ends :attr:`last_report` is set and a summary line is logged (a warning when bad
    samples were skipped). Counts are per rank: each rank reports its own.

    **Exact resume.** The loader implements Lightning's stateful-dataloader protocol
    (:meth:`state_dict` / :meth:`load_state_dict`, saved in every checkpoint under the fit loop's
    ``combined_loader``). A stream's epoch is a pure function of (seed, epoch, rank, worker), so
    its position is small: per DataLoader worker, the raw sample slots consumed and the samples
    yielded, as of the last batch handed out (the workers send them with each batch). A restored
    loader continues each worker right after that point: the slots already used are passed over
    without reading their members or decoding them (the shuffle buffer's draws do not depend on
    the samples, so which slots were used is recomputed, not stored). Under DDP every rank's
    position is gathered into the one checkpoint (:meth:`state_dict` is then a collective, as
    Lightning's checkpoint saving already is). A position that cannot be continued exactly --
    saved with another number of workers or ranks, batch size, seed, shuffle settings or shard
    list -- is refused with :class:`ResumeError`; resuming mid-epoch with no saved position
    (a checkpoint from before positions were saved) warns that the epoch restarts on other data.

    Args:
        dataset: The stream.
        epoch_fn: Returns the epoch to use at each new iteration, or ``None`` to fall back.
        progress_fn: Returns how many batches of the epoch about to be iterated the trainer has
            already trained on (non-zero only when resuming mid-epoch), or ``None`` if unknown;
            the restored position must match it.
        name: Name in log lines; defaults to the stream's name.
        **kwargs: Passed to :class:`torch.utils.data.DataLoader` (``num_workers``,
            ``pin_memory``, ...); ``batch_size`` and ``collate_fn`` are fixed (batching happens in
            the stream).
    """

    def __init__(
        self,
        dataset: ShardStream,
        *,
        epoch_fn: Callable[[], int | None] | None = None,
        progress_fn: Callable[[], int | None] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Lightning may re-create the loader from its attributes (e.g. for predict): accept and drop these.
        kwargs.pop("batch_size", None)
        kwargs.pop("collate_fn", None)
        super().__init__(dataset, batch_size=None, collate_fn=_identity, **kwargs)
        dataset.carry = True
        self.epoch_fn, self.progress_fn = epoch_fn, progress_fn
        self.name = name or dataset.name
        self._set_epoch: int | None = None
        self._iterations = 0
        self._position: dict[str, Any] = {"epoch": -1, "batches": 0, "workers": [], "next": 0, "counts": {}}
        self._loaded: list[dict[str, Any]] | None = None  # restored positions of all ranks, until used
        self.last_report: dict[str, Any] | None = None
        """Counts of the last completed epoch (see :meth:`_report`)."""
        self.totals: Counter[str] = Counter()
        """Counts summed over all epochs iterated so far by this process (also partial ones)."""

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iterations (when no ``epoch_fn`` gives one)."""
        self._set_epoch = int(epoch)

    def _next_epoch(self) -> int:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._set_epoch if self._set_epoch is not None else self._iterations
        return int(epoch)

    # -- the stateful-dataloader protocol ------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        """What a position depends on besides the epoch: a position is only valid under the same values."""
        stream: ShardStream = self.dataset  # type: ignore[assignment]
        shards = json.dumps([[os.path.basename(s.url), s.samples] for s in stream.shards])
        return {
            "num_workers": max(1, self.num_workers),
            "world_size": stream.world_size,
            "batch_size": stream.batch_size,
            "seed": stream.seed,
            "shuffle": stream.shuffle,
            "shuffle_buffer": stream.shuffle_buffer if stream.shuffle else 0,
            "resampled": stream.resampled,
            "epoch_length": stream.epoch_length,
            "even_out": stream.even_out,
            "shards": f"{len(stream.shards)} shards, crc32 {zlib.crc32(shards.encode()):08x}",
        }

    def state_dict(self) -> dict[str, Any]:
        """This loader's position (every rank's, under DDP) as plain data, for the checkpoint.

        Under an initialised process group with more than one rank this is a collective: every rank
        must call it (Lightning does, in ``trainer.save_checkpoint``)."""
        stream: ShardStream = self.dataset  # type: ignore[assignment]
        if self._loaded is not None:  # restored but not iterated yet: the restored position still holds
            mine = next((s for s in self._loaded if s.get("rank") == stream.rank), None)
        else:
            mine = {"name": self.name, "rank": stream.rank, **self._fingerprint(), **self._position}
        ranks = [mine]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        return {"format": STATE_FORMAT, "kind": "shards", "ranks": [r for r in ranks if r is not None]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` at the next ``iter()`` (checked against the settings then)."""
        if state.get("format") != STATE_FORMAT or state.get("kind") != "shards":
            raise ResumeError(
                f"{self.name}: the checkpoint's data position is a {state.get('kind', 'unknown')!r} loader's in "
                f"format {state.get('format')!r}; this loader streams shards and reads format {STATE_FORMAT}. "
                "Resume with the training data the checkpoint was saved with."
            )
        self._loaded = state["ranks"]

    def _restore(self, stream: ShardStream, epoch: int) -> dict[str, Any] | None:
        """The restored position to continue ``epoch`` from, or None to start it afresh."""
        loaded, self._loaded = self._loaded, None
        done = self.progress_fn() if self.progress_fn is not None else None
        mine = next((s for s in loaded or () if s.get("rank") == stream.rank), None)
        if done is None:  # no trainer to ask: trust the restored position
            done = mine["batches"] if mine is not None and mine.get("epoch") == epoch else 0
        if done == 0:
            return None
        where = f"{self.name}: resuming at batch {done} of epoch {epoch}"
        if mine is None:
            message = (
                f"{where}, but the checkpoint holds no data position for rank {stream.rank} (saved by an older "
                "rewarddance, or by a loader without state). The rest of this epoch restarts from its first "
                "batches: some samples are seen twice and others not at all. For exact data, resume from an "
                "end-of-epoch checkpoint."
            )
            log.warning(message)
            warnings.warn(message, stacklevel=2)
            return None
        now = self._fingerprint()
        changed = {k: (mine.get(k), v) for k, v in now.items() if mine.get(k) != v}
        if changed:
            detail = "; ".join(f"{k} was {old!r}, is {new!r}" for k, (old, new) in changed.items())
            raise ResumeError(
                f"{where}, but the data position was saved under other settings ({detail}), so the rest of the "
                "epoch would be other data. Resume with the same settings (num_workers, devices, batch size, "
                "seed, shuffle, shards), or from an end-of-epoch checkpoint."
            )
        if mine.get("epoch") != epoch or mine.get("batches") != done:
            raise ResumeError(
                f"{where}, but the checkpoint's data position is batch {mine.get('batches')} of epoch "
                f"{mine.get('epoch')}: the checkpoint is inconsistent."
            )
        return mine

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        stream: ShardStream = self.dataset  # type: ignore[assignment]
        epoch = self._next_epoch()
        stream.set_epoch(epoch)
        stream.prepare()
        self._iterations += 1
        expected = len(stream)
        restored = self._restore(stream, epoch)
        workers = max(1, self.num_workers)
        if restored is not None:
            positions = [tuple(w) for w in restored["workers"]]
            batches, counts, turn = int(restored["batches"]), Counter(restored["counts"]), int(restored["next"])
            stream.resume_point = ResumePoint(epoch, positions, turn)  # type: ignore[arg-type]
        else:
            positions, batches, counts, turn = [(0, 0)] * workers, 0, Counter(), 0

        def position() -> dict[str, Any]:
            return {
                "epoch": epoch,
                "batches": batches,
                "workers": list(positions),
                "next": turn,
                "counts": dict(counts),
            }

        self._position = position()
        try:
            iterator = super().__iter__()  # workers start here, each with a copy of the resume point
        finally:
            stream.resume_point = None  # one time only
        reported = False
        for item in iterator:
            if isinstance(item, WorkerFailure):
                raise item.error
            if isinstance(item, CarriedBatch):
                counts.update(item.counts)
                self.totals.update(item.counts)
                positions[item.worker] = (item.position, item.good)
                turn = (item.worker + 1) % workers
                item = item.batch
            batches += 1
            self._position = position()
            if batches == expected:
                # Report before handing out the last batch: Lightning stops after len(loader) batches
                # without asking for more, so code after the loop would never run. Every worker's
                # counts have arrived by now (each worker's last batch carries its final counts).
                self.last_report, reported = self._report(stream, epoch, batches, counts), True
            yield item
        if not reported:
            self.last_report = self._report(stream, epoch, batches, counts)

    def _report(self, stream: ShardStream, epoch: int, batches: int, counts: Counter[str]) -> dict[str, Any]:
        skipped = {k.split("/", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("skipped/")}
        report: dict[str, Any] = {
            "name": self.name,
            "epoch": epoch,
            "rank": stream.rank,
            "batches": batches,
            "samples": counts["samples"],
            "skipped": skipped,
            "padded": counts["padded"],
            "replaced": counts["replaced"],
        }
        if not stream.resampled:
            plan = stream.plan(epoch)
            report.update(num_samples=plan.num_samples, padded_all_ranks=plan.padded, dropped_all_ranks=plan.dropped)
        line = (
            f"{self.name} epoch {epoch} rank {stream.rank}: {batches} batches, {report['samples']} samples"
            f", {report['padded']} padded, {report['replaced']} repeats replacing skipped samples"
        )
        if not stream.resampled:
            line += f" (all ranks: {report['padded_all_ranks']} padded, {report['dropped_all_ranks']} dropped)"
        if skipped:
            detail = ", ".join(f"{k}={v}" for k, v in skipped.items())
            log.warning("%s; SKIPPED %d bad samples by field: %s", line, sum(skipped.values()), detail)
        else:
            log.info("%s", line)
        return report
