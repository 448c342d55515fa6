"""Image-to-video judging: a sample's condition image (``condition.<ext>`` in shards) travels through the shard
format and the collator into the model input, shown before the clips, pointwise and pairwise; the shapes video
split writes one per sample; samples without one render exactly as before."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.data.schema import ShardFormatError, decode_sample, encode_sample
from rewarddance.judge.prompting import Query, TemplateError, load_template, render_conversation
from rewarddance.models.inputs import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from rewarddance.shapes.pairs import World, make_pair, make_point
from rewarddance.shapes.video import judge_clip
from rewarddance.tasks import GenerativeRewardTask

FRAMES = 2
WORLD = World(video=True, condition=True, canvas=32, frames=4)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _roundtrip(sample):
    raw = encode_sample(sample)
    assert "condition.png" in raw and not any(k.startswith("condition.0") for k in raw)
    return decode_sample({**raw, "__url__": "memory.tar"})


def test_shapes_samples_carry_a_condition_that_satisfies_the_prompt() -> None:
    rng = np.random.default_rng(0)
    samples = [_roundtrip(make_pair(rng, world=WORLD, tag="motion")), _roundtrip(make_point(rng, world=WORLD))]
    for sample in samples:
        assert isinstance(sample.condition, Image.Image) and sample.condition.size == (32, 32)
        meta = sample.meta["geneval"]
        still = {**meta, "include": [{k: v for k, v in r.items() if k != "motion"} for r in meta["include"]]}
        assert judge_clip([sample.condition] * 2, still).correct  # the prompted objects, where a clip starts
    # A fresh render: no candidate's first frame is the condition pixel for pixel.
    pair = samples[0]
    assert all(np.asarray(c[0]).tobytes() != np.asarray(pair.condition).tobytes() for c in (pair.first, pair.second))
    with pytest.raises(ValueError, match="video"):
        World(video=False, condition=True)


def test_condition_member_rules() -> None:
    sample = make_point(np.random.default_rng(1), world=WORLD)
    raw = {**encode_sample(sample), "__url__": "memory.tar"}
    raw["condition.000.png"] = raw.pop("condition.png")
    with pytest.raises(ShardFormatError, match="'condition'"):
        decode_sample(raw)
    raw["condition.png"] = raw.pop("condition.000.png")
    raw["condition.png"] = b"not a png"
    with pytest.raises(ShardFormatError, match=r"condition\.png"):
        decode_sample(raw)
    plain = make_point(np.random.default_rng(1), world=World(video=True, canvas=32, frames=4))
    assert plain.condition is None and "condition.png" not in encode_sample(plain)


def test_condition_is_rendered_before_the_clips_pointwise_and_pairwise() -> None:
    template = load_template("default")
    condition, clip = Image.new("RGB", (8, 8), "red"), [Image.new("RGB", (8, 8))] * 2
    for question, clips in (("pairwise", [clip, clip]), ("pointwise", [clip])):
        without = Query(question, "a red circle moving left", clips, "criteria")
        text, visuals = render_conversation(template, without)
        assert IMAGE_PLACEHOLDER not in text and len(visuals) == len(clips)
        with_condition = Query(question, "a red circle moving left", clips, "criteria", condition=condition)
        text, visuals = render_conversation(template, with_condition)
        assert "must start from this first frame: " + IMAGE_PLACEHOLDER in text
        assert text.index(IMAGE_PLACEHOLDER) < text.index(VIDEO_PLACEHOLDER)
        assert visuals[0] is condition and visuals[1:] == clips
        # The rest of the question is unchanged.
        assert (
            text.replace("The video must start from this first frame: " + IMAGE_PLACEHOLDER + " ", "")
            == (render_conversation(template, without)[0])
        )
    with pytest.raises(TemplateError, match="condition"):
        load_template({**template.to_dict(), "condition": "no image here"})


def test_collator_feeds_the_condition_image_to_the_model() -> None:
    rng = np.random.default_rng(2)
    with_condition = [_roundtrip(make_pair(rng, world=WORLD, tag="motion", quality_fraction=0, tie_fraction=0))]
    plain = [dict(with_condition[0].__dict__)]
    plain_sample = type(with_condition[0])(**{**plain[0], "condition": None})
    for paradigm, rows in (("pairwise", 2), ("pointwise", 2)):
        task = GenerativeRewardTask(paradigm=paradigm, num_frames=FRAMES)
        task.configure_model()
        batch = task.collate(with_condition)
        baseline = task.collate([plain_sample])
        assert batch.inputs is not None and baseline.inputs is not None
        # One image per frame of each clip, plus the condition in every row (Qwen: a grid row per image).
        clips_per_row = 2 if paradigm == "pairwise" else 1
        assert len(baseline.inputs["image_grid_thw"]) == rows * clips_per_row * FRAMES
        assert len(batch.inputs["image_grid_thw"]) == rows * (clips_per_row * FRAMES + 1)
        with torch.no_grad():
            scores = task.score_queries(task.collator.rows(with_condition[0]).queries)
        assert scores.shape == (rows,) and torch.isfinite(scores).all()


def test_data_shapes_command_writes_condition_members(tmp_path: Path) -> None:
    from rewarddance.cli import main

    out = tmp_path / "clips"
    main(["data", "shapes", "--out", str(out), "--samples", "2", "--video", "true", "--condition", "true",
          "--canvas", "32", "--references", "0"])  # fmt: skip
    (shard,) = out.glob("*.tar")
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        member = tar.extractfile(next(n for n in names if n.endswith("condition.png")))
        assert member is not None and Image.open(io.BytesIO(member.read())).size == (32, 32)
    assert sum(n.endswith(".condition.png") for n in names) == 2
    with pytest.raises(SystemExit):
        main(["data", "shapes", "--out", str(tmp_path / "x"), "--samples", "2", "--condition", "true"])
