"""Write :class:`~rewarddance.data.schema.Sample` objects into WebDataset tar shards.

Next to the shards the writer leaves ``manifest.json``: the schema version and each shard's
sample count. Readers use the counts to give every rank and worker the same number of batches
without a counting pass over the data.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import webdataset as wds

from rewarddance.data.schema import SCHEMA_VERSION, Sample, encode_sample

MANIFEST = "manifest.json"


class SampleWriter:
    """Write samples to ``<out>/<prefix>-000000.tar``, ``-000001.tar``, ... and a manifest.

    One writer per folder: a folder holds one split (``data/shapes/train/``, ...).

    Args:
        out: Output folder (created if missing).
        prefix: Shard file name prefix, e.g. the split name.
        max_count: Samples per shard.
        image_ext: Encoding of image members (png is lossless; jpg/webp are smaller).
        info: Extra fields stored in the manifest (e.g. the command and seed that made it).
        compress: Write gzip-compressed ``.tar.gz`` shards. Worth it for small images, where tar
            headers and JSON are a large part of each sample (bundled data: ~3x smaller).

    Use as a context manager; counts by kind and label are available as :attr:`counts`.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        prefix: str = "shard",
        max_count: int = 1000,
        image_ext: str = "png",
        info: dict[str, Any] | None = None,
        compress: bool = False,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.image_ext = prefix, max_count, image_ext
        self.info = info or {}
        self.compress = compress
        self.counts: Counter[str] = Counter()
        self._shards: list[dict[str, Any]] = []
        self._tar: wds.TarWriter | None = None
        self._keys: set[str] = set()

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.prefix}-{len(self._shards):06d}.tar" + (".gz" if self.compress else "")
        # A fixed mtime/owner keeps the bytes identical for identical samples (reproducible data);
        # An integer mtime and GNU headers take one 512-byte block per member (a float mtime adds a
        # two-block pax header to every member).
        path = self.out / name
        self._stream = gzip.GzipFile(path, "wb", mtime=0) if self.compress else open(path, "wb")  # noqa: SIM115
        self._tar = wds.TarWriter(self._stream, mtime=0, user="rewarddance", group="rewarddance", format="GNU_FORMAT")
        self._shards.append({"path": name, "samples": 0})

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._stream.close()
            self._tar = None

    def write(self, sample: Sample) -> None:
        if sample.key in self._keys:
            raise ValueError(f"duplicate sample key {sample.key!r} in {self.out}")
        self._keys.add(sample.key)
        record = encode_sample(sample, self.image_ext)
        if self._tar is None or self._shards[-1]["samples"] >= self.max_count:
            self._open_next()
        assert self._tar is not None
        self._tar.write(record)
        self._shards[-1]["samples"] += 1
        self.counts[f"kind={sample.kind}"] += 1
        if sample.label is not None:
            self.counts[f"label={sample.label}"] += 1
        if sample.answer is not None:
            self.counts[f"answer={sample.answer}"] += 1

    def next_shard(self) -> None:
        """End the current shard early; the next :meth:`write` starts a new one (e.g. uneven shard sizes)."""
        self._close_current()

    @property
    def total(self) -> int:
        return sum(s["samples"] for s in self._shards)

    @property
    def shard_paths(self) -> list[Path]:
        return [self.out / s["path"] for s in self._shards]

    def close(self) -> Path:
        """Finish the last shard and write the manifest; returns the manifest path."""
        self._close_current()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "prefix": self.prefix,
            "total": self.total,
            "shards": self._shards,
            "counts": dict(sorted(self.counts.items())),
            **self.info,
        }
        path = self.out / MANIFEST
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        return path

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
