"""Render scenes to anti-aliased RGB images and clips, and degrade them for visual-quality pairs.

Each object's coverage is computed exactly on a supersampled grid (``supersample**2`` points per
pixel) from a signed distance to its outline and averaged, which is the same as drawing at
``supersample`` times the resolution and box-downscaling, but only inside the object's box.
Everything random (background, noise, jitter) comes from the ``rng`` passed in, so a scene and
a seeded generator always give the same pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from rewarddance.shapes.scene import COLORS, Scene, SceneObject

Degradation = Literal["blur", "noise", "blocks", "stripes"]
DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "blocks", "stripes")
OUTLINE = (25.0, 25.0, 25.0)
"""Outline colour of the ``alt`` style."""


@dataclass(frozen=True)
class RenderOptions:
    """Appearance randomisation. Defaults are what the dataset uses and the oracle is measured on.

    Args:
        noise: Largest standard deviation of additive Gaussian pixel noise (0-255 scale); each
            image or clip draws its own level uniformly in ``[0, noise]``.
        jitter: Largest random shift of an object at render time, in pixels of a 64 px canvas
            (scaled with the canvas). It is not reflected in the scene, so it is imprecision
            the oracle has to tolerate; sampled relations keep a margin larger than it.
        angle_jitter: Largest random extra rotation of squares and triangles, in degrees.
        background_variation: Random grey level, tint and gradient (and, in the ``alt`` style,
            a random texture) instead of one fixed background.
        supersample: Coverage samples per pixel and axis (anti-aliasing quality).
    """

    noise: float = 4.0
    jitter: float = 0.6
    angle_jitter: float = 3.0
    background_variation: bool = True
    supersample: int = 4


def _background(canvas: int, style: str, rng: np.random.Generator, variation: bool) -> np.ndarray:
    """A smooth, desaturated background that no palette colour is close to.

    ``default``: neutral grey of level 112-150, a tint of at most 6 per channel and a linear
    gradient of at most +-12. ``alt`` (the OOD "background family"): a strongly tinted grey
    (level 120-155, tint up to 14 per channel, so bluish, greenish or reddish greys) with a
    gradient and a faint stripe texture (+-2-4 levels). Worst case over all these backgrounds
    and the shading below, every palette colour stays >= 58 RGB units from the background
    (brown and pink are the closest), well above the oracle's foreground threshold of 40.
    """
    v, u = (np.mgrid[0:canvas, 0:canvas] + 0.5) / canvas * 2 - 1  # v: rows (y), u: columns (x)
    if style == "alt":
        level, tint_max, grad_max = (rng.uniform(120, 155), 14.0, 10.0) if variation else (140.0, 0.0, 0.0)
    else:
        level, tint_max, grad_max = (rng.uniform(112, 150), 6.0, 12.0) if variation else (135.0, 0.0, 0.0)
    tint = rng.uniform(-tint_max, tint_max, 3) if variation else np.zeros(3)
    tint -= tint.mean()  # a tint shifts hue, not brightness
    theta = rng.uniform(0, 2 * math.pi) if variation else 0.0
    amp = rng.uniform(0, grad_max) if variation else 0.0
    field = level + amp * (math.cos(theta) * u + math.sin(theta) * v)
    if style == "alt":
        period = rng.uniform(5, 10) * canvas / 64 / (canvas / 2)  # in the [-1, 1] coordinates
        phi, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        stripe_amp = rng.uniform(2, 4) if variation else 3.0
        field = field + stripe_amp * np.sin(2 * math.pi * (math.cos(phi) * u + math.sin(phi) * v) / period + phase)
    return field[..., None] + tint[None, None, :]


def _signed_distance(obj: SceneObject, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Distance from each point to the shape's outline, positive inside.

    For a convex polygon it is the minimum over edges of the distance to the edge's line,
    which is exact inside (all we threshold: at 0 for coverage, at the outline width for the
    inner fill) and a lower bound outside.
    """
    verts = obj.vertices()
    if verts is None:
        return obj.size / 2 - np.hypot(px - obj.x, py - obj.y)
    nxt = np.roll(verts, -1, axis=0)
    edges = nxt - verts
    signed_area = float(np.sum(verts[:, 0] * nxt[:, 1] - nxt[:, 0] * verts[:, 1]))
    # Inward normal: rotate the edge by +-90 degrees depending on winding.
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1) * (1 if signed_area > 0 else -1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    d = (px[..., None] - verts[:, 0]) * normals[:, 0] + (py[..., None] - verts[:, 1]) * normals[:, 1]
    return d.min(axis=-1)


def _coverage(obj: SceneObject, canvas: int, ss: int, inset: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray]:
    """Fraction of each pixel inside the shape (shrunk by ``inset``), within the object's box."""
    x0, y0, x1, y1 = obj.bbox
    c0, r0 = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    c1, r1 = min(math.ceil(x1) + 1, canvas), min(math.ceil(y1) + 1, canvas)
    if c1 <= c0 or r1 <= r0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0))
    sub = (np.arange(ss) + 0.5) / ss
    xs = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()
    ys = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
    inside = _signed_distance(obj, xs[None, :], ys[:, None]) >= inset
    cov = inside.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))
    return (slice(r0, r1), slice(c0, c1)), cov


