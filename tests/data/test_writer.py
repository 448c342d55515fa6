"""SampleWriter: compact, reproducible shards, plain or gzip-compressed."""

import tarfile

import pytest
from PIL import Image

from rewarddance.data.schema import Sample
from rewarddance.data.stream import ShardStream
from rewarddance.data.writer import SampleWriter


def _write(folder, compress):
    img = Image.new("RGB", (8, 8), "red")
    with SampleWriter(folder, max_count=3, compress=compress) as writer:
        for i in range(5):
            writer.write(Sample(key=f"s{i}", kind="pair", prompt="p", first=[img], second=[img], label="tie"))
    return writer


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_and_bit_identical_rewrite(tmp_path, compress):
    first = _write(tmp_path / "a", compress)
    second = _write(tmp_path / "b", compress)
    suffix = ".tar.gz" if compress else ".tar"
    assert [p.name for p in first.shard_paths] == [f"shard-00000{i}{suffix}" for i in range(2)]
    for a, b in zip(first.shard_paths, second.shard_paths):
        assert a.read_bytes() == b.read_bytes()
    keys = [s.key for batch in ShardStream(str(tmp_path / "a"), batch_size=2) for s in batch]
    assert keys == [f"s{i}" for i in range(5)]


def test_one_header_block_per_member(tmp_path):
    # A float mtime would make tarfile prepend a pax header (two more blocks) to every member.
    writer = _write(tmp_path, compress=False)
    with tarfile.open(writer.shard_paths[0]) as tar:
        assert all(m.offset_data - m.offset == 512 for m in tar.getmembers())


def test_duplicate_key_is_refused(tmp_path):
    img = Image.new("RGB", (4, 4))
    with SampleWriter(tmp_path) as writer:
        writer.write(Sample(key="k", kind="point", prompt="p", image=[img], answer="yes"))
        with pytest.raises(ValueError, match="duplicate sample key 'k'"):
            writer.write(Sample(key="k", kind="point", prompt="p", image=[img], answer="no"))
