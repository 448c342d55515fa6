"""Building splits into shards: reproducibility, contents, summaries."""

import json
import tarfile
from collections import OrderedDict

import pytest

from rewarddance.data.schema import decode_sample
from rewarddance.shapes import HELDOUT_COLOR_SHAPE, build_caption_split, build_split


def _samples(folder):
    groups: OrderedDict[str, dict] = OrderedDict()
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                key, member = m.name.split(".", 1)
                groups.setdefault(key, {"__key__": key, "__url__": str(path)})[member] = tf.extractfile(m).read()
    return [decode_sample(g) for g in groups.values()]


def test_build_is_bit_for_bit_reproducible(tmp_path):
    a = build_split(tmp_path / "a", "train", samples=24, seed=7, shard_size=10, progress=False)
    b = build_split(tmp_path / "b", "train", samples=24, seed=7, shard_size=10, progress=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a["counts"] == b["counts"] and a["total"] == 24 and len(a["files"]) == 3
    build_split(tmp_path / "c", "train", samples=24, seed=8, shard_size=10, progress=False)
    assert (tmp_path / "c" / "shard-000000.tar").read_bytes() != (tmp_path / "a" / "shard-000000.tar").read_bytes()


def test_splits_differ_for_the_same_seed(tmp_path):
    build_split(tmp_path / "train", "train", samples=6, seed=0, progress=False)
    build_split(tmp_path / "val", "val", samples=6, seed=0, progress=False)
    train = [s.prompt for s in _samples(tmp_path / "train")]
    val = [s.prompt for s in _samples(tmp_path / "val")]
    assert train != val


def test_build_contents_and_summary(tmp_path):
    summary = build_split(tmp_path, "test-id", samples=36, seed=1, progress=False)
    samples = _samples(tmp_path)
    assert len(samples) == 36 and len({s.key for s in samples}) == 36
    assert summary["counts"]["kind=pair"] == summary["counts"]["kind=point"] == 18
    assert sum(v for k, v in summary["counts"].items() if k.startswith("tag=")) == 36
    assert all(
        summary["counts"][f"tag={t}"] == 6
        for t in ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["total"] == 36 and manifest["source"] == "shapes" and manifest["split"] == "test-id"
    assert manifest["style"] == "default" and manifest["seed"] == 1
    for s in samples:
        assert s.source == "shapes" and s.meta["split"] == "test-id" and s.meta["geneval"]["prompt"] == s.prompt
        if s.kind == "pair":
            assert len(s.references) == 1 and s.label in ("first", "second", "tie")
        else:
            assert s.answer in ("yes", "no") and s.rationale


def test_ood_split_uses_alt_style_and_heldout_combinations(tmp_path):
    build_split(tmp_path, "test-ood", samples=18, seed=0, progress=False)
    samples = _samples(tmp_path)
    assert all(s.meta["style"] == "alt" for s in samples)
    held = 0
    for s in samples:
        scenes = [s.meta["scene"]] if s.kind == "point" else list(s.meta["scenes"].values())
        objs = [(o["color"], o["shape"]) for sc in scenes for o in sc["objects"]]
        held += any(o in HELDOUT_COLOR_SHAPE for o in objs)
    assert held >= 12  # held-out pairs everywhere except prompts carried only by relations


def test_caption_and_video_splits(tmp_path):
    caps = build_caption_split(tmp_path / "cap", "train", samples=8, seed=0, progress=False)
    assert caps["counts"] == {"kind=caption": 8, "tag=caption": 8}
    assert all(s.kind == "caption" and s.qa for s in _samples(tmp_path / "cap"))
    vid = build_split(tmp_path / "vid", "val", samples=4, seed=0, video=True, progress=False)
    clips = _samples(tmp_path / "vid")
    assert vid["counts"]["kind=pair"] == 2 and all(s.fps == 4.0 for s in clips)
    pair = next(s for s in clips if s.kind == "pair")
    assert len(pair.first) == 8 and pair.category in ("motion", "motion_two")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        build_split(tmp_path, "dev", samples=1, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kinds"):
        build_split(tmp_path, "train", samples=1, kinds=("triplet",), progress=False)  # type: ignore[arg-type]


def test_sample_images_decode_to_canvas_size(tmp_path):
    build_split(tmp_path, "train", samples=2, seed=0, canvas=48, progress=False)
    s = _samples(tmp_path)[0]
    assert s.first[0].size == s.second[0].size == s.references[0][0].size == (48, 48)
