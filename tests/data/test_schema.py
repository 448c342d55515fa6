"""Shard format v1: write with SampleWriter, read back with the streaming reader, field for field."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.data.schema import Sample, ShardFormatError, decode_sample, encode_sample, member_role, validate_sample
from rewarddance.data.stream import ShardReadError, ShardStream, iter_tar_samples
from rewarddance.data.writer import SampleWriter

torch.set_num_threads(1)


def noise(seed: int, size: int = 6) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def samples() -> list[Sample]:
    return [
        Sample(
            key="pair0",
            kind="pair",
            prompt="a red circle left of a blue square",
            first=[noise(1)],
            second=[noise(2)],
            references=[[noise(3)], [noise(4)]],
            label="tie",
            soft_label=0.5,
            instruction="Which image follows the prompt better?",
            criteria="composition",
            rationale="both are equally good",
            source="test",
            models=["gen-a", "gen-b"],
            category="position",
            meta={"scene": [{"shape": "circle", "color": "red"}]},
        ),
        Sample(key="point0", kind="point", prompt="two green triangles", image=[noise(5)], answer="no"),
        Sample(
            key="cap0",
            kind="caption",
            prompt="describe",
            image=[noise(6)],
            caption="one yellow square",
            qa=[("what colour?", "yellow")],
        ),
        Sample(
            key="clip0",
            kind="pair",
            prompt="a ball rolls right",
            first=[noise(7), noise(8), noise(9)],
            second=[noise(10), noise(11), noise(12)],
            label="first",
            fps=8.0,
        ),
    ]


def pixels(clip: list[Image.Image]) -> list[bytes]:
    return [frame.tobytes() for frame in clip]


def test_round_trip_through_writer_and_reader(tmp_path):
    originals = samples()
    with SampleWriter(tmp_path, prefix="rt", max_count=3) as writer:
        for sample in originals:
            writer.write(sample)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [3, 1] and manifest["total"] == 4
    read = {s.key: s for batch in ShardStream(tmp_path, batch_size=2) for s in batch}
    assert list(read) == [s.key for s in originals]
    for original in originals:
        got = read[original.key]
        for name in ("kind", "prompt", "label", "soft_label", "answer", "instruction", "criteria", "rationale"):
            assert getattr(got, name) == getattr(original, name), name
        for name in ("caption", "fps", "source", "models", "category", "meta"):
            assert getattr(got, name) == getattr(original, name), name
        assert got.qa == original.qa and got.padding is False
        assert got.shard.endswith(".tar")
        assert {role: pixels(clip) for role, clip in got.roles().items()} == {
            role: pixels(clip) for role, clip in original.roles().items()
        }


def test_next_shard_gives_uneven_shards(tmp_path):
    with SampleWriter(tmp_path, max_count=10) as writer:
        for n, size in enumerate([2, 3]):
            for j in range(size):
                writer.write(Sample(key=f"k{n}{j}", kind="point", prompt="p", image=[noise(j)], answer="yes"))
            writer.next_shard()
            writer.next_shard()  # twice in a row: no empty shard
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [2, 3]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": " "}, "prompt"),
        ({"label": "maybe"}, "label"),
        ({"label": None, "answer": "yes"}, "label"),
        ({"second": None}, "second"),
        ({"soft_label": 1.5}, "soft_label"),
        ({"key": "a.b"}, "__key__"),
    ],
)
def test_writer_refuses_what_the_reader_would_reject(change, field):
    sample = samples()[0]
    for name, value in change.items():
        setattr(sample, name, value)
    with pytest.raises(ShardFormatError) as info:
        encode_sample(sample)
    assert info.value.field == field
    with pytest.raises(ShardFormatError):
        validate_sample(sample)


def test_decode_sample_options_and_member_names():
    raw = {**encode_sample(samples()[0]), "__url__": "x.tar"}
    assert len(decode_sample(raw).references) == 2
    assert decode_sample(raw, load_references=False).references == []
    lazy = decode_sample(raw, load_visuals=False)
    assert lazy.first is None and lazy.prompt == samples()[0].prompt
    raw_missing_ref = {k: v for k, v in raw.items() if not k.startswith("ref1")}
    with pytest.raises(ShardFormatError, match="ref1"):
        decode_sample(raw_missing_ref, load_references=False)  # presence is still checked
    assert member_role("first.png") == ("first", None, "png")
    assert member_role("ref1.004.webp") == ("ref1", 4, "webp")
    assert member_role("first.pyd") is None and member_role("pickle") is None


def test_errors_survive_pickling_across_processes():
    err = ShardFormatError("a.tar", "k1", "label", "bad")
    back = pickle.loads(pickle.dumps(err))
    assert (back.shard, back.key, back.field, back.problem, str(back)) == ("a.tar", "k1", "label", "bad", str(err))
    read_err = pickle.loads(pickle.dumps(ShardReadError("b.tar", "truncated", "k2")))
    assert isinstance(read_err, ShardFormatError) and (read_err.shard, read_err.key) == ("b.tar", "k2")
    assert str(read_err) == "shard 'b.tar': truncated"


def test_raw_reader_groups_members_like_webdataset(tmp_path):
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with SampleWriter(tmp_path, max_count=10) as writer:
        for sample in samples():
            writer.write(sample)
    path = str(tmp_path / "shard-000000.tar")
    ours = [{k: v for k, v in raw.items() if k != "__url__"} for raw in iter_tar_samples(path)]
    with open(path, "rb") as stream:
        theirs = [
            {k: v for k, v in s.items() if k in ("__key__", "json") or member_role(k)}
            for s in group_by_keys({**f, "__url__": path} for f in tar_file_iterator(stream))
        ]
    assert ours == theirs
