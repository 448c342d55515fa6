"""GenEval-style prompts, satisfying and violating scenes, held-out combinations, JSONL prompt sets."""

import numpy as np
import pytest

from rewarddance.shapes import (
    HELDOUT_COLOR_SHAPE,
    SHAPES,
    TAGS,
    geneval_prompts,
    read_geneval_jsonl,
    sample_prompt,
    sample_scene,
    sample_violating_scene,
    scene_satisfies,
    violate,
    violations_for,
    write_geneval_jsonl,
)
from rewarddance.shapes.prompts import make_metadata, prompt_text
from rewarddance.shapes.scene import RELATIONS, relation_strengths
from rewarddance.shapes.splits import HELDOUT_RELATIONS, prompt_has_heldout, relation_key


def test_prompt_texts_follow_geneval():
    assert prompt_text(make_metadata("single_object", [{"class": "circle", "count": 1}])) == "a circle"
    assert (
        prompt_text(make_metadata("two_object", [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]))
        == "a circle and a square"
    )
    assert (
        prompt_text(make_metadata("colors", [{"class": "circle", "count": 1, "color": "orange"}])) == "an orange circle"
    )
    position = make_metadata(
        "position",
        [
            {"class": "square", "count": 1, "color": "green"},
            {"class": "triangle", "count": 1, "color": "blue", "position": ["left of", 0]},
        ],
    )
    assert position["prompt"] == "a blue triangle left of a green square"
    assert list(position) == ["tag", "include", "prompt"]


@pytest.mark.parametrize("tag", TAGS)
def test_metadata_structure(tag):
    rng = np.random.default_rng(0)
    for _ in range(30):
        meta = sample_prompt(tag, rng)
        assert meta["tag"] == tag and meta["prompt"] == prompt_text(meta)
        inc = meta["include"]
        assert all(r["class"] in SHAPES and r["count"] >= 1 for r in inc)
        if tag == "counting":
            assert 2 <= inc[0]["count"] <= 4
            assert meta["exclude"] == [{"class": inc[0]["class"], "count": inc[0]["count"] + 1}]
        else:
            assert "exclude" not in meta and all(r["count"] == 1 for r in inc)
        if tag in ("two_object", "color_attr"):
            assert len(inc) == 2 and inc[0]["class"] != inc[1]["class"]
        if tag in ("colors", "color_attr"):
            assert all("color" in r for r in inc)
        if tag == "position":
            assert "position" not in inc[0] and inc[1]["position"][0] in RELATIONS and inc[1]["position"][1] == 0


@pytest.mark.parametrize("tag", TAGS)
def test_satisfying_and_each_violation(tag):
    rng = np.random.default_rng(1)
    for _ in range(8):
        meta = sample_prompt(tag, rng)
        scene = sample_scene(meta, rng)
        assert scene_satisfies(scene, meta)
        assert 1 <= len(scene.objects) <= 4
        for v in violations_for(meta):
            bad, got = sample_violating_scene(meta, rng, violation=v, base=scene)
            assert got == v and not scene_satisfies(bad, meta)
            assert len(bad.objects) <= 4


def test_position_scenes_keep_a_clear_margin():
    rng = np.random.default_rng(2)
    for _ in range(40):
        meta = sample_prompt("position", rng)
        rel = meta["include"][1]["position"][0]
        good = sample_scene(meta, rng)
        assert relation_strengths(good.objects[1].bbox, good.objects[0].bbox)[rel] >= 0.65
        bad = violate(good, meta, "position", rng)
        if bad is not None:
            a = next(o for o in bad.objects if (o.shape, o.color) == (good.objects[1].shape, good.objects[1].color))
            b = next(o for o in bad.objects if (o.shape, o.color) == (good.objects[0].shape, good.objects[0].color))
            assert relation_strengths(a.bbox, b.bbox)[rel] <= 0.35


def test_colour_violation_can_swap_attributes():
    rng = np.random.default_rng(3)
    meta = make_metadata(
        "color_attr",
        [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "pink"}],
    )
    seen = set()
    for _ in range(30):
        bad, _ = sample_violating_scene(meta, rng, violation="color")
        seen.add(tuple(sorted((o.shape, o.color) for o in bad.objects)))
    assert (("circle", "pink"), ("square", "red")) in seen  # the binding swap
    assert len(seen) > 3  # and single recolourings


@pytest.mark.parametrize("split", ["train", "val", "test-id"])
def test_in_distribution_never_shows_heldout_combinations(split):
    rng = np.random.default_rng(4)
    for i in range(120):
        meta = sample_prompt(TAGS[i % len(TAGS)], rng, split)
        assert not prompt_has_heldout(meta)
        good = sample_scene(meta, rng, split=split)
        bad, _ = sample_violating_scene(meta, rng, split=split)
        for obj in (*good.objects, *bad.objects):
            assert (obj.color, obj.shape) not in HELDOUT_COLOR_SHAPE
        assert good.style == "default"


def test_ood_always_contains_a_heldout_combination():
    rng = np.random.default_rng(5)
    for i in range(120):
        meta = sample_prompt(TAGS[i % len(TAGS)], rng, "test-ood")
        scene = sample_scene(meta, rng, split="test-ood")
        in_scene = any((o.color, o.shape) in HELDOUT_COLOR_SHAPE for o in scene.objects)
        assert prompt_has_heldout(meta) or in_scene
        assert scene.style == "alt"
    # The held-out relation combinations do get asked in test-ood.
    keys = set()
    for _ in range(300):
        meta = sample_prompt("position", rng, "test-ood")
        keys.add(
            relation_key(meta["include"][1]["position"][0], meta["include"][1]["class"], meta["include"][0]["class"])
        )
    assert keys >= HELDOUT_RELATIONS


def test_geneval_prompt_set_is_fixed_and_round_trips(tmp_path):
    prompts = geneval_prompts(20, seed=0)
    assert prompts == geneval_prompts(20, seed=0)
    by_tag = {t: [p for p in prompts if p["tag"] == t] for t in TAGS}
    assert len(by_tag["single_object"]) == 3  # only three distinct single-object prompts exist
    assert len(by_tag["colors"]) == 20 and len(by_tag["position"]) == 20
    assert len({p["prompt"] for p in prompts}) == len(prompts)
    path = write_geneval_jsonl(tmp_path / "evaluation_metadata.jsonl", prompts)
    assert read_geneval_jsonl(path) == prompts
    assert path.read_text().count("\n") == len(prompts)
    ood = geneval_prompts(10, split="test-ood")
    assert all(prompt_has_heldout(p) for p in ood if p["tag"] in ("colors", "color_attr", "position"))
