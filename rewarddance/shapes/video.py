"""Clips of moving shapes: motion prompts, scenes, violations and a pixel oracle that tracks objects.

A clip is a :class:`~.scene.Scene` with ``frames > 1`` and per-object velocities; the renderer
draws every frame. Prompts follow the GenEval structure with one more key per include entry,
``motion`` (``left``, ``right``, ``up``, ``down``)::

    {"tag": "motion_two", "prompt": "a red circle moving left and a blue square moving up",
     "include": [{"class": "circle", "count": 1, "color": "red", "motion": "left"},
                 {"class": "square", "count": 1, "color": "blue", "motion": "up"}]}

Moving objects travel 22-35% of the canvas over the clip, mostly along one axis (sideways
drift at most 15% of that); still ones do not move. The oracle detects objects in every frame,
links them into tracks by colour and nearest centroid, fits a straight line to each track and
names its displacement with the same :func:`~.scene.motion_of` as the ground truth.
"""

from __future__ import annotations

import base64
import io
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from PIL import Image

from rewarddance.shapes.oracle import Detection, detect
from rewarddance.shapes.prompts import draw_violation, violate_with_retries
from rewarddance.shapes.render import render
from rewarddance.shapes.rules import Judgement, describe, judge, with_article
from rewarddance.shapes.scene import (
    COLOR_NAMES,
    DIRECTIONS,
    SHAPES,
    STILL,
    Box,
    Scene,
    SceneObject,
    Style,
    layout_fits,
    motion_of,
    place_objects,
    style_angle,
)
from rewarddance.shapes.splits import (
    HELDOUT_COLOR_SHAPE,
    SPLIT_IDS,
    allowed_colors,
    color_allowed,
    is_ood,
    style_for,
)

VideoTag = Literal["motion", "motion_two"]
VIDEO_TAGS: tuple[str, ...] = ("motion", "motion_two")
VideoViolation = Literal["direction", "static", "color", "shape", "missing"]
VIDEO_VIOLATIONS: tuple[str, ...] = ("direction", "static", "color", "shape", "missing")
FRAMES = 8
FPS = 4.0
_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


# --- prompts ------------------------------------------------------------------------------------


def video_prompt_text(metadata: dict[str, Any]) -> str:
    return " and ".join(
        f"{with_article(describe(r['class'], r.get('color')))} moving {r['motion']}" for r in metadata["include"]
    )


