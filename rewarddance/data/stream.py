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
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import itertools
import json
import logging
import math
import os
import random
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rewarddance.data.schema import SCHEMA_VERSION, Sample, ShardFormatError, decode_sample, member_role
from rewarddance.data.writer import MANIFEST
from rewarddance.errors import BadFileError, UsageError

log = logging.getLogger(__name__)

ShardSource = str | os.PathLike | Sequence[str | os.PathLike]
"""A folder holding ``manifest.json`` (or ``*.tar`` files), a manifest file, a shard path or URL,
a brace pattern (``dir/shard-{000000..000009}.tar``), ``a.tar::b.tar``, or a list of any of these."""

OnError = Literal["raise", "skip"]
EvenOut = Literal["pad", "drop"]

ARCHIVE_FIELD = "archive"
"""Field/reason name used for errors in the tar container itself (truncated, corrupt, missing file)."""


class ShardReadError(ShardFormatError):
    """A shard whose tar container cannot be read: missing, truncated or corrupt."""

    def __init__(self, shard: str, problem: str, key: str = "") -> None:
        self.shard, self.key, self.field, self.problem = shard, key, ARCHIVE_FIELD, problem
        ValueError.__init__(self, f"shard {shard!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.shard, self.problem, self.key))


# --------------------------------------------------------------------------------------------
# Shard lists and counts


@dataclass(frozen=True)
class ShardInfo:
    """One shard and its sample count (``None`` until counted)."""

    url: str
    samples: int | None = None


def _is_local(url: str) -> bool:
    # Anything with a scheme (pipe:, http://, s3://, ...) goes through WebDataset's gopen.
    if url.startswith("file://"):
        return True
    return "://" not in url and not url.startswith("pipe:")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _read_manifest(path: Path, check: bool = True) -> list[ShardInfo]:
    rewrite = "rewrite the shards with this rewarddance (`python -m rewarddance data import` or `data shapes`)"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadFileError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); {rewrite}"
        ) from err
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise BadFileError(
            f"{path}, field 'schema_version': {version!r}, but this rewarddance reads shards of schema_version "
            f"{SCHEMA_VERSION}; {rewrite}, or read them with the rewarddance version that wrote them"
        )
    try:
        shards = [ShardInfo(str(path.parent / s["path"]), int(s["samples"])) for s in manifest["shards"]]
    except (KeyError, TypeError, ValueError) as err:
        raise BadFileError(
            f'{path}, field \'shards\': expected a list of {{"path", "samples"}} entries '
            f"({type(err).__name__}: {err}); {rewrite}"
        ) from err
    for shard in shards if check else ():
        if not os.path.exists(shard.url):
            raise FileNotFoundError(f"{path} lists {shard.url}, which does not exist")
    return shards


def _manifest_counts(folder: Path, cache: dict[Path, dict[str, int]]) -> dict[str, int]:
    """Counts by file name from ``folder/manifest.json``, for shards named one by one."""
    if folder not in cache:
        manifest = folder / MANIFEST
        shards = _read_manifest(manifest, check=False) if manifest.exists() else []
        cache[folder] = {os.path.basename(s.url): s.samples or 0 for s in shards}
    return cache[folder]