def _paint(img: np.ndarray, obj: SceneObject, style: str, shade: tuple[float, float], ss: int) -> None:
    canvas = img.shape[0]
    rgb = np.array(COLORS[obj.color], dtype=np.float64)
    win, cov = _coverage(obj, canvas, ss)
    if cov.size == 0:
        return
    rows = np.arange(win[0].start, win[0].stop)[:, None] + 0.5
    cols = np.arange(win[1].start, win[1].stop)[None, :] + 0.5
    # Linear shading across the object (light from one side), +-|shade| at the object's edge.
    ramp = 1 + shade[0] * (cols - obj.x) / (obj.size / 2) + shade[1] * (rows - obj.y) / (obj.size / 2)
    fill = np.clip(rgb[None, None, :] * ramp[..., None], 0, 255)
    region = img[win]
    if style == "alt":
        width = max(1.5 * canvas / 64, 0.08 * obj.size)
        _, inner = _coverage(obj, canvas, ss, inset=width)
        # A near-black outline, not a darker shade of the fill: a shade of a light fill (white,
        # yellow) can land on a mid-grey background and leave a ragged, half-visible edge.
        outline = np.array(OUTLINE)
        region[:] = region * (1 - cov[..., None]) + outline * cov[..., None]
        region[:] = region * (1 - inner[..., None]) + fill * inner[..., None]
    else:
        region[:] = region * (1 - cov[..., None]) + fill * cov[..., None]


def render_clip(scene: Scene, rng: np.random.Generator, options: RenderOptions | None = None) -> list[Image.Image]:
    """Render every frame of ``scene`` (one frame for a still image) as RGB PIL images.

    Background, per-object jitter and the noise level are drawn once per clip, so a clip is one
    continuous shot; the noise itself is drawn per frame.
    """
    opt = options or RenderOptions()
    canvas, ss = scene.canvas, opt.supersample
    bg = _background(canvas, scene.style, rng, opt.background_variation)
    jitter = opt.jitter * canvas / 64
    alt = scene.style == "alt"
    looks = []
    for obj in scene.objects:
        dx, dy = rng.uniform(-jitter, jitter, 2) if jitter > 0 else (0.0, 0.0)
        da = rng.uniform(-opt.angle_jitter, opt.angle_jitter) if opt.angle_jitter > 0 else 0.0
        # Shading strength: barely visible by default, clearly visible in the alt style. Capped
        # at 8% so that a shaded colour stays nearest to its own palette entry.
        strength = rng.uniform(0.05, 0.08) if alt else rng.uniform(0.0, 0.03)
        light = rng.uniform(0, 2 * math.pi)
        shade = (strength * math.cos(light), strength * math.sin(light))
        looks.append((replace(obj, x=obj.x + dx, y=obj.y + dy, angle=obj.angle + da), shade))
    sigma = rng.uniform(0, opt.noise) if opt.noise > 0 else 0.0
    frames = []
    for t in range(scene.frames):
        img = bg.copy()
        for obj, shade in looks:
            _paint(img, obj.at(t), scene.style, shade, ss)
        if sigma > 0:
            img += rng.normal(0, sigma, img.shape)
        frames.append(Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB"))
    return frames


def render(scene: Scene, rng: np.random.Generator, options: RenderOptions | None = None) -> Image.Image:
    """Render a still scene (its first frame) as an RGB PIL image."""
    return render_clip(replace(scene, frames=1), rng, options)[0]


def degrade(clip: Sequence[Image.Image], kind: str, rng: np.random.Generator) -> list[Image.Image]:
    """A visibly worse copy of ``clip`` with the same content, for visual-quality pairs.

    ``blur``: Gaussian blur of radius 1.2-2 px (at 64 px). ``noise``: Gaussian noise of std 28-45.
    ``blocks``: JPEG at quality 3-8, which leaves 8x8 block artefacts. ``stripes``: hard-edged
    bright/dark bands of +-30-50 levels every 3-6 px. The same parameters are used for every
    frame of a clip.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    canvas = clip[0].width
    scale = canvas / 64
    if kind == "blur":
        radius = rng.uniform(1.2, 2.0) * scale
        return [im.filter(ImageFilter.GaussianBlur(radius)) for im in clip]
    if kind == "blocks":
        quality = int(rng.integers(3, 9))
        out = []
        for im in clip:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return out
    if kind == "noise":
        sigma = rng.uniform(28, 45)
        return [_from_float(np.asarray(im, np.float64) + rng.normal(0, sigma, (canvas, canvas, 3))) for im in clip]
    period = rng.uniform(3, 6) * scale
    amp = rng.uniform(30, 50)
    phase = rng.uniform(0, 2 * math.pi)
    axis = int(rng.integers(0, 2))
    coord = (np.arange(canvas) + 0.5)[:, None] if axis == 0 else (np.arange(canvas) + 0.5)[None, :]
    bands = amp * np.sign(np.sin(2 * math.pi * coord / period + phase))
    return [_from_float(np.asarray(im, np.float64) + bands[..., None]) for im in clip]


def _from_float(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
