"""Reading the members of one tar shard safely and fast: only ``json`` and image members, seeking over the rest."""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from rewarddance.data.schema import ShardFormatError, member_role
from rewarddance.data.stream.shards import is_local_url, local_path

ARCHIVE_FIELD = "archive"
"""Field/reason name used for errors in the tar container itself (truncated, corrupt, missing file)."""


class ShardReadError(ShardFormatError):
    """A shard whose tar container cannot be read: missing, truncated or corrupt."""

    def __init__(self, shard: str, problem: str, key: str = "") -> None:
        self.shard, self.key, self.field, self.problem = shard, key, ARCHIVE_FIELD, problem
        ValueError.__init__(self, f"shard {shard!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.shard, self.problem, self.key))


_READ, _PRESENT = 1, 2


class MemberPolicy:
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


class _NothingPolicy(MemberPolicy):
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
        if is_local_url(url):
            self._file: Any = open(local_path(url), "rb")  # noqa: SIM115 - closed in close()
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
    asks for are read (``MemberPolicy``: json and images); others are never read. The first
    ``skip`` samples are passed over without reading any member data. Samples whose index in the
    shard ``read`` rejects are yielded bare (``__key__`` and ``__url__`` only), their members
    passed over unread: a resumed stream keeps their places without paying for them. A sample is yielded only
    once the next header (or the end-of-archive block) has been read, so a truncated shard never
    yields a half-written last sample.

    Raises:
        ShardReadError: the shard cannot be opened, or is truncated or corrupt.
    """
    policy = policy or MemberPolicy()
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