def resolve_shards(source: ShardSource) -> list[ShardInfo]:
    """Turn a source into a shard list, with counts from ``manifest.json`` where one covers a shard.

    Shards without a manifest entry get ``samples=None``; :func:`count_samples` (or
    :meth:`ShardStream.prepare`, which calls it) fills them in. Reads manifests only: cheap.
    """
    from webdataset.shardlists import expand_urls  # ``a::b`` lists and brace patterns, as WebDataset reads them

    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[ShardInfo] = []
    cache: dict[Path, dict[str, int]] = {}
    for item in items:
        item = os.fspath(item)
        path = Path(_local_path(item)) if _is_local(item) else None
        if path is not None and path.is_dir():
            if (path / MANIFEST).exists():
                out.extend(_read_manifest(path / MANIFEST))
            else:
                tars = sorted(str(p) for p in path.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
                if not tars:
                    raise FileNotFoundError(f"{path} has neither {MANIFEST} nor .tar shards")
                out.extend(ShardInfo(t) for t in tars)
            continue
        if path is not None and path.name == MANIFEST:
            out.extend(_read_manifest(path))
            continue
        for url in expand_urls(item):
            if _is_local(url):
                local = Path(_local_path(url))
                if not local.exists():
                    raise FileNotFoundError(f"shard {url!r} does not exist")
                count = _manifest_counts(local.parent, cache).get(local.name)
                out.append(ShardInfo(url, count))
            else:
                out.append(ShardInfo(url))
    if not out:
        raise UsageError(f"no shards in {source!r}: give a shard folder, file, pattern or a non-empty list of them")
    return out


# --------------------------------------------------------------------------------------------
# The tar reader

_READ, _PRESENT = 1, 2


class _MemberPolicy:
    """Which members of a sample to read. A class rather than a closure so it pickles to workers."""

    def __init__(self, load_visuals: bool = True, load_references: bool = True) -> None:
        self.load_visuals, self.load_references = load_visuals, load_references

    def __call__(self, member: str) -> int | None:
        if member == "json":
            return _READ
        parsed = member_role(member)
        if parsed is None:
            return None  # pickles, tensors, text, ...: never read, never decoded
        if not self.load_visuals or (parsed[0].startswith("ref") and not self.load_references):
            # decode_sample checks that the member exists but does not look at the bytes.
            return _PRESENT
        return _READ


class _NothingPolicy(_MemberPolicy):
    """Reads no member at all: the counting pass."""

    def __call__(self, member: str) -> int | None:
        return None


def _split_member(name: str) -> tuple[str, str] | None:
    # WebDataset's convention: the key is the path up to the first '.' of the base name.
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot <= base:
        return None
    return name[:dot], name[dot + 1 :].lower()


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular file (and the obsolete "contiguous file")


def _number(field: bytes) -> int:
    """A tar numeric header field: octal text, or GNU base-256 for large values."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return -((1 << (8 * len(field) - 8)) - value) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Prefixed:
    """A read-only stream with some already-read bytes put back in front (for format sniffing)."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out + (self.stream.read(n - len(out)) if len(out) < n else b"")

    def close(self) -> None:
        self.stream.close()


class _TarReader:
    """A minimal forward-only tar reader: ustar, pax (``x``/``g``) and GNU long names, plain or gzip.

    Python's ``tarfile`` builds a TarInfo per header (pax archives, as WebDataset's TarWriter
    writes, have two per member) and was most of the read time for small images; it also treats a
    missing or garbled header after the first member as a normal end. This reader checks every
    header's checksum and requires the end-of-archive block, so truncation and corruption are
    errors, and it seeks over the data of members it is not asked to read.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        if _is_local(url):
            self._file: Any = open(_local_path(url), "rb")  # noqa: SIM115 - closed in close()
            self._seekable = True
        else:
            from webdataset.gopen import gopen

            self._file = gopen(url, "rb")
            self._seekable = False
        self.stream: Any = self._file
        head = self._file.read(2)
        if head == b"\x1f\x8b":  # gzip: decompress on the fly, forward only
            self.stream = gzip.GzipFile(fileobj=_Prefixed(head, self._file), mode="rb")
            self._seekable = False
        elif self._seekable:
            self._file.seek(0)
        else:
            self.stream = _Prefixed(head, self._file)
        self._size = 0  # payload size of the current member
        self._left = 0  # bytes of the current member (payload + padding) not yet consumed

    def _read(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise ShardReadError(self.url, f"truncated: the archive ends inside {what}")
        return data

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        if self._seekable:
            self.stream.seek(n, os.SEEK_CUR)  # past the end is caught by the next header read
        else:
            while n > 0:
                chunk = self.stream.read(min(n, 1 << 20))
                if not chunk:
                    raise ShardReadError(self.url, "truncated: the archive ends inside a member")
                n -= len(chunk)

    def next(self) -> tuple[str, int, bool] | None:
        """Advance to the next member: (name, size, is a regular file), or None at the archive's end."""
        self._skip(self._left)
        self._left = 0
        pax: dict[str, str] = {}
        long_name: str | None = None
        while True:
            header = self.stream.read(_BLOCK)
            if len(header) < _BLOCK:
                raise ShardReadError(self.url, "truncated: no end-of-archive block")
            if header == _ZERO_BLOCK:
                return None
            stored = _number(header[148:156])
            unsigned = sum(header[:148]) + 256 + sum(header[156:])  # the checksum field counts as spaces
            if stored != unsigned and stored != unsigned - 2 * sum(b for b in header if b > 127):  # old signed sums
                raise ShardReadError(self.url, "corrupt: bad tar header checksum")
            size, kind = _number(header[124:136]), header[156:157]
            padded = -(-size // _BLOCK) * _BLOCK
            if kind in (b"x", b"g", b"L", b"K"):  # metadata about the next member (or global)
                data = self._read(padded, "a header")[:size]
                if kind == b"x":
                    pax = _pax_records(data)
                elif kind == b"L":
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            name = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and header[345] != 0:
                name = header[345:500].split(b"\0", 1)[0] + b"/" + name
            path = pax.get("path") or long_name or name.decode("utf-8", "surrogateescape")
            if "size" in pax:
                size = int(pax["size"])
                padded = -(-size // _BLOCK) * _BLOCK
            self._size, self._left = size, padded
            return path, size, kind in _FILE_TYPES

    def read(self) -> bytes:
        """The current member's payload (once)."""
        data = self._read(self._size, "a member")
        self._left -= self._size
        self._size = 0
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a pipe closed before its command finished writing
            self.stream.close()
            self._file.close()


_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError)


def iter_tar_samples(
    url: str,
    *,
    skip: int = 0,
    policy: Callable[[str], int | None] | None = None,
    read: Callable[[int], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the raw samples of one shard as ``{"__key__", "__url__", member: bytes}`` dicts.

    Members are grouped into samples by key, as WebDataset does. Only members that ``policy``
    asks for are read (``_MemberPolicy``: json and images); others are never read. The first
    ``skip`` samples are passed over without reading any member data. Samples whose index in the
    shard ``read`` rejects are yielded bare (``__key__`` and ``__url__`` only), their members
    passed over unread: a resumed stream keeps their places without paying for them. A sample is yielded only
    once the next header (or the end-of-archive block) has been read, so a truncated shard never
    yields a half-written last sample.

    Raises:
        ShardReadError: the shard cannot be opened, or is truncated or corrupt.
    """
    policy = policy or _MemberPolicy()
    try:
        tar = _TarReader(url)
    except _READ_ERRORS as err:
        raise ShardReadError(url, f"cannot open ({type(err).__name__}: {err})") from err
    index, last_key = -1, None
    current: dict[str, Any] | None = None
    bare = False
    try:
        while True:
            try:
                member = tar.next()
            except ShardReadError as err:
                raise ShardReadError(url, f"{err.problem} (after sample {last_key!r})", str(last_key or "")) from err
            except _READ_ERRORS as err:
                raise ShardReadError(
                    url, f"unreadable after sample {last_key!r} ({type(err).__name__}: {err})"
                ) from err
            if member is None:
                break
            name, _, is_file = member
            split = _split_member(name) if is_file else None
            if split is None:
                continue
            key, suffix = split
            if key != last_key:
                if current is not None:
                    yield current
                index, last_key = index + 1, key
                current = {"__key__": key, "__url__": url} if index >= skip else None
                bare = current is not None and read is not None and not read(index)
            if current is None or bare:
                continue
            want = policy(suffix)
            if want == _READ:
                try:
                    current[suffix] = tar.read()
                except ShardReadError as err:
                    raise ShardReadError(url, f"{err.problem} (in sample {key!r})", key) from err
                except _READ_ERRORS as err:
                    raise ShardReadError(url, f"unreadable in sample {key!r} ({type(err).__name__}: {err})") from err
            elif want == _PRESENT:
                current[suffix] = b""
        if current is not None:
            yield current
    finally:
        tar.close()


def count_samples(url: str) -> int:
    """Count the samples in one shard by walking its tar headers (no member is decoded)."""
    return sum(1 for _ in iter_tar_samples(url, policy=_NothingPolicy()))


# --------------------------------------------------------------------------------------------
# Planning an epoch


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


def _worker_range(
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


class _Carried(NamedTuple):
    """A batch on its way from a worker, with the counts that worker gathered since its last batch
    and the worker's position once this batch was cut (what a resumed run must skip to continue after it)."""

    batch: Any
    counts: dict[str, int]
    worker: int
    position: int
    good: int


class _Cursor:
    """A worker's position in its epoch: raw sample slots consumed (good, bad or replaced) and samples yielded.

    Everything else about the stream (shard order, slice, shuffle buffer draws) is a pure function of
    (seed, epoch, rank, worker), so these two numbers are the whole per-worker state of an epoch.
    """

    def __init__(self, position: int = 0, good: int = 0) -> None:
        self.position, self.good = position, good


class _Resume(NamedTuple):
    """Where a restored epoch continues: (position, good) per worker's share, and whose batch is next."""

    epoch: int
    workers: list[tuple[int, int]]
    next: int
    """The share whose batch comes next. The DataLoader takes batches from its workers in turn,
    starting with worker 0 at every ``iter()``; so a resumed iteration gives worker ``i`` the share
    ``(next + i) % workers`` to keep the uninterrupted run's order."""


def _emitted(items: int | None, size: int, rng: random.Random, count: int) -> frozenset[int]:
    """Slots (input indices) among the first ``count`` outputs of :func:`_buffer_shuffle` over ``items``
    inputs (``None``: endless). Its draws depend only on the number of items, never on their content,
    so a resumed stream learns which slots it already used without reading any of them."""
    if count == 0:
        return frozenset()
    inputs = iter(range(items)) if items is not None else itertools.count()
    return frozenset(itertools.islice(_buffer_shuffle(inputs, size, rng), count))


class _Failure:
    """A bad-data error raised in a worker, re-raised as itself by :class:`StreamLoader`.

    torch re-raises worker exceptions as a RuntimeError around the traceback text; sending the
    error as data keeps its type and its ``shard``/``key``/``field`` attributes.
    """

    def __init__(self, error: ShardFormatError) -> None:
        self.error = error


class _Lost(NamedTuple):
    """A sample position that could not be read (truncated, corrupt or missing shard)."""

    error: ShardReadError


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
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


def _rng(*parts: int) -> random.Random:
    # Seeded from the whole tuple (seed, epoch, rank, worker, purpose) so streams never collide. A str
    # seed is hashed with SHA-512, independent of PYTHONHASHSEED: the same in every process.
    return random.Random("/".join(map(str, parts)))


# --------------------------------------------------------------------------------------------
# The dataset


class ShardStream(IterableDataset):
    """Decoded, batched samples from shards; splits by rank and DataLoader worker itself.

    Iterating yields batches: ``collate_fn(list_of_samples)``, or the list itself. Use it through
    :class:`StreamLoader`, which sets the epoch, collects skip counts from the workers and reports
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
        self.policy = _MemberPolicy(load_visuals, load_references)
        self.rank, self.world_size, self.name = rank, world_size, name
        # The epoch lives in shared memory so persistent DataLoader workers (which keep their own
        # copy of the dataset between epochs) still see set_epoch() calls made in the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._carry = False  # set by StreamLoader: yield _Carried batches instead of bare ones
        self._resume: _Resume | None = None  # set by StreamLoader: where each worker continues
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

        :class:`StreamLoader` calls this before starting workers, so the counting pass (shards
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
            _rng(self.seed, epoch, 0x5A4D).shuffle(order)
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
        epoch, resume = self.epoch, self._resume
        cursor = _Cursor()
        if resume is not None and resume.epoch == epoch:
            worker = (worker + resume.next) % workers
            cursor = _Cursor(*resume.workers[worker])
        return self._iter(epoch, worker, workers, cursor)

    def _iter(self, epoch: int, worker: int, workers: int, cursor: _Cursor) -> Iterator[Any]:
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
                if self._carry:
                    delta = {k: v - sent[k] for k, v in counts.items() if v != sent[k]}
                    sent = Counter(counts)
                    yield _Carried(out, delta, worker, cursor.position, cursor.good)
                else:
                    yield out
        except ShardFormatError as err:
            if not self._carry:
                raise
            yield _Failure(err)
        finally:
            self.counts.update(counts)

    def _batches(self, samples: Iterator[Sample]) -> Iterator[list[Sample]]:
        while batch := list(itertools.islice(samples, self.batch_size)):
            yield batch

    def _decode(self, raw: dict[str, Any] | _Lost, padding: bool, counts: Counter[str]) -> Sample | None:
        """Decode one raw sample; None (counted) for a bad one when skipping."""
        try:
            if isinstance(raw, _Lost):
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
        self, plan: EpochPlan, rank: int, worker: int, workers: int, counts: Counter[str], cursor: _Cursor
    ) -> Iterator[Sample]:
        """This worker's samples; a ``cursor`` restored from a checkpoint continues after its position."""
        start, length, real = _worker_range(
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
        used = _emitted(length, size, _rng(self.seed, plan.epoch, rank, worker, 0xB0F), done)
        used |= frozenset(range(length, cursor.position))
        raws = self._cyclic_raw(plan.shards, sizes, start, used)
        tagged = ((i, raw) for i, raw in enumerate(itertools.islice(raws, length)))
        rng = _rng(self.seed, plan.epoch, rank, worker, 0xB0F)
        buffered = _buffer_shuffle(tagged, size, rng)
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
    ) -> Iterator[dict[str, Any] | _Lost]:
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
                    yield _Lost(err)
            k, skip = (k + 1) % len(urls), 0

    def _resampled_samples(
        self, epoch: int, rank: int, worker: int, workers: int, counts: Counter[str], cursor: _Cursor
    ) -> Iterator[Sample]:
        quota = int(self.epoch_length or 0)
        batches = math.ceil(quota / self.batch_size)
        b0, b1 = worker * batches // workers, (worker + 1) * batches // workers
        length = max(0, min(b1 * self.batch_size, quota) - b0 * self.batch_size)
        if length == 0 or cursor.good >= length:
            return
        pick = _rng(self.seed, epoch, rank, worker, 0x5E1)
        size = self.shuffle_buffer if self.shuffle else 0
        done = cursor.position  # outputs of the shuffle buffer used before the checkpoint
        unread = _emitted(None, size, _rng(self.seed, epoch, rank, worker, 0xB0F), done)

        def raws() -> Iterator[dict[str, Any] | _Lost]:
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
                    yield _Lost(err)  # one count per failed shard read: without counts, positions are unknown
                empty_in_a_row = 0 if got_any else empty_in_a_row + 1
                if empty_in_a_row > 10 * len(self.shards) + 100:
                    raise RuntimeError(f"{self.name}: drew {empty_in_a_row} shards in a row without a sample")

        buf_rng = _rng(self.seed, epoch, rank, worker, 0xB0F)
        stream = _buffer_shuffle(raws(), size, buf_rng)
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


# --------------------------------------------------------------------------------------------
# The loader


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
        dataset._carry = True
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
            stream._resume = _Resume(epoch, positions, turn)  # type: ignore[arg-type]
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
            stream._resume = None  # one time only
        reported = False
        for item in iterator:
            if isinstance(item, _Failure):
                raise item.error
            if isinstance(item, _Carried):
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
