"""Scenes of the shapes world: objects, their geometry, spatial relations and layout sampling.

A :class:`Scene` is the ground truth of one image or clip: which shapes, in which colours,
where, how big, and (for clips) how they move. Everything else in the shapes world is built
on it: the renderer turns it into pixels, the prompt sampler builds scenes that satisfy or
violate a prompt, and the judge in :mod:`.rules` decides whether a scene satisfies a prompt.

Coordinates are continuous pixels of the final canvas: the top-left pixel covers
``[0, 1) x [0, 1)``, x grows to the right and y downwards (so "above" means smaller y).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Shape classes. Three only: each added shape must keep the pixel oracle above 99% agreement."""

COLORS: dict[str, tuple[int, int, int]] = {
    # GenEval's ten colour words. The RGB values are chosen so that the closest two (orange and
    # yellow) are still ~75 apart in RGB, far more than rendering noise or shading can move a
    # colour, and so that none is close to the desaturated grey backgrounds (>= 58, see render).
    "red": (215, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 215, 30),
    "green": (40, 160, 60),
    "blue": (35, 85, 215),
    "purple": (135, 50, 175),
    "pink": (245, 125, 185),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
"""Motion directions of video prompts; a non-moving object has motion ``"still"``."""
STILL = "still"

Style = Literal["default", "alt"]
STYLES: tuple[str, ...] = ("default", "alt")
"""``default``: flat fills on neutral grey. ``alt`` (the OOD style): strongly tinted backgrounds
with a stripe texture, outlined and shaded shapes, rotations up to 20 degrees."""

POSITION_THRESHOLD = 0.1
"""GenEval's slack: an offset must exceed 10% of the two objects' summed extent to count."""

RELATION_MARGIN = 0.15
"""How far from the 0.5 decision boundary sampled relations stay (see :func:`relation_strengths`):
a satisfied relation has strength >= 0.65 and a violated one <= 0.35, so a pixel or two of
rendering jitter can never flip the ground truth the oracle is measured against."""

Box = tuple[float, float, float, float]
"""An axis-aligned box ``(x0, y0, x1, y1)``."""


@dataclass(frozen=True)
class SceneObject:
    """One shape. ``(x, y)`` is the centre of its unrotated ``size x size`` bounding square.

    All three shapes fill a ``size x size`` square before rotation (circle: diameter ``size``;
    square: side ``size``; triangle: base and height ``size``, apex up), so ``size`` is the
    object's bounding size. ``vx, vy`` are in pixels per frame (zero for still images).
    """

    shape: str
    color: str
    x: float
    y: float
    size: float
    angle: float = 0.0
    """Rotation in degrees about ``(x, y)`` (ignored for circles)."""
    vx: float = 0.0
    vy: float = 0.0

    def vertices(self) -> np.ndarray | None:
        """Polygon corners (n, 2) in canvas pixels, or None for a circle."""
        h = self.size / 2
        if self.shape == "circle":
            return None
        if self.shape == "square":
            pts = np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
        elif self.shape == "triangle":
            pts = np.array([(0.0, -h), (h, h), (-h, h)])
        else:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        a = math.radians(self.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return pts @ rot.T + np.array([self.x, self.y])

    @property
    def bbox(self) -> Box:
        """Tight axis-aligned bounding box of the drawn shape."""
        v = self.vertices()
        if v is None:
            h = self.size / 2
            return (self.x - h, self.y - h, self.x + h, self.y + h)
        return (float(v[:, 0].min()), float(v[:, 1].min()), float(v[:, 0].max()), float(v[:, 1].max()))

    def at(self, t: float) -> SceneObject:
        """The object at frame ``t`` (moved by ``t`` times its velocity)."""
        return replace(self, x=self.x + self.vx * t, y=self.y + self.vy * t) if (self.vx or self.vy) else self

    def swept_bbox(self, frames: int) -> Box:
        """Box covering the object over frames ``0 .. frames-1`` (motion is linear)."""
        a, b = self.bbox, self.at(max(frames - 1, 0)).bbox
        return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def style_angle(shape: str, style: str, rng: np.random.Generator) -> float:
    """Rotation of a new object in ``style``, in degrees.

    The alt style turns squares and triangles by up to 20 degrees; default shapes stand upright
    (render-time angle jitter of a few degrees still applies to both).
    """
    return float(rng.uniform(-20, 20)) if style == "alt" and shape != "circle" else 0.0


def motion_of(dx: float, dy: float, canvas: int) -> str:
    """Name the motion of a displacement over a whole clip: a direction word or ``"still"``.

    A displacement shorter than 10% of the canvas counts as still. Sampled moving objects
    travel 22-35% of the canvas and still ones do not move at all, so the 10% boundary is far
    from every ground-truth case and leaves room for tracking noise in the pixel oracle.
    """
    if math.hypot(dx, dy) < 0.1 * canvas:
        return STILL
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image (``frames == 1``) or clip: objects, canvas size and style."""

    objects: tuple[SceneObject, ...]
    canvas: int = 64
    style: Style = "default"
    frames: int = 1

    def objects_at(self, t: int) -> tuple[SceneObject, ...]:
        return tuple(o.at(t) for o in self.objects)

    def motion(self, obj: SceneObject) -> str:
        """Ground-truth motion word of ``obj`` over the whole clip."""
        steps = max(self.frames - 1, 0)
        return motion_of(obj.vx * steps, obj.vy * steps, self.canvas)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in shard metadata), rounded to keep it short."""
        objs = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(o).items()} for o in self.objects]
        return {"canvas": self.canvas, "style": self.style, "frames": self.frames, "objects": objs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(SceneObject(**o) for o in d["objects"])
        return cls(objects=objs, canvas=int(d["canvas"]), style=d["style"], frames=int(d.get("frames", 1)))


# --- spatial relations -------------------------------------------------------------------------


def relation_strengths(box_a: Box, box_b: Box) -> dict[str, float]:
    """How strongly A is left of / right of / above / below B, GenEval's way.

    GenEval shrinks the centre offset of the two boxes by ``0.1 x`` their summed extent per
    axis, then normalises by the full offset length; a relation holds when its component of
    that unit-ish vector exceeds 0.5 (i.e. the offset points within ~60 degrees of the axis and
    is not swallowed by the slack). Returned values are those components; they lie in
    [-1, 1] and a relation holds when its value is > 0.5.
    """
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = ((box_a[2] - box_a[0]) + (box_b[2] - box_b[0]), (box_a[3] - box_a[1]) + (box_b[3] - box_b[1]))
    off = (ca[0] - cb[0], ca[1] - cb[1])
    norm = math.hypot(*off)
    if norm < 1e-9:
        return dict.fromkeys(RELATIONS, 0.0)
    rev = [math.copysign(max(abs(o) - POSITION_THRESHOLD * d, 0.0), o) for o, d in zip(off, dims)]
    dx, dy = rev[0] / norm, rev[1] / norm
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}