def make_video_metadata(tag: str, include: list[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"tag": tag, "include": include}
    meta["prompt"] = video_prompt_text(meta)
    return meta


def sample_video_prompt(tag: str, rng: np.random.Generator, split: str = "train") -> dict[str, Any]:
    """Motion prompt for ``tag``: one moving object, or two moving in different directions.

    In-distribution prompts never name a held-out colour-shape pair; test-ood prompts always do.
    """
    if tag not in VIDEO_TAGS:
        raise ValueError(f"unknown video tag {tag!r}; expected one of {VIDEO_TAGS}")
    n = 1 if tag == "motion" else 2
    for _ in range(1000):
        idx = rng.choice(len(SHAPES) * len(COLOR_NAMES), n, replace=False)  # distinct (shape, colour)
        objs = [(SHAPES[i // len(COLOR_NAMES)], COLOR_NAMES[i % len(COLOR_NAMES)]) for i in idx]
        held = [(c, s) in HELDOUT_COLOR_SHAPE for s, c in objs]
        if (is_ood(split) and not any(held)) or (not is_ood(split) and any(held)):
            continue
        dirs = rng.choice(DIRECTIONS, n, replace=False)
        include = [{"class": s, "count": 1, "color": c, "motion": str(d)} for (s, c), d in zip(objs, dirs)]
        return make_video_metadata(tag, include)
    raise RuntimeError(f"no {tag} prompt allowed in split {split!r}")


# --- scenes -------------------------------------------------------------------------------------


def video_geneval_prompts(
    per_tag: int = 50, *, split: str = "test-id", seed: int = 0, tags: Sequence[str] = VIDEO_TAGS
) -> list[dict[str, Any]]:
    """A fixed, deterministic set of distinct motion prompts: up to ``per_tag`` per tag (the ``shapes-video:<split>``
    prompt source), drawn as :func:`~.prompts.geneval_prompts` draws the still ones, from its own seed stream."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], 7927]))
    out: list[dict[str, Any]] = []
    for tag in tags:
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(per_tag * 40):
            meta = sample_video_prompt(tag, rng, split)
            seen.setdefault(meta["prompt"], meta)
            if len(seen) >= per_tag:
                break
        out.extend(seen[p] for p in sorted(seen))
    return out


def first_frame_url(metadata: dict[str, Any], *, split: str = "train", seed: int = 0, canvas: int = 64) -> str:
    """The first frame of a clip that satisfies ``metadata`` (the prompted objects, placed to move as prompted),
    as a ``data:image/png;base64,`` URL: the condition image of an image-to-video prompt, JSON-friendly so that it
    travels in prompt metadata. The same for the same prompt, split and seed."""
    key = zlib.crc32(metadata["prompt"].encode())
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], 7928, key]))
    scene = sample_video_scene(metadata, rng, split=split, canvas=canvas)
    buffer = io.BytesIO()
    render(scene, rng).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def i2v_geneval_prompts(
    per_tag: int = 50, *, split: str = "test-id", seed: int = 0, tags: Sequence[str] = VIDEO_TAGS
) -> list[dict[str, Any]]:
    """The ``shapes-i2v:<split>`` prompt source: :func:`video_geneval_prompts` with a ``condition_image`` each,
    the first frame of a clip satisfying the prompt (:func:`first_frame_url`): the objects are where they start
    and the prompt says where they go."""
    prompts = video_geneval_prompts(per_tag, split=split, seed=seed, tags=tags)
    return [{**meta, "condition_image": first_frame_url(meta, split=split, seed=seed)} for meta in prompts]


def velocity(direction: str, rng: np.random.Generator, canvas: int, frames: int) -> tuple[float, float]:
    """Pixels per frame for a direction word (``still`` gives zero)."""
    if direction == STILL:
        return (0.0, 0.0)
    ux, uy = _VECTORS[direction]
    travel = rng.uniform(0.22, 0.35) * canvas
    drift = rng.uniform(-0.15, 0.15) * travel
    steps = max(frames - 1, 1)
    return ((ux * travel + uy * drift) / steps, (uy * travel + ux * drift) / steps)


@dataclass(frozen=True)
class _Moving:
    """A scene object seen as the judge sees it: shape, colour, first-frame box and motion."""

    shape: str
    color: str
    bbox: Box
    motion: str


def video_judgement(scene: Scene, metadata: dict[str, Any]) -> Judgement:
    """Ground truth for a clip: the true objects and their true motion, judged by GenEval's rules."""
    return judge([_Moving(o.shape, o.color, o.bbox, scene.motion(o)) for o in scene.objects], metadata)


def sample_video_scene(
    metadata: dict[str, Any],
    rng: np.random.Generator,
    *,
    split: str = "train",
    canvas: int = 64,
    frames: int = FRAMES,
    size_range: tuple[float, float] | None = None,
    style: Style | None = None,
) -> Scene:
    """A clip with exactly the prompted objects moving as prompted, never touching."""
    style = style or style_for(split)
    for _ in range(50):
        specs = []
        for r in metadata["include"]:
            vx, vy = velocity(r["motion"], rng, canvas, frames)
            specs.append(
                SceneObject(r["class"], r["color"], 0.0, 0.0, 0.0, style_angle(r["class"], style, rng), vx, vy)
            )
        placed = place_objects(specs, rng, canvas=canvas, size_range=size_range, frames=frames)
        if placed is not None:
            scene = Scene(tuple(placed), canvas=canvas, style=style, frames=frames)
            if video_judgement(scene, metadata).correct:
                return scene
    raise RuntimeError(f"could not lay out a clip for {metadata['prompt']!r}")


def video_violations_for(metadata: dict[str, Any]) -> tuple[str, ...]:
    return ("direction", "static", "color", "shape", *(("missing",) if len(metadata["include"]) > 1 else ()))


def choose_video_violation(metadata: dict[str, Any], rng: np.random.Generator) -> str:
    """A violation type for a clip; ``direction`` twice as likely: it is what video prompts are about."""
    return draw_violation(video_violations_for(metadata), "direction", rng)


def violate_video(
    scene: Scene,
    metadata: dict[str, Any],
    violation: str,
    rng: np.random.Generator,
    *,
    split: str = "train",
    size_range: tuple[float, float] | None = None,
) -> Scene | None:
    """Edit a satisfying clip to break the prompt one way; None if that fails.

    ``direction``: one object moves another way (opposite or sideways). ``static``: one object
    stands still. ``color`` / ``shape``: one object changes colour / shape. ``missing``: one of
    two objects is removed. A moved object that no longer fits is laid out again.
    """
    objs = list(scene.objects)
    if not objs:
        return None
    i = int(rng.integers(len(objs)))
    o = objs[i]
    want = next((r["motion"] for r in metadata["include"] if r["class"] == o.shape and r["color"] == o.color), None)
    canvas, frames = scene.canvas, scene.frames
    if violation in ("direction", "static"):
        new_dir = STILL if violation == "static" else str(rng.choice([d for d in DIRECTIONS if d != want]))
        vx, vy = velocity(new_dir, rng, canvas, frames)
        objs[i] = replace(o, vx=vx, vy=vy)
        if not layout_fits(objs, canvas, frames):
            others = objs[:i] + objs[i + 1 :]
            moved = place_objects([objs[i]], rng, canvas=canvas, size_range=size_range, frames=frames, existing=others)
            if moved is None:
                return None
            objs = [*others, *moved]
    elif violation == "color":
        objs[i] = replace(o, color=str(rng.choice([c for c in allowed_colors(o.shape, split) if c != o.color])))
    elif violation == "shape":
        options = [s for s in SHAPES if s != o.shape and color_allowed(o.color, s, split)]
        if not options:
            return None
        new = str(rng.choice(options))
        objs[i] = replace(o, shape=new, angle=style_angle(new, scene.style, rng))
    elif violation == "missing":
        if len(objs) < 2:
            return None
        del objs[i]
    else:
        raise ValueError(f"unknown video violation {violation!r}; expected one of {VIDEO_VIOLATIONS}")
    out = replace(scene, objects=tuple(objs))
    allowed = all(color_allowed(x.color, x.shape, split) for x in objs)
    if not layout_fits(objs, canvas, frames) or not allowed or video_judgement(out, metadata).correct:
        return None
    return out


def sample_violating_video_scene(
    metadata: dict[str, Any],
    rng: np.random.Generator,
    *,
    violation: str | None = None,
    base: Scene | None = None,
    split: str = "train",
    canvas: int = 64,
    frames: int = FRAMES,
    size_range: tuple[float, float] | None = None,
    style: Style | None = None,
) -> tuple[Scene, str]:
    """A clip that breaks the prompt in one way (editing ``base`` if given), and the violation type.

    ``direction`` is drawn twice as often as the others (:func:`choose_video_violation`).
    """
    return violate_with_retries(
        metadata,
        violation,
        base,
        choose=lambda: choose_video_violation(metadata, rng),
        fresh=lambda: sample_video_scene(
            metadata, rng, split=split, canvas=canvas, frames=frames, size_range=size_range, style=style
        ),
        edit=lambda scene, v: violate_video(scene, metadata, v, rng, split=split, size_range=size_range),
    )


# --- pixel oracle -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """One object followed through a clip."""

    shape: str
    """Majority vote of the per-frame shape calls."""
    color: str
    motion: str
    dx: float
    """Fitted displacement over the whole clip, in pixels."""
    dy: float
    path: tuple[tuple[int, float, float], ...]
    """(frame, x, y) of each detection."""
    bbox: Box
    """Box in the first frame it was seen."""


def track(frames: Sequence[Image.Image | np.ndarray]) -> list[Track]:
    """Follow objects through a clip from pixels only.

    A detection joins the track of the same colour whose last position is nearest, if within
    15% of the canvas (objects move at most ~5% per frame); otherwise it starts a new track.
    Tracks seen in fewer than half the frames are dropped as flicker. Displacement is the
    least-squares slope of x(t) and y(t) times the clip length, robust to one bad centroid.
    """
    per_frame: list[list[Detection]] = [detect(f) for f in frames]
    if not frames:
        return []
    first = frames[0]
    canvas = first.width if isinstance(first, Image.Image) else int(np.asarray(first).shape[1])
    max_jump = 0.15 * canvas
    tracks: list[list[tuple[int, Detection]]] = []
    for t, dets in enumerate(per_frame):
        candidates = []
        for ti, tr in enumerate(tracks):
            lt, last = tr[-1]
            if lt >= t - 2 and lt < t:
                for di, d in enumerate(dets):
                    dist = math.hypot(d.x - last.x, d.y - last.y)
                    if d.color == last.color and dist <= max_jump * (t - lt):
                        candidates.append((dist, ti, di))
        used_t, used_d = set(), set()
        for _, ti, di in sorted(candidates):
            if ti not in used_t and di not in used_d:
                tracks[ti].append((t, dets[di]))
                used_t.add(ti)
                used_d.add(di)
        tracks.extend([(t, d)] for di, d in enumerate(dets) if di not in used_d)
    n = len(frames)
    out = []
    for tr in tracks:
        if len(tr) < max(2, math.ceil(n / 2)):
            continue
        ts = np.array([t for t, _ in tr], dtype=np.float64)
        xs = np.array([d.x for _, d in tr])
        ys = np.array([d.y for _, d in tr])
        slope_x, slope_y = np.polyfit(ts, xs, 1)[0], np.polyfit(ts, ys, 1)[0]
        dx, dy = float(slope_x * (n - 1)), float(slope_y * (n - 1))
        out.append(
            Track(
                shape=Counter(d.shape for _, d in tr).most_common(1)[0][0],
                color=Counter(d.color for _, d in tr).most_common(1)[0][0],
                motion=motion_of(dx, dy, canvas),
                dx=dx,
                dy=dy,
                path=tuple((t, d.x, d.y) for t, d in tr),
                bbox=tr[0][1].bbox,
            )
        )
    return out


def judge_clip(frames: Sequence[Image.Image | np.ndarray], metadata: dict[str, Any]) -> Judgement:
    return judge(track(frames), metadata)


def evaluate_video(frames: Sequence[Image.Image | np.ndarray], metadata: dict[str, Any]) -> tuple[bool, str]:
    """Verdict on a clip from pixels: ``(correct, reason)``, like :func:`~.oracle.evaluate`."""
    j = judge_clip(frames, metadata)
    return j.correct, j.reason


def evaluate_video_parts(frames: Sequence[Image.Image | np.ndarray], metadata: dict[str, Any]) -> dict[str, float]:
    """Per-part scores for a clip: colors, count, shape, position (always 1), motion, overall, mean."""
    return judge_clip(frames, metadata).parts(video=True)
