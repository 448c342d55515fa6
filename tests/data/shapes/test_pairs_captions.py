"""Pair, pointwise and caption samples."""

from collections import Counter

import numpy as np
import pytest

from rewarddance.data.schema import encode_sample, validate_sample
from rewarddance.shapes import (
    TAGS,
    Scene,
    SceneObject,
    World,
    caption_text,
    evaluate,
    make_caption,
    make_pair,
    make_point,
    scene_questions,
)


def test_alignment_pair_is_consistent_with_the_oracle():
    rng = np.random.default_rng(0)
    world = World()
    for i in range(12):
        s = make_pair(rng, key=f"p{i}", world=world, tag=TAGS[i % 6], quality_fraction=0, tie_fraction=0, references=2)
        validate_sample(s)
        encode_sample(s)
        assert s.kind == "pair" and s.source == "shapes" and s.category == TAGS[i % 6]
        assert s.criteria == "text-image alignment" and s.meta["pair_type"] == "alignment"
        assert s.meta["geneval"]["prompt"] == s.prompt and s.meta["violation"] in (
            "color",
            "count",
            "shape",
            "position",
            "missing",
        )
        chosen, rejected = (s.first, s.second) if s.label == "first" else (s.second, s.first)
        assert s.soft_label == (1.0 if s.label == "first" else 0.0)
        assert evaluate(chosen[0], s.meta["geneval"])[0] and not evaluate(rejected[0], s.meta["geneval"])[0]
        assert len(s.references) == 2 and all(evaluate(r[0], s.meta["geneval"])[0] for r in s.references)
        good_idx = 1 if s.label == "first" else 2
        assert f"Image {good_idx} matches the prompt." in s.rationale
        _, reason = evaluate(rejected[0], s.meta["geneval"])
        assert f"Image {3 - good_idx} {reason}." in s.rationale


def test_pair_types_labels_and_ties_are_balanced():
    rng = np.random.default_rng(1)
    samples = [make_pair(rng, key=f"p{i}", references=0) for i in range(120)]
    types = Counter(s.meta["pair_type"] for s in samples)
    labels = Counter(s.label for s in samples)
    assert types["alignment"] > 60 and types["quality"] > 10 and types["tie"] > 3
    assert abs(labels["first"] - labels["second"]) < 30
    for s in samples:
        if s.meta["pair_type"] == "tie":
            assert s.label == "tie" and s.soft_label == 0.5
            assert s.rationale == "Both images match the prompt." or s.rationale.endswith("Neither matches the prompt.")
        if s.meta["pair_type"] == "quality":
            assert s.criteria == "visual quality" and s.meta["degradation"] in ("blur", "noise", "blocks", "stripes")
            assert s.rationale.startswith("Both images match the prompt, but image")


def test_point_samples():
    rng = np.random.default_rng(2)
    samples = [make_point(rng, key=f"q{i}", quality_fraction=0.25) for i in range(80)]
    answers = Counter(s.answer for s in samples)
    assert 25 <= answers["yes"] <= 55
    for s in samples:
        validate_sample(s)
        assert s.kind == "point" and s.image is not None and len(s.image) == 1
        if s.criteria == "text-image alignment":
            ok, reason = evaluate(s.image[0], s.meta["geneval"])
            assert ok == (s.answer == "yes")
            assert s.rationale == f"The image {reason}."
        else:
            assert s.criteria == "visual quality"
            assert (s.meta["degradation"] is None) == (s.answer == "yes")


def test_video_pair_and_point():
    rng = np.random.default_rng(3)
    world = World(video=True)
    pair = make_pair(rng, world=world, quality_fraction=0, tie_fraction=0)
    validate_sample(pair)
    assert pair.fps == 4.0 and len(pair.first) == len(pair.second) == 8 and len(pair.references[0]) == 8
    assert pair.criteria == "text-video alignment" and "Video" in pair.rationale
    assert pair.meta["violation"] in ("direction", "static", "color", "shape", "missing")
    point = make_point(rng, world=world)
    validate_sample(point)
    assert len(point.image) == 8 and point.rationale.startswith("The video")


def test_caption_text_and_questions_of_a_known_scene():
    scene = Scene(
        (
            SceneObject("circle", "red", 10, 10, 14),
            SceneObject("square", "blue", 54, 52, 14),
            SceneObject("circle", "green", 54, 12, 14),
        ),
        canvas=64,
    )
    assert (
        caption_text(scene)
        == "three shapes: a red circle at the top left, a green circle at the top right and a blue square at the bottom right."
    )
    qa = dict(scene_questions(scene, np.random.default_rng(0), max_questions=100))
    assert qa["How many shapes are there?"] == "three"
    assert qa["How many circles are there?"] == "two"
    assert qa["How many triangles are there?"] == "zero"
    assert qa["What shape is the blue shape?"] == "square"
    assert qa["What color is the square?"] == "blue"
    assert qa["Where is the blue square?"] == "bottom right"
    assert "What color is the circle?" not in qa  # ambiguous: two circles
    assert qa.get("Is the red circle left of the green circle?", "yes") == "yes"
    assert qa.get("Is the blue square above the red circle?", "no") == "no"
    yes_no = [a for a in qa.values() if a in ("yes", "no")]
    assert yes_no.count("yes") == yes_no.count("no") > 0


def test_caption_samples():
    rng = np.random.default_rng(4)
    kinds = Counter()
    for i in range(30):
        s = make_caption(rng, key=f"c{i}", world=World(split="test-ood" if i % 2 else "train"))
        validate_sample(s)
        assert s.kind == "caption" and s.caption.endswith(".") and 1 <= len(s.qa) <= 12
        for q, _ in s.qa:
            kinds[q.split()[0] + " " + q.split()[1]] += 1
    # Dense questions about shape, count, colour and position all appear.
    assert kinds["What shape"] and kinds["How many"] and kinds["What color"] and kinds["Where is"]
    assert any(k.startswith("Is the") for k in kinds)
    clip = make_caption(rng, world=World(video=True))
    assert clip.fps == 4.0 and len(clip.image) == 8 and clip.prompt == "Describe the video."
    assert any(q.startswith("Which way is") for q, _ in clip.qa) or "moving" not in clip.caption


@pytest.mark.parametrize("bad", [(-0.1, 0.1), (0.6, 0.5)])
def test_invalid_fractions(bad):
    with pytest.raises(ValueError, match="fraction"):
        make_pair(np.random.default_rng(0), quality_fraction=bad[0], tie_fraction=bad[1])


def test_yes_no_questions_are_balanced_in_the_asked_subset():
    # With one relation question per sample, a fixed yes-first order made every such answer "yes".
    from collections import Counter

    import numpy as np

    from rewarddance.shapes.captions import random_scene, scene_questions
    from rewarddance.shapes.pairs import World

    rng, world, answers = np.random.default_rng(0), World(split="train"), Counter()
    for _ in range(300):
        for question, answer in scene_questions(random_scene(rng, world), rng, "train", max_questions=6):
            if question.startswith(("Is the", "Is there")):
                answers[answer] += 1
    assert abs(answers["yes"] - answers["no"]) <= 0.1 * sum(answers.values())