def relations(box_a: Box, box_b: Box) -> set[str]:
    """The relations that hold between A and B (possibly two, e.g. left of and above)."""
    return {r for r, s in relation_strengths(box_a, box_b).items() if s > 0.5}


# --- layout sampling ---------------------------------------------------------------------------


def default_size_range(canvas: int) -> tuple[float, float]:
    """18-30 px bounding size on a 64 px canvas, scaled with the canvas.

    With 12-20 px shapes (~2x2 patches of 8 px) an earlier tiny vision tower did not learn shape
    (docs/notes.md); 18-30 px gives 2-4 patches across.
    """
    return (18.0 * canvas / 64, 30.0 * canvas / 64)


def layout_margin(canvas: int) -> float:
    """Smallest gap between two objects' boxes: 4 px at 64 px, so each object stays its own
    connected component for the oracle even after render jitter and anti-aliasing."""
    return 4.0 * canvas / 64


def layout_border(canvas: int) -> float:
    """Smallest gap between an object's box and the canvas edge (2 px at 64 px)."""
    return 2.0 * canvas / 64


def boxes_clear(a: Box, b: Box, margin: float) -> bool:
    """True when the boxes are at least ``margin`` apart on some axis (so they do not touch)."""
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def place_objects(
    specs: Sequence[SceneObject],
    rng: np.random.Generator,
    *,
    canvas: int = 64,
    size_range: tuple[float, float] | None = None,
    margin: float | None = None,
    frames: int = 1,
    constraint: Callable[[list[SceneObject]], bool] | None = None,
    existing: Sequence[SceneObject] = (),
    max_attempts: int = 400,
) -> list[SceneObject] | None:
    """Give each spec a size and a position so that no two objects touch, by rejection sampling.

    ``specs`` carry shape, colour, angle and velocity; their ``x, y, size`` are ignored. Boxes
    (swept over the clip for moving objects) stay inside the canvas with a small border and at
    least ``margin`` apart, so every object is its own connected component for the oracle.
    ``constraint`` (e.g. "A is clearly left of B") is checked on each complete layout.
    ``existing`` objects stay where they are and are avoided (used to add or move objects);
    only the newly placed objects are returned and passed to ``constraint``.

    Four 30 px shapes cannot fit on 64 px with margins, so every 40 failed layouts the sizes
    shrink by 10%, down to 80% of the minimum size (14.4 px at 64 px; smaller shapes are hard
    to tell apart at 32 px). Returns None if nothing fits.
    """
    lo, hi = size_range or default_size_range(canvas)
    margin = layout_margin(canvas) if margin is None else margin
    border = layout_border(canvas)
    floor = 0.8 * lo
    for attempt in range(max_attempts):
        if attempt and attempt % 40 == 0:
            lo, hi = max(floor, lo * 0.9), max(floor, hi * 0.9)
        placed: list[SceneObject] = []
        boxes: list[Box] = [o.swept_bbox(frames) for o in existing]
        for spec in specs:
            size = float(rng.uniform(lo, hi))
            probe = replace(spec, x=0.0, y=0.0, size=size)
            bx = probe.swept_bbox(frames)  # box relative to the object's own centre
            x_lo, x_hi = border - bx[0], canvas - border - bx[2]
            y_lo, y_hi = border - bx[1], canvas - border - bx[3]
            if x_lo > x_hi or y_lo > y_hi:
                break
            for _ in range(60):
                x, y = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))
                box = (bx[0] + x, bx[1] + y, bx[2] + x, bx[3] + y)
                if all(boxes_clear(box, other, margin) for other in boxes):
                    placed.append(replace(probe, x=x, y=y))
                    boxes.append(box)
                    break
            else:
                break
        else:
            if constraint is None or constraint(placed):
                return placed
    return None


def layout_fits(objs: Sequence[SceneObject], canvas: int, frames: int = 1) -> bool:
    """Do these objects obey :func:`place_objects`' rules (inside the border, margins apart)?

    Used after editing a layout (a swapped pair, a changed shape or velocity).
    """
    margin, border = layout_margin(canvas), layout_border(canvas)
    boxes = [o.swept_bbox(frames) for o in objs]
    inside = all(min(b[0], b[1]) >= border and max(b[2], b[3]) <= canvas - border for b in boxes)
    return inside and all(boxes_clear(a, b, margin) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
