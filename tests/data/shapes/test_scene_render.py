"""Scenes, layout sampling, GenEval relations and the renderer."""

import numpy as np
import pytest

from rewarddance.shapes import (
    COLORS,
    DEGRADATIONS,
    RenderOptions,
    Scene,
    SceneObject,
    degrade,
    render,
    render_clip,
)
from rewarddance.shapes.scene import boxes_clear, place_objects, relation_strengths, relations


def _scene(style="default", canvas=64):
    return Scene(
        (SceneObject("circle", "red", 16, 20, 22), SceneObject("square", "white", 46, 44, 22, angle=10)),
        canvas=canvas,
        style=style,
    )


def test_relation_strengths_worked_example():
    # A and B are 10x10 boxes, centres 20 px apart horizontally. GenEval's slack is
    # 0.1 * (10 + 10) = 2 px, so the revised offset is -18 over a norm of 20: strength 0.9.
    s = relation_strengths((0, 0, 10, 10), (20, 0, 30, 10))
    assert s["left of"] == pytest.approx(0.9)
    assert s["right of"] == pytest.approx(-0.9)
    assert s["above"] == 0 and s["below"] == 0
    assert relations((0, 0, 10, 10), (20, 0, 30, 10)) == {"left of"}
    # Diagonal at 45 degrees: each component is (20 - 2) / 28.28 = 0.64 > 0.5, so both hold.
    assert relations((0, 0, 10, 10), (20, 20, 30, 30)) == {"left of", "above"}
    # Offsets smaller than the slack give no relation.
    assert relations((0, 0, 10, 10), (1, 1, 11, 11)) == set()


def test_object_geometry():
    tri = SceneObject("triangle", "red", 10, 10, 8)
    assert tri.bbox == pytest.approx((6, 6, 14, 14))
    assert SceneObject("circle", "red", 10, 10, 8).vertices() is None
    rotated = SceneObject("square", "red", 10, 10, 8, angle=45).bbox
    assert rotated[2] - rotated[0] == pytest.approx(8 * np.sqrt(2))
    moving = SceneObject("circle", "red", 10, 10, 8, vx=2.0)
    assert moving.at(3).x == 16 and moving.swept_bbox(4) == pytest.approx((6, 6, 20, 14))


def test_place_objects_keeps_margin_and_canvas():
    rng = np.random.default_rng(0)
    specs = [SceneObject(s, "red", 0, 0, 0) for s in ("circle", "square", "triangle", "square")]
    for _ in range(20):
        placed = place_objects(specs, rng, canvas=64)
        assert placed is not None and len(placed) == 4
        boxes = [o.bbox for o in placed]
        assert all(boxes_clear(a, b, 4.0) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        assert all(min(b) >= 0 and max(b) <= 64 for b in boxes)
        assert all(o.size >= 0.8 * 18 - 1e-9 for o in placed)


def test_render_is_deterministic_and_seed_dependent():
    scene = _scene()
    a = np.asarray(render(scene, np.random.default_rng(3)))
    b = np.asarray(render(scene, np.random.default_rng(3)))
    c = np.asarray(render(scene, np.random.default_rng(4)))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("canvas", [32, 64, 96])
def test_render_canvas_size(canvas):
    scene = Scene((SceneObject("circle", "blue", canvas / 2, canvas / 2, canvas / 3),), canvas=canvas)
    img = render(scene, np.random.default_rng(0))
    assert img.size == (canvas, canvas) and img.mode == "RGB"


def test_render_is_antialiased_and_colours_exact():
    scene = Scene((SceneObject("circle", "red", 32, 32, 30),), canvas=64)
    img = np.asarray(render(scene, np.random.default_rng(0), RenderOptions(noise=0, jitter=0)), dtype=float)
    red = np.array(COLORS["red"])
    assert np.abs(img[32, 32] - red).max() <= 4  # flat fill in the default style (shading <= 3%)
    # Edge pixels are blends of fill and background, not a hard two-level staircase.
    dist = np.linalg.norm(img - red, axis=2)
    bg = np.linalg.norm(img[2, 2] - red)
    blended = ((dist > 20) & (dist < bg - 20)).sum()
    assert blended > 20


@pytest.mark.parametrize("style", ["default", "alt"])
def test_backgrounds_are_far_from_every_palette_colour(style):
    rng = np.random.default_rng(0)
    palette = np.array(list(COLORS.values()), dtype=float)
    for _ in range(20):
        img = np.asarray(render(Scene((), 64, style), rng, RenderOptions(noise=0)), dtype=float).reshape(-1, 3)
        dist = np.linalg.norm(img[:, None, :] - palette[None], axis=2)
        assert dist.min() > 55


def test_alt_style_outlines_shapes():
    white = SceneObject("square", "white", 32, 32, 28)
    exact = RenderOptions(noise=0, jitter=0, angle_jitter=0)
    plain = np.asarray(render(Scene((white,), 64, "default"), np.random.default_rng(0), exact))
    alt = np.asarray(render(Scene((white,), 64, "alt"), np.random.default_rng(0), exact))
    # The top edge is at y = 18; row 19 lies inside the 2.2 px outline.
    edge_plain = plain[19, 22:42].mean()
    edge_alt = alt[19, 22:42].mean()
    assert edge_alt < 90 < edge_plain


def test_clip_frames_move_objects():
    scene = Scene((SceneObject("circle", "black", 20, 32, 16, vx=3.0),), canvas=64, frames=8)
    frames = render_clip(scene, np.random.default_rng(0), RenderOptions(noise=0))
    assert len(frames) == 8
    cols = [np.nonzero(np.asarray(f)[32, :, 0] < 60)[0].mean() for f in frames]
    assert np.allclose(np.diff(cols), 3.0, atol=0.5)


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degradations_change_pixels_deterministically(kind):
    clip = [render(_scene(), np.random.default_rng(0))]
    a = degrade(clip, kind, np.random.default_rng(1))
    b = degrade(clip, kind, np.random.default_rng(1))
    assert a[0].size == clip[0].size
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    diff = np.abs(np.asarray(a[0], float) - np.asarray(clip[0], float)).mean()
    assert diff > 2.0
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(clip, "sepia", np.random.default_rng(0))


def test_scene_dict_round_trip():
    scene = Scene((SceneObject("triangle", "pink", 10.5, 20.25, 18.0, angle=5.0, vx=1.0),), 64, "alt", frames=8)
    assert Scene.from_dict(scene.to_dict()) == scene
