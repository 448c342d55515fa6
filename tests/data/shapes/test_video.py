"""Video: motion prompts, clips, violations and the tracking oracle."""

import numpy as np
import pytest

from rewarddance.shapes import (
    VIDEO_TAGS,
    RenderOptions,
    Scene,
    SceneObject,
    evaluate_video,
    evaluate_video_parts,
    render_clip,
    sample_video_prompt,
    sample_video_scene,
    sample_violating_video_scene,
    track,
    video_judgement,
)
from rewarddance.shapes.agreement import measure_agreement
from rewarddance.shapes.splits import HELDOUT_COLOR_SHAPE
from rewarddance.shapes.video import make_video_metadata


def _clip(*objs, style="default"):
    return render_clip(Scene(tuple(objs), canvas=64, style=style, frames=8), np.random.default_rng(0), RenderOptions())


RED_LEFT = make_video_metadata("motion", [{"class": "circle", "count": 1, "color": "red", "motion": "left"}])


def test_prompt_text():
    assert RED_LEFT["prompt"] == "a red circle moving left"


@pytest.mark.parametrize("style", ["default", "alt"])
def test_direction_is_judged_from_pixels(style):
    left = _clip(SceneObject("circle", "red", 48, 32, 18, vx=-3.0), style=style)
    assert evaluate_video(left, RED_LEFT) == (True, "matches the prompt")
    right = _clip(SceneObject("circle", "red", 16, 32, 18, vx=3.0), style=style)
    assert evaluate_video(right, RED_LEFT) == (False, "has the red circle moving right, not moving left")
    still = _clip(SceneObject("circle", "red", 32, 32, 18), style=style)
    assert evaluate_video(still, RED_LEFT) == (False, "has the red circle standing still, not moving left")
    parts = evaluate_video_parts(still, RED_LEFT)
    assert parts["motion"] == 0.0 and parts["colors"] == parts["shape"] == 1.0 and parts["overall"] == 0.0


def test_track_measures_displacement():
    tracks = track(_clip(SceneObject("square", "blue", 20, 40, 16, vx=2.0, vy=-0.3)))
    assert len(tracks) == 1
    t = tracks[0]
    assert (t.shape, t.color, t.motion) == ("square", "blue", "right")
    assert t.dx == pytest.approx(14.0, abs=1.0) and t.dy == pytest.approx(-2.1, abs=1.0)
    assert len(t.path) == 8


def test_two_objects_in_different_directions():
    meta = make_video_metadata(
        "motion_two",
        [
            {"class": "circle", "count": 1, "color": "red", "motion": "left"},
            {"class": "square", "count": 1, "color": "blue", "motion": "up"},
        ],
    )
    assert meta["prompt"] == "a red circle moving left and a blue square moving up"
    good = _clip(SceneObject("circle", "red", 48, 14, 16, vx=-3.0), SceneObject("square", "blue", 20, 48, 16, vy=-2.0))
    assert evaluate_video(good, meta)[0]
    bad = _clip(SceneObject("circle", "red", 48, 14, 16, vx=-3.0), SceneObject("square", "blue", 20, 30, 16, vy=2.0))
    assert evaluate_video(bad, meta) == (False, "has the blue square moving down, not moving up")


@pytest.mark.parametrize("tag", VIDEO_TAGS)
def test_sampled_clips_satisfy_or_violate(tag):
    rng = np.random.default_rng(0)
    for split in ("train", "test-ood"):
        for _ in range(6):
            meta = sample_video_prompt(tag, rng, split)
            held = any((r["color"], r["class"]) in HELDOUT_COLOR_SHAPE for r in meta["include"])
            assert held == (split == "test-ood")
            dirs = [r["motion"] for r in meta["include"]]
            assert len(set(dirs)) == len(dirs)
            scene = sample_video_scene(meta, rng, split=split)
            assert scene.frames == 8 and video_judgement(scene, meta).correct
            bad, violation = sample_violating_video_scene(meta, rng, split=split, base=scene)
            assert not video_judgement(bad, meta).correct and violation in (
                "direction",
                "static",
                "color",
                "shape",
                "missing",
            )


def test_video_oracle_agreement():
    report = measure_agreement(60, seed=2, video=True)
    assert report.rate() >= 0.95, report.failures[:5]
