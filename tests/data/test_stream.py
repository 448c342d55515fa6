"""The shard reader: sources and counts, safe decoding, bad input, shuffling, rank/worker balance."""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import tarfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rewarddance.data.datamodule import ShardDataModule
from rewarddance.data.schema import ShardFormatError
from rewarddance.data.stream import (
    ShardInfo,
    ShardReadError,
    ShardStream,
    StreamLoader,
    count_samples,
    iter_tar_samples,
    resolve_shards,
)
from rewarddance.data.stream import dataset as stream_dataset
from rewarddance.data.stream.tar_reader import MemberPolicy

try:  # tests/ is a package here; the fallback keeps the file runnable if it stops being one
    from .streamkit import batch_keys, good_record, with_meta, write_dataset, write_records
except ImportError:
    from streamkit import batch_keys, good_record, with_meta, write_dataset, write_records  # type: ignore[no-redef]

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("uneven")
    return folder, write_dataset(folder, [7, 5, 9])


def read_all(loader_or_stream) -> list[str]:
    return [key for batch in loader_or_stream for key in batch_keys(batch)]


# --------------------------------------------------------------------------------------------
# Sources and counts


def test_sources_resolve_to_the_same_shards_with_counts(uneven):
    folder, _ = uneven
    tars = sorted(str(p) for p in folder.glob("*.tar"))
    by_folder = resolve_shards(folder)
    assert [s.samples for s in by_folder] == [7, 5, 9]
    assert resolve_shards(folder / "manifest.json") == by_folder
    assert resolve_shards(tars) == by_folder  # counts found in the manifest next to the files
    assert resolve_shards(str(folder / "shard-{000000..000002}.tar")) == by_folder
    assert resolve_shards(f"{tars[0]}::{tars[1]}") == by_folder[:2]
    with pytest.raises(FileNotFoundError, match="shard-000007"):
        resolve_shards(str(folder / "shard-000007.tar"))


def test_counting_pass_without_manifest_reads_headers_only(uneven, tmp_path):
    folder, keys = uneven
    for tar in folder.glob("*.tar"):
        os.link(tar, tmp_path / tar.name)
    shards = resolve_shards(tmp_path)
    assert [s.samples for s in shards] == [None, None, None]
    assert [count_samples(s.url) for s in shards] == [7, 5, 9]
    stream = ShardStream(tmp_path, batch_size=4)
    assert stream.num_samples == 21 and len(stream) == 6
    assert sorted(read_all(stream)) == sorted(keys)


def test_pipe_urls_are_read_and_counted(uneven):
    folder, keys = uneven
    urls = [f"pipe:cat {p}" for p in sorted(folder.glob("*.tar"))]
    assert [s.samples for s in resolve_shards(urls)] == [None, None, None]
    stream = ShardStream(urls, batch_size=5)
    assert len(stream) == 5
    assert sorted(read_all(StreamLoader(stream, num_workers=2))) == sorted(keys)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("pipe", [False, True])
def test_tar_reader_reads_common_tar_flavours(tmp_path, fmt, compress, pipe):
    long_dir = "d" * 60 + "/" + "e" * 60  # needs the ustar prefix field, a GNU long name or a pax path
    members = {f"{long_dir}/k1.json": b"{}", f"{long_dir}/k1.first.PNG": b"img", "k2.json": b"[]", "k2.x.pyd": b"no"}
    path = tmp_path / ("s.tar.gz" if compress else "s.tar")
    with tarfile.open(path, "w:gz" if compress else "w", format=fmt) as tar:
        tar.addfile(tarfile.TarInfo("somedir"), None)  # a non-file member: ignored
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    url = f"pipe:cat {path}" if pipe else str(path)
    got = [{k: v for k, v in raw.items() if k != "__url__"} for raw in iter_tar_samples(url)]
    assert got == [
        {"__key__": f"{long_dir}/k1", "json": b"{}", "first.png": b"img"},  # suffixes lower-cased, as WebDataset
        {"__key__": "k2", "json": b"[]"},  # the .pyd member is not read
    ]
    assert count_samples(url) == 2


def test_corrupt_tar_header_is_an_error_naming_the_shard(tmp_path):
    write_records(tmp_path, [[good_record(f"c{j}", j) for j in range(4)]])
    path = tmp_path / "raw-000000.tar"
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[6].offset  # the header of c2.json
    data = bytearray(path.read_bytes())
    data[offset : offset + 20] = b"garbage garbage garb"
    path.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match=r"raw-000000\.tar.*corrupt.*after sample 'c1'"):
        list(iter_tar_samples(str(path)))
    stream = ShardStream(tmp_path, batch_size=4, on_error="skip")
    keys = read_all(stream)
    # c1 may be incomplete (its end is not known), so only c0 survives; repeats of it fill the batch.
    assert keys == ["c0"] * 4 and stream.counts["skipped/archive"] >= 3 and stream.counts["replaced"] == 3


