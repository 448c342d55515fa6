"""Which shards a source names, and how many samples each holds (from ``manifest.json`` where one covers it)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rewarddance.data.schema import SCHEMA_VERSION
from rewarddance.data.writer import MANIFEST
from rewarddance.errors import BadFileError, UsageError

ShardSource = str | os.PathLike | Sequence[str | os.PathLike]
"""A folder holding ``manifest.json`` (or ``*.tar`` files), a manifest file, a shard path or URL,
a brace pattern (``dir/shard-{000000..000009}.tar``), ``a.tar::b.tar``, or a list of any of these."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard and its sample count (``None`` until counted)."""

    url: str
    samples: int | None = None


def is_local_url(url: str) -> bool:
    # Anything with a scheme (pipe:, http://, s3://, ...) goes through WebDataset's gopen.
    if url.startswith("file://"):
        return True
    return "://" not in url and not url.startswith("pipe:")


def local_path(url: str) -> str:
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

    Shards without a manifest entry get ``samples=None``; :func:`~rewarddance.data.stream.tar_reader.count_samples`
    (or :meth:`ShardStream.prepare <rewarddance.data.stream.dataset.ShardStream.prepare>`, which calls it) fills them in. Reads manifests only: cheap.
    """
    from webdataset.shardlists import expand_urls  # ``a::b`` lists and brace patterns, as WebDataset reads them

    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[ShardInfo] = []
    cache: dict[Path, dict[str, int]] = {}
    for item in items:
        item = os.fspath(item)
        path = Path(local_path(item)) if is_local_url(item) else None
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
            if is_local_url(url):
                local = Path(local_path(url))
                if not local.exists():
                    raise FileNotFoundError(f"shard {url!r} does not exist")
                count = _manifest_counts(local.parent, cache).get(local.name)
                out.append(ShardInfo(url, count))
            else:
                out.append(ShardInfo(url))
    if not out:
        raise UsageError(f"no shards in {source!r}: give a shard folder, file, pattern or a non-empty list of them")
    return out
