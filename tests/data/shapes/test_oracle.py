"""The pixel oracle: hand-made cases, per-part scores, agreement with the ground truth, speed."""

import time

import numpy as np
import pytest

from rewarddance.shapes import (
    RenderOptions,
    Scene,
    SceneObject,
    detect,
    evaluate,
    evaluate_parts,
    render,
)
from rewarddance.shapes.agreement import measure_agreement
from rewarddance.shapes.prompts import make_metadata

RED_CIRCLE_LEFT_OF_BLUE_SQUARE = make_metadata(
    "position",
    [
        {"class": "square", "count": 1, "color": "blue"},
        {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]},
    ],
)


def _img(*objs, style="default", canvas=64, seed=0):
    return render(Scene(tuple(objs), canvas=canvas, style=style), np.random.default_rng(seed))


@pytest.mark.parametrize("style", ["default", "alt"])
def test_red_circle_left_of_blue_square(style):
    assert RED_CIRCLE_LEFT_OF_BLUE_SQUARE["prompt"] == "a red circle left of a blue square"
    left = _img(SceneObject("circle", "red", 16, 32, 22), SceneObject("square", "blue", 48, 30, 20), style=style)
    assert evaluate(left, RED_CIRCLE_LEFT_OF_BLUE_SQUARE) == (True, "matches the prompt")
    swapped = _img(SceneObject("circle", "red", 48, 32, 22), SceneObject("square", "blue", 16, 30, 20), style=style)
    ok, reason = evaluate(swapped, RED_CIRCLE_LEFT_OF_BLUE_SQUARE)
    assert not ok
    assert reason == "has the red circle right of the blue square, not left of it"
    parts = evaluate_parts(swapped, RED_CIRCLE_LEFT_OF_BLUE_SQUARE)
    assert parts["position"] == 0.0 and parts["colors"] == parts["shape"] == parts["count"] == 1.0
    assert parts["overall"] == 0.0 and parts["mean"] == pytest.approx(0.75)


def test_detect_reports_shape_colour_centroid_area():
    img = _img(
        SceneObject("circle", "red", 16, 16, 24),
        SceneObject("square", "white", 48, 16, 22),
        SceneObject("triangle", "black", 16, 48, 24),
        SceneObject("square", "yellow", 48, 48, 18, angle=15),
    )
    dets = detect(img)
    found = sorted((d.shape, d.color) for d in dets)
    assert found == [("circle", "red"), ("square", "white"), ("square", "yellow"), ("triangle", "black")]
    circle = next(d for d in dets if d.shape == "circle")
    assert circle.centroid == pytest.approx((16, 16), abs=1.0)
    assert circle.area == pytest.approx(np.pi * 12**2, rel=0.1)
    assert detect(_img()) == []  # an empty canvas has no objects
    assert detect(np.asarray(img)) == dets  # arrays work like PIL images


def test_a_component_covering_most_of_the_image_is_not_an_object():
    # What an untrained generator draws: colour noise around a purple-grey mean. The background fit fails and the
    # whole canvas becomes one "square"; it must not satisfy "a square".
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal((145, 128, 144), 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert detect(noise) == []
    assert not evaluate(noise, make_metadata("single_object", [{"class": "square", "count": 1}]))[0]
    # The largest square the scenes draw (30 px, 22% of the image) is still found.
    assert [d.shape for d in detect(_img(SceneObject("square", "red", 32, 32, 30)))] == ["square"]


def test_wrong_colour_is_detected():
    meta = make_metadata("colors", [{"class": "circle", "count": 1, "color": "red"}])
    ok, reason = evaluate(_img(SceneObject("circle", "green", 32, 32, 24)), meta)
    assert not ok and reason == "has a green circle where the prompt asks for a red one"
    assert evaluate_parts(_img(SceneObject("circle", "green", 32, 32, 24)), meta)["colors"] == 0.0


def test_counting_uses_include_and_exclude():
    meta = make_metadata("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 3}])
    assert meta["prompt"] == "two circles"
    two = _img(SceneObject("circle", "red", 16, 16, 20), SceneObject("circle", "blue", 48, 48, 20))
    three = _img(
        SceneObject("circle", "red", 16, 16, 20),
        SceneObject("circle", "blue", 48, 48, 20),
        SceneObject("circle", "pink", 48, 14, 20),
    )
    one = _img(SceneObject("circle", "red", 16, 16, 20), SceneObject("square", "red", 48, 48, 20))
    assert evaluate(two, meta) == (True, "matches the prompt")
    assert evaluate(three, meta) == (False, "has three circles but the prompt asks for two")
    assert evaluate(one, meta) == (False, "has a circle but the prompt asks for two")
    assert evaluate_parts(three, meta)["count"] == pytest.approx(0.5)  # one too many of two


def test_missing_and_wrong_shape_reasons():
    meta = make_metadata("single_object", [{"class": "triangle", "count": 1}])
    assert evaluate(_img(), meta) == (False, "is empty: it has no triangle")
    ok, reason = evaluate(_img(SceneObject("square", "orange", 32, 32, 24)), meta)
    assert not ok and reason == "has no triangle, only an orange square"
    assert evaluate_parts(_img(SceneObject("square", "orange", 32, 32, 24)), meta)["shape"] == 0.0


def test_colour_binding_swap_is_detected():
    meta = make_metadata(
        "color_attr",
        [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}],
    )
    swapped = _img(SceneObject("circle", "blue", 16, 32, 22), SceneObject("square", "red", 48, 32, 22))
    ok, reason = evaluate(swapped, meta)
    assert not ok
    assert "has a blue circle where the prompt asks for a red one" in reason
    assert evaluate_parts(swapped, meta)["colors"] == 0.0


def test_oracle_is_robust_on_small_canvas():
    img = _img(
        SceneObject("triangle", "white", 8, 8, 10), SceneObject("circle", "brown", 24, 22, 11), canvas=32, style="alt"
    )
    assert sorted((d.shape, d.color) for d in detect(img)) == [("circle", "brown"), ("triangle", "white")]


def test_agreement_with_ground_truth_on_300_scenes():
    report = measure_agreement(300, seed=1)
    assert report.tallies["overall"][1] == 300
    assert report.rate() >= 0.98, report.failures[:5]
    for style in ("default", "alt"):
        assert report.rate(f"style={style}") >= 0.97
    # Both satisfying and violating scenes were judged.
    assert report.tallies["truth=satisfied"][1] > 100 and report.tallies["truth=violated"][1] > 100


def test_oracle_is_fast():
    rng = np.random.default_rng(0)
    objs = (
        SceneObject("circle", "red", 16, 16, 24),
        SceneObject("square", "blue", 48, 48, 24),
        SceneObject("triangle", "green", 48, 16, 22),
    )
    img = render(Scene(objs), rng, RenderOptions())
    detect(img)
    start = time.perf_counter()
    for _ in range(50):
        detect(img)
    per_image = (time.perf_counter() - start) / 50
    assert per_image < 0.02  # ~1-3 ms measured; generous for a busy 2-core machine