# --------------------------------------------------------------------------------------------
# Safe decoding


class _Payload:
    """Unpickling this runs ``open(path, "w")``: creates the marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    pickle.loads(payload)  # the payload is live: plain unpickling creates the marker
    assert marker.exists()
    marker.unlink()
    records = []
    for i in range(6):
        record = good_record(f"s{i}", i)
        record.update({"pyd": payload, "pickle": payload, "pth": payload, "pt": payload, "first.pyd": payload})
        records.append(record)
    write_records(tmp_path / "evil", [records[:3], records[3:]])
    dm = ShardDataModule(train=str(tmp_path / "evil"), batch_size=2, num_workers=2, shuffle_buffer=2)
    dm.setup("fit")
    keys = read_all(dm.train_dataloader())
    assert sorted(keys) == [f"s{i}" for i in range(6)]
    assert not marker.exists()
    # Not even read: the raw samples carry only json and image members.
    raw = next(iter_tar_samples(str(tmp_path / "evil" / "raw-000000.tar")))
    assert set(raw) == {"__key__", "__url__", "json", "first.png", "second.png"}


# --------------------------------------------------------------------------------------------
# Bad input, raised or skipped


def _corrupt_image(r):
    return {**r, "first.png": b"\x89PNG\r\n\x1a\n not really a png"}


def _missing_member(r):
    return {k: v for k, v in r.items() if k != "second.png"}


BAD = {
    "corrupt_image": (_corrupt_image, "first.png"),
    "missing_member": (_missing_member, "second"),
    "bad_label": (lambda r: with_meta(r, label="maybe"), "label"),
    "empty_prompt": (lambda r: with_meta(r, prompt="  "), "prompt"),
}


def _bad_shards(folder: Path, case: str) -> tuple[list[str], str]:
    """Two shards of 5; sample b1x002 is bad. Returns the good keys and the bad key."""
    make, _ = BAD[case]
    shards = [[good_record(f"b{s}x{j:03d}", 5 * s + j) for j in range(5)] for s in range(2)]
    shards[1][2] = make(shards[1][2])
    write_records(folder, shards)
    keys = [r["__key__"] for shard in shards for r in shard]
    return [k for k in keys if k != "b1x002"], "b1x002"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_raises_naming_shard_key_and_field(tmp_path, case):
    _bad_shards(tmp_path, case)
    loader = StreamLoader(ShardStream(tmp_path, batch_size=2), num_workers=2)
    with pytest.raises(ShardFormatError) as info:
        read_all(loader)
    err = info.value  # the worker's error arrives as itself, attributes and all
    assert (Path(err.shard).name, err.key, err.field) == ("raw-000001.tar", "b1x002", BAD[case][1])
    assert "raw-000001.tar" in str(err) and "b1x002" in str(err) and repr(BAD[case][1]) in str(err)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_is_skipped_counted_and_reported(tmp_path, case, caplog):
    good, _ = _bad_shards(tmp_path, case)
    stream = ShardStream(tmp_path, batch_size=2, on_error="skip", name="bad")
    loader = StreamLoader(stream, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="rewarddance.data.stream"):
        batches = list(loader)
    keys = [k for b in batches for k in batch_keys(b)]
    assert len(batches) == len(loader) == 5  # the skipped sample was replaced: batch count unchanged
    assert set(keys) == set(good) and len(keys) == 10
    assert sum(s.padding for b in batches for s in b) == 1  # the stand-in is a repeat, marked as such
    field = BAD[case][1]
    assert loader.last_report["skipped"] == {field: 1}  # counted in a worker, reported in the main process
    assert loader.last_report["replaced"] == 1
    assert f"SKIPPED 1 bad samples by field: {field}=1" in caplog.text


def _truncate(path: Path, where: str) -> None:
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    if where == "mid_member":  # cut inside the data of the 4th sample's first image
        cut = members[3 * 3 + 1].offset_data + 10
    else:  # cut exactly at a member boundary: tarfile alone would call that a clean end
        cut = members[3 * 3].offset
    path.write_bytes(data[:cut])


@pytest.mark.parametrize("where", ["mid_member", "at_boundary"])
@pytest.mark.parametrize("load_visuals", [True, False])
def test_truncated_shard_raises_naming_the_shard(tmp_path, where, load_visuals):
    write_records(tmp_path, [[good_record(f"t{j}", j) for j in range(6)]])
    _truncate(tmp_path / "raw-000000.tar", where)
    loader = StreamLoader(ShardStream(tmp_path, batch_size=2, load_visuals=load_visuals), num_workers=2)
    with pytest.raises(ShardReadError, match=r"raw-000000\.tar.*truncated") as info:
        read_all(loader)
    assert info.value.field == "archive" and isinstance(info.value, ShardFormatError)
    with pytest.raises(ShardReadError, match="truncated"):
        count_samples(str(tmp_path / "raw-000000.tar"))


def test_truncated_shard_is_skipped_counted_and_replaced(tmp_path, caplog):
    write_records(tmp_path, [[good_record(f"a{j}", j) for j in range(6)], [good_record(f"t{j}", j) for j in range(6)]])
    _truncate(tmp_path / "raw-000001.tar", "mid_member")  # t0..t2 survive, t3..t5 are lost
    stream = ShardStream(tmp_path, batch_size=4, on_error="skip")
    loader = StreamLoader(stream, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="rewarddance.data.stream"):
        batches = list(loader)
    keys = [k for b in batches for k in batch_keys(b)]
    assert len(batches) == len(loader) == 3 and len(keys) == 12
    assert set(keys) == {f"a{j}" for j in range(6)} | {"t0", "t1", "t2"}
    assert loader.last_report["skipped"] == {"archive": 3} and loader.last_report["replaced"] == 3
    assert "archive=3" in caplog.text


def test_skip_keeps_ranks_equal_when_all_bad_samples_hit_one_rank(tmp_path):
    shards = [[good_record(f"k{s}x{j}", j) for j in range(6)] for s in range(2)]
    shards[0] = [with_meta(r, label="nope") for r in shards[0]]  # rank 0's whole slice is bad
    write_records(tmp_path, shards)
    lengths = []
    for rank in range(2):
        stream = ShardStream(tmp_path, batch_size=4, on_error="skip", rank=rank, world_size=2)
        batches = list(StreamLoader(stream))
        lengths.append(len(batches))
        assert len(batches) == len(stream) == 2
    assert lengths == [2, 2]


# --------------------------------------------------------------------------------------------
# Decode only what is used


def test_references_and_visuals_can_be_left_undecoded(tmp_path):
    write_dataset(tmp_path, [4], refs=2)
    full = [s for b in ShardStream(tmp_path) for s in b]
    assert all(len(s.references) == 2 for s in full)
    no_refs = [s for b in ShardStream(tmp_path, load_references=False) for s in b]
    assert all(s.references == [] and (s.first or s.image) for s in no_refs)
    meta_only = [s for b in ShardStream(tmp_path, load_visuals=False) for s in b]
    assert all(s.first is None and s.image is None and s.references == [] for s in meta_only)
    assert [s.prompt for s in meta_only] == [s.prompt for s in full]
    raw = next(iter_tar_samples(str(tmp_path / "shard-000000.tar"), policy=MemberPolicy(True, False)))
    assert raw["ref0.png"] == b"" and raw["first.png"][:4] == b"\x89PNG"  # reference bytes not even read


# --------------------------------------------------------------------------------------------
# Shuffling and epochs


def test_epochs_change_order_not_content_and_are_reproducible(uneven):
    folder, keys = uneven

    def epoch_keys(epoch: int, seed: int = 0) -> list[str]:
        stream = ShardStream(folder, batch_size=3, shuffle=True, shuffle_buffer=5, seed=seed)
        stream.set_epoch(epoch)
        return read_all(stream)

    e0, e1 = epoch_keys(0), epoch_keys(1)
    assert sorted(e0) == sorted(e1) == sorted(keys)
    assert e0 != e1
    assert epoch_keys(1) == e1  # same seed and epoch, same order
    assert epoch_keys(1, seed=5) != e1
    orders = {ShardStream(folder, shuffle=True).plan(epoch).shards for epoch in range(6)}
    assert len(orders) > 1  # the shard order itself changes with the epoch
    assert read_all(ShardStream(folder, batch_size=3)) == keys  # no shuffle: file order


@pytest.mark.parametrize("persistent", [False, True])
def test_loader_sets_the_epoch_in_workers(uneven, persistent):
    folder, keys = uneven
    stream = ShardStream(folder, batch_size=2, shuffle=True, shuffle_buffer=3)
    loader = StreamLoader(stream, num_workers=2, persistent_workers=persistent)
    orders = [read_all(loader) for _ in range(2)]  # no epoch_fn: iterations count epochs
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == sorted(keys)
    loader.set_epoch(0)
    assert read_all(loader) == orders[0]


def test_resampled_gives_exactly_epoch_length(uneven):
    folder, keys = uneven
    stream = ShardStream(folder, batch_size=4, shuffle=True, shuffle_buffer=8, resampled=True, epoch_length=30)
    loader = StreamLoader(stream, num_workers=2)
    assert len(loader) == 8
    e0, e1 = read_all(loader), read_all(loader)
    assert len(e0) == len(e1) == 30 and e0 != e1 and set(e0) <= set(keys)
    assert loader.last_report["samples"] == 30
    with pytest.raises(ValueError, match="epoch_length"):
        ShardStream(folder, resampled=True)


# --------------------------------------------------------------------------------------------
# Equal batches on every rank and worker (simulated grid; the real DDP run is in test_ddp.py)


def _simulate(stream_kwargs: dict, world: int, workers: int, monkeypatch) -> list[list[list]]:
    """Per rank, the batches a DataLoader with ``workers`` workers would yield, in its order."""
    ranks = []
    for rank in range(world):
        per_worker = []
        for worker in range(workers):
            monkeypatch.setattr(
                stream_dataset, "get_worker_info", lambda w=worker: SimpleNamespace(id=w, num_workers=workers)
            )
            per_worker.append(list(ShardStream(rank=rank, world_size=world, **stream_kwargs)))
        # DataLoader hands out batches round-robin over workers, skipping exhausted ones.
        order = []
        for i in range(max(map(len, per_worker))):
            order += [batches[i] for batches in per_worker if i < len(batches)]
        ranks.append(order)
    return ranks


GRID = [
    # sizes, world, workers, batch, even_out
    ([7, 5, 9], 2, 2, 2, "pad"),
    ([7, 5, 9], 2, 2, 2, "drop"),
    ([7, 5, 9], 4, 3, 3, "pad"),
    ([7, 5, 9], 4, 3, 3, "drop"),
    ([3], 4, 2, 2, "pad"),  # fewer samples than ranks
    ([1, 1, 1, 1, 6], 3, 4, 5, "pad"),
    ([10, 10], 4, 1, 5, "drop"),  # divides evenly: nothing padded or dropped
]


@pytest.mark.parametrize(("sizes", "world", "workers", "batch", "even_out"), GRID)
def test_every_rank_gets_the_same_batches_and_every_sample_once(
    tmp_path, monkeypatch, sizes, world, workers, batch, even_out
):
    keys = write_dataset(tmp_path, sizes)
    kwargs = {"source": [ShardInfo(s.url, s.samples) for s in resolve_shards(tmp_path)]}
    kwargs.update(batch_size=batch, shuffle=True, shuffle_buffer=3, seed=7, even_out=even_out)
    plan = ShardStream(rank=0, world_size=world, **kwargs).plan()
    ranks = _simulate(kwargs, world, workers, monkeypatch)
    n = len(keys)
    assert {len(r) for r in ranks} == {plan.batches_per_rank}
    assert plan.batches_per_rank == math.ceil(plan.samples_per_rank / batch)
    for batches in ranks:
        assert sum(len(b) for b in batches) == plan.samples_per_rank
        assert sum(len(b) < batch for b in batches) <= 1  # at most one short batch per rank
    seen = Counter(s.key for r in ranks for b in r for s in b)
    if even_out == "pad":
        assert set(seen) == set(keys)
        assert plan.padded == world * math.ceil(n / world) - n == sum(seen.values()) - n
        assert plan.padded < world
        for batches in ranks:  # repeats are marked, and each rank has at most one
            assert sum(s.padding for b in batches for s in b) <= 1
        assert sum(s.padding for r in ranks for b in r for s in b) == plan.padded
    else:
        assert set(seen.values()) <= {1}
        assert plan.dropped == n - len(seen) == n % world
    assert all(v <= 2 for v in seen.values())


def test_len_is_known_for_lightning(uneven):
    folder, _ = uneven
    assert len(StreamLoader(ShardStream(folder, batch_size=4, rank=1, world_size=2))) == 3  # ceil(11 / 4)
    assert len(StreamLoader(ShardStream(folder, batch_size=4, rank=1, world_size=2, even_out="drop"))) == 3
