"""Captions and dense visual questions about shapes scenes, for pretraining tiny VLMs.

Earlier caption-pretraining runs of the tiny VLMs learned colour and count well but shape and
relations poorly, and solved questions answered in the same sequence as the caption by copying it
(docs/notes.md). So questions here are many, short and dense on exactly the weak spots (shape of a given
colour, counts per shape, yes/no relations, grid location, motion), with balanced yes/no answers,
and stored separately from the caption (``Sample.qa``) so a data module can put them in their
own sequences.

Every answer is computed from the scene. Relation questions are only asked when the relation
holds or fails by a clear margin, location questions only when the object is not near a grid
line, and in-distribution splits never ask about held-out relation combinations.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from rewarddance.data.schema import Sample
from rewarddance.shapes.pairs import SOURCE, World
from rewarddance.shapes.rules import describe, motion_phrase, number_word, plural, with_article
from rewarddance.shapes.scene import (
    DIRECTIONS,
    RELATION_MARGIN,
    RELATIONS,
    SHAPES,
    STILL,
    Scene,
    SceneObject,
    place_objects,
    relation_strengths,
    style_angle,
)
from rewarddance.shapes.splits import allowed_colors, color_allowed, heldout_colors, is_ood, relation_allowed
from rewarddance.shapes.video import velocity

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def _grid(obj: SceneObject, canvas: int) -> tuple[float, float, int, int]:
    x0, y0, x1, y1 = obj.bbox
    cx, cy = (x0 + x1) / 2 / canvas, (y0 + y1) / 2 / canvas
    return cx, cy, min(int(cy * 3), 2), min(int(cx * 3), 2)


def location(obj: SceneObject, canvas: int) -> tuple[str, bool]:
    """Coarse 3x3 grid location of the object's box centre (``top left``, ``top``, ``center``,
    ``left``, ...), and whether it is unambiguous (at least 4% of the canvas from the grid lines)."""
    cx, cy, row, col = _grid(obj, canvas)
    clear = all(abs(v - line) >= 0.04 for v in (cx, cy) for line in (1 / 3, 2 / 3))
    words = [w for w in (_ROWS[row], _COLS[col]) if w not in ("middle", "center")]
    return " ".join(words) or "center", clear


def _where(name: str) -> str:
    return {"center": "in the center", "left": "on the left", "right": "on the right"}.get(name, f"at the {name}")


def caption_text(scene: Scene) -> str:
    """``two shapes: a red circle at the top left and a blue square on the right.``

    Objects are listed in reading order (by grid row, then x). For clips, locations are those of
    the first frame and each object's motion is named.
    """
    if not scene.objects:
        return "an empty background."
    objs = sorted(scene.objects, key=lambda o: (_grid(o, scene.canvas)[2], o.x))
    parts = []
    for o in objs:
        phrase = f"{with_article(describe(o.shape, o.color))} {_where(location(o, scene.canvas)[0])}"
        if scene.frames > 1:
            phrase += f" {motion_phrase(scene.motion(o))}"
        parts.append(phrase)
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    n = len(objs)
    return f"{number_word(n)} {'shape' if n == 1 else 'shapes'}: {listed}."


def scene_questions(
    scene: Scene, rng: np.random.Generator, split: str = "train", max_questions: int = 12
) -> list[tuple[str, str]]:
    """Dense visual questions with answers computed from the scene; at most ``max_questions``.

    Kinds: counts (total, per shape including zero, per colour); shape of the object of a unique
    colour; colour of a unique shape; existence (yes for a present object, no for a near miss:
    same shape in another colour, or same colour in another shape); grid location; yes/no
    relations between uniquely described objects; for clips, motion direction and whether an
    object moves. Questions are picked round-robin over the kinds, so a short budget still
    covers shape and relations, and each yes/no kind has as many yes as no answers.
    """
    objs, canvas = scene.objects, scene.canvas
    shapes = Counter(o.shape for o in objs)
    colors = Counter(o.color for o in objs)
    pairs = Counter((o.shape, o.color) for o in objs)
    unique = [o for o in objs if pairs[(o.shape, o.color)] == 1]
    kinds: dict[str, list[tuple[str, str]]] = {
        "count": [("How many shapes are there?", number_word(len(objs)))]
        + [(f"How many {plural(s)} are there?", number_word(shapes[s])) for s in SHAPES],
        "color_count": [(f"How many {c} shapes are there?", number_word(n)) for c, n in colors.items()],
        "shape": [(f"What shape is the {o.color} shape?", o.shape) for o in objs if colors[o.color] == 1],
        "color": [(f"What color is the {o.shape}?", o.color) for o in objs if shapes[o.shape] == 1],
        "exists": [],
        "where": [],
        "relation": [],
        "motion": [],
        "moving": [],
    }
    for o in objs:
        kinds["exists"].append((f"Is there {with_article(describe(o.shape, o.color))}?", "yes"))
        misses = [(o.shape, c) for c in allowed_colors(o.shape, split) if (o.shape, c) not in pairs]
        misses += [(x, o.color) for x in SHAPES if (x, o.color) not in pairs and color_allowed(o.color, x, split)]
        if misses:
            x, c = misses[int(rng.integers(len(misses)))]
            kinds["exists"].append((f"Is there {with_article(describe(x, c))}?", "no"))
    for o in unique:
        name, clear = location(o, canvas)
        if clear:
            kinds["where"].append((f"Where is the {describe(o.shape, o.color)}?", name))
    for a in unique:
        for b in unique:
            if a is b or scene.frames > 1:  # relations change during a clip: stills only
                continue
            strengths = relation_strengths(a.bbox, b.bbox)
            for rel in RELATIONS:
                if not relation_allowed(rel, a.shape, b.shape, split):
                    continue
                if abs(strengths[rel] - 0.5) >= RELATION_MARGIN:  # only clear cases, see RELATION_MARGIN
                    q = f"Is the {describe(a.shape, a.color)} {rel} the {describe(b.shape, b.color)}?"
                    kinds["relation"].append((q, "yes" if strengths[rel] > 0.5 else "no"))
    if scene.frames > 1:
        for o in unique:
            m = scene.motion(o)
            kinds["motion"].append(
                (f"Which way is the {describe(o.shape, o.color)} moving?", "nowhere" if m == STILL else m)
            )
            kinds["moving"].append((f"Is the {describe(o.shape, o.color)} moving?", "no" if m == STILL else "yes"))
    for name, items in kinds.items():
        order = rng.permutation(len(items))
        items[:] = [items[i] for i in order]
        if name in ("exists", "relation", "moving"):
            yes = [x for x in items if x[1] == "yes"]
            no = [x for x in items if x[1] == "no"]
            keep = min(len(yes), len(no))
            # Interleave so the round-robin below takes yes and no in turn, each pair in a random
            # order: always leading with "yes" made a sample's single relation question a "yes"
            # (pretraining then learned to answer every relation question "yes").
            flips = rng.random(keep) < 0.5
            pairs = [(n, y) if flip else (y, n) for y, n, flip in zip(yes[:keep], no[:keep], flips)]
            items[:] = [x for pair in pairs for x in pair]
    out: list[tuple[str, str]] = []
    queues = [items for items in kinds.values() if items]
    while queues and len(out) < max_questions:
        for items in list(queues):
            if len(out) < max_questions:
                out.append(items.pop(0))
            if not items:
                queues.remove(items)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def random_scene(
    rng: np.random.Generator,
    world: World,
    objects: int | None = None,
) -> Scene:
    """A random scene (or clip) for captioning: 1-4 objects (1-2 in clips), any shapes and colours
    allowed in the split; in test-ood at least one object has a held-out colour-shape pair.
    Clip objects move in a random direction or stand still (one in four)."""
    style = world.style or "default"
    for _ in range(100):
        n = objects or int(rng.integers(1, 3 if world.video else 5))
        specs = []
        for k in range(n):
            shape = str(rng.choice(SHAPES))
            options = heldout_colors(shape) if is_ood(world.split) and k == 0 else allowed_colors(shape, world.split)
            color = str(rng.choice(options))
            angle = style_angle(shape, style, rng)
            vx = vy = 0.0
            if world.video:
                motion = STILL if rng.random() < 0.25 else str(rng.choice(DIRECTIONS))
                vx, vy = velocity(motion, rng, world.canvas, world.frames)
            specs.append(SceneObject(shape, color, 0.0, 0.0, 0.0, angle, vx, vy))
        frames = world.frames if world.video else 1
        placed = place_objects(specs, rng, canvas=world.canvas, size_range=world.size_range, frames=frames)
        if placed is not None:
            return Scene(tuple(placed), canvas=world.canvas, style=style, frames=frames)
    raise RuntimeError("could not lay out a random scene")


def make_caption(
    rng: np.random.Generator,
    *,
    key: str = "caption",
    world: World | None = None,
    max_questions: int = 12,
) -> Sample:
    """One caption sample: a random scene, its caption and its visual questions.

    Args:
        rng: Source of all randomness.
        key: Sample key in the shards.
        world: Split, stills or video, canvas, style and render options.
        max_questions: Most questions per sample.
    """
    world = world or World()
    scene = random_scene(rng, world)
    clip = world.render(scene, rng)
    counts: dict[str, Any] = {s: sum(o.shape == s for o in scene.objects) for s in SHAPES}
    return Sample(
        key=key,
        kind="caption",
        prompt="Describe the video." if world.video else "Describe the image.",
        image=clip,
        caption=caption_text(scene),
        qa=scene_questions(scene, rng, world.split, max_questions),
        fps=world.sample_fps,
        source=SOURCE,
        category="caption",
        meta={"split": world.split, "style": world.style, "scene": scene.to_dict(), "counts": counts},
    )
