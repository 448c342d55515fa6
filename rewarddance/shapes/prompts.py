"""GenEval-style prompts about shapes, scenes that satisfy them, and scenes that violate them.

Prompt metadata has GenEval's structure (``{"tag", "include", "exclude"?, "prompt"}``, see
DATASETS.md) with shape names as classes, so the same metadata drives the pair builder, the
pixel oracle and a GenEval-style evaluation of generators. Prompt texts drop GenEval's
"a photo of" (there are no photos here and it costs a tiny text encoder three tokens):

============== ============================================ =========================================
tag            prompt                                       include / exclude
============== ============================================ =========================================
single_object  a circle                                     circle x1
two_object     a circle and a square                        circle x1, square x1
counting       three squares                                square x3; exclude square x4
colors         a red circle                                 red circle x1
position       a blue triangle left of a green square       green square x1, blue triangle x1 left of #0
color_attr     a red circle and a blue square               red circle x1, blue square x1
============== ============================================ =========================================

Position prompts come with colours half of the time (then the two shapes may be equal).
Satisfying scenes contain exactly the prompted objects. A violating scene breaks the prompt in
one controlled way (:data:`VIOLATIONS`), usually by editing a satisfying scene, so a pair of
the two is a minimal pair.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rewarddance.shapes.rules import (
    Judgement,
    describe,
    judge,
    number_word,
    plural,
    with_article,
)
from rewarddance.shapes.scene import (
    COLOR_NAMES,
    OPPOSITE,
    RELATION_MARGIN,
    RELATIONS,
    SHAPES,
    Scene,
    SceneObject,
    Style,
    layout_fits,
    place_objects,
    relation_strengths,
    style_angle,
)
from rewarddance.shapes.splits import (
    allowed_colors,
    color_allowed,
    heldout_colors,
    is_ood,
    prompt_has_heldout,
    style_for,
)

Tag = Literal["single_object", "two_object", "counting", "colors", "position", "color_attr"]
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
Violation = Literal["color", "count", "shape", "position", "missing"]
VIOLATIONS: tuple[str, ...] = ("color", "count", "shape", "position", "missing")
COUNTS = (2, 3, 4)
"""Counting prompts ask for 2-4 objects, like GenEval; scenes never hold more than four."""
MAX_OBJECTS = 4

_KEY_VIOLATION = {"counting": "count", "colors": "color", "position": "position", "color_attr": "color"}


# --- prompt text and metadata -------------------------------------------------------------------


def prompt_text(metadata: dict[str, Any]) -> str:
    """The prompt sentence for GenEval-style metadata (inverse of the table above)."""
    tag, inc = metadata["tag"], metadata["include"]
    if tag == "counting":
        return f"{number_word(inc[0]['count'])} {plural(inc[0]['class'])}"
    if tag == "position":
        b, a = inc[0], inc[1]
        return f"{with_article(describe(a['class'], a.get('color')))} {a['position'][0]} {with_article(describe(b['class'], b.get('color')))}"
    return " and ".join(with_article(describe(r["class"], r.get("color"))) for r in inc)


def make_metadata(
    tag: str, include: list[dict[str, Any]], exclude: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """GenEval-format metadata with its prompt text filled in."""
    meta: dict[str, Any] = {"tag": tag, "include": include}
    if exclude:
        meta["exclude"] = exclude
    meta["prompt"] = prompt_text(meta)
    return meta


def _raw_prompt(tag: str, rng: np.random.Generator) -> dict[str, Any]:
    shapes = list(SHAPES)
    if tag == "single_object":
        return make_metadata(tag, [{"class": str(rng.choice(shapes)), "count": 1}])
    if tag == "two_object":
        a, b = rng.choice(shapes, 2, replace=False)
        return make_metadata(tag, [{"class": str(a), "count": 1}, {"class": str(b), "count": 1}])
    if tag == "counting":
        cls, n = str(rng.choice(shapes)), int(rng.choice(COUNTS))
        return make_metadata(tag, [{"class": cls, "count": n}], [{"class": cls, "count": n + 1}])
    if tag == "colors":
        return make_metadata(
            tag, [{"class": str(rng.choice(shapes)), "count": 1, "color": str(rng.choice(COLOR_NAMES))}]
        )
    if tag == "position":
        rel = str(rng.choice(RELATIONS))
        if rng.random() < 0.5:
            a, b = (str(s) for s in rng.choice(shapes, 2, replace=True))
            ca, cb = (str(c) for c in rng.choice(COLOR_NAMES, 2, replace=False))
            first = {"class": b, "count": 1, "color": cb}
            second = {"class": a, "count": 1, "color": ca, "position": [rel, 0]}
        else:
            a, b = (str(s) for s in rng.choice(shapes, 2, replace=False))
            first, second = {"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}
        return make_metadata(tag, [first, second])
    if tag == "color_attr":
        a, b = (str(s) for s in rng.choice(shapes, 2, replace=False))
        ca, cb = (str(c) for c in rng.choice(COLOR_NAMES, 2, replace=False))
        return make_metadata(tag, [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}])
    raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def prompt_allowed(metadata: dict[str, Any], split: str) -> bool:
    """In-distribution splits never mention a held-out combination; in test-ood, prompts that can
    carry one (colour or position prompts) must. Colour-free prompts (single_object, two_object,
    counting) cannot: their held-out combination is put into the scene instead."""
    has = prompt_has_heldout(metadata)
    if not is_ood(split):
        return not has
    return has or metadata["tag"] in ("single_object", "two_object", "counting")


def sample_prompt(tag: str, rng: np.random.Generator, split: str = "train") -> dict[str, Any]:
    """Draw GenEval-style metadata for ``tag`` that is allowed in ``split`` (see :func:`prompt_allowed`)."""
    for _ in range(1000):
        meta = _raw_prompt(tag, rng)
        if prompt_allowed(meta, split):
            return meta
    raise RuntimeError(f"no {tag} prompt allowed in split {split!r}")


# --- ground truth -------------------------------------------------------------------------------


def scene_judgement(scene: Scene, metadata: dict[str, Any]) -> Judgement:
    """Ground truth: judge the scene's true objects (first frame) with GenEval's rules."""
    return judge(scene.objects_at(0), metadata)


def scene_satisfies(scene: Scene, metadata: dict[str, Any]) -> bool:
    return scene_judgement(scene, metadata).correct


def scene_allowed(scene: Scene, split: str) -> bool:
    """No held-out colour-shape pair in an in-distribution scene."""
    return all(color_allowed(o.color, o.shape, split) for o in scene.objects)


# --- satisfying scenes --------------------------------------------------------------------------


def _specs(metadata: dict[str, Any], rng: np.random.Generator, split: str, style: str) -> list[SceneObject]:
    need_heldout = is_ood(split) and not prompt_has_heldout(metadata)
    specs = []
    for req in metadata["include"]:
        for _ in range(int(req["count"])):
            cls, color = req["class"], req.get("color")
            if color is None:
                if need_heldout:
                    color, need_heldout = str(rng.choice(heldout_colors(cls))), False
                else:
                    color = str(rng.choice(allowed_colors(cls, split)))
            specs.append(SceneObject(cls, color, 0.0, 0.0, 0.0, angle=style_angle(cls, style, rng)))
    return specs


def _position_constraint(metadata: dict[str, Any], want: bool) -> Callable[[Sequence[SceneObject]], bool] | None:
    """Layout constraint for position prompts: the relation holds (or fails) by a clear margin.

    Objects are laid out in include order, so include entry ``i`` is object ``i`` (position
    prompts only have count-1 entries).
    """
    inc = metadata["include"]
    checks = [(i, req["position"][0], req["position"][1]) for i, req in enumerate(inc) if "position" in req]

    def ok(objs: Sequence[SceneObject]) -> bool:
        for i, rel, j in checks:
            s = relation_strengths(objs[i].bbox, objs[j].bbox)[rel]
            if (want and s < 0.5 + RELATION_MARGIN) or (not want and s > 0.5 - RELATION_MARGIN):
                return False
        return True

    return ok if checks else None


def sample_scene(
    metadata: dict[str, Any],
    rng: np.random.Generator,
    *,
    split: str = "train",
    canvas: int = 64,
    size_range: tuple[float, float] | None = None,
    style: Style | None = None,
) -> Scene:
    """A scene with exactly the prompted objects, satisfying ``metadata``, allowed in ``split``.

    Colours the prompt leaves open are random (in test-ood, one of them is a held-out colour
    when the prompt itself has no held-out combination). Position prompts are laid out with
    the relation holding by a clear margin.
    """
    style = style or style_for(split)
    for _ in range(50):
        specs = _specs(metadata, rng, split, style)
        placed = place_objects(
            specs, rng, canvas=canvas, size_range=size_range, constraint=_position_constraint(metadata, True)
        )
        if placed is not None:
            scene = Scene(tuple(placed), canvas=canvas, style=style)
            if scene_satisfies(scene, metadata):
                return scene
    raise RuntimeError(f"could not lay out a scene for {metadata['prompt']!r} on a {canvas} px canvas")


# --- violating scenes ---------------------------------------------------------------------------


def violations_for(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The violation types that make sense for a prompt.

    single_object has no exclude entry in GenEval, so two circles still satisfy "a circle": its
    count-like failure is the empty image (``missing``). ``count`` is for counting prompts.
    """
    tag = metadata["tag"]
    colored = any("color" in r for r in metadata["include"])
    return {
        "single_object": ("shape", "missing"),
        "two_object": ("shape", "missing"),
        "counting": ("count", "shape"),
        "colors": ("color", "shape"),
        "position": ("position", "shape", "missing", *(("color",) if colored else ())),
        "color_attr": ("color", "shape", "missing"),
    }[tag]


def draw_violation(options: Sequence[str], favoured: str | None, rng: np.random.Generator) -> str:
    """One of ``options``, with ``favoured`` (if among them) twice as likely as each other one."""
    weights = np.array([2.0 if v == favoured else 1.0 for v in options])
    return str(options[int(rng.choice(len(options), p=weights / weights.sum()))])


def choose_violation(metadata: dict[str, Any], rng: np.random.Generator) -> str:
    """A violation type for the prompt; the tag's own failure (count for counting, ...) twice as likely."""
    return draw_violation(violations_for(metadata), _KEY_VIOLATION.get(metadata["tag"]), rng)


def _matching(objs: Sequence[SceneObject], req: dict[str, Any]) -> list[int]:
    return [i for i, o in enumerate(objs) if o.shape == req["class"] and o.color == req.get("color", o.color)]


def violate(
    scene: Scene,
    metadata: dict[str, Any],
    violation: str,
    rng: np.random.Generator,
    *,
    split: str = "train",
    size_range: tuple[float, float] | None = None,
) -> Scene | None:
    """Edit a satisfying ``scene`` so that it breaks ``metadata`` in one way; None if that fails.

    ``color``: one prompted object gets another colour, or (half of the time, when two objects
    have prompted colours) the two swap colours, the classic attribute-binding failure.
    ``shape``: one prompted object becomes another shape (same place, colour and size).
    ``count``: a counting scene gets one object more or fewer (never more than four).
    ``missing``: one prompted object is removed (an empty canvas for single_object).
    ``position``: the two related objects swap places (or are laid out again with the opposite
    relation if swapping makes them touch). The result is checked against the judge and the
    split's held-out rules; None means "try another scene".
    """
    objs = list(scene.objects)
    include = metadata["include"]
    canvas = scene.canvas
    if violation == "color":
        colored = [r for r in include if "color" in r]
        if not colored:
            return None
        pairs = [(r, s) for r in colored for s in colored if r is not s and r["color"] != s["color"]]
        if pairs and rng.random() < 0.5:
            r, s = pairs[int(rng.integers(len(pairs)))]
            i, j = _matching(objs, r)[0], _matching(objs, s)[0]
            objs[i], objs[j] = replace(objs[i], color=objs[j].color), replace(objs[j], color=objs[i].color)
        else:
            r = colored[int(rng.integers(len(colored)))]
            i = _matching(objs, r)[0]
            options = [c for c in allowed_colors(objs[i].shape, split) if c != r["color"]]
            objs[i] = replace(objs[i], color=str(rng.choice(options)))
    elif violation == "shape":
        r = include[int(rng.integers(len(include)))]
        i = int(rng.choice(_matching(objs, r)))
        options = [s for s in SHAPES if s != objs[i].shape and color_allowed(objs[i].color, s, split)]
        if not options:
            return None
        new = str(rng.choice(options))
        objs[i] = replace(objs[i], shape=new, angle=style_angle(new, scene.style, rng))
    elif violation == "count":
        if metadata["tag"] != "counting":
            return None
        r = include[0]
        n = int(r["count"])
        if n >= MAX_OBJECTS or (n > 1 and rng.random() < 0.5):
            del objs[int(rng.choice(_matching(objs, r)))]
        else:
            color = str(rng.choice(allowed_colors(r["class"], split)))
            spec = SceneObject(r["class"], color, 0.0, 0.0, 0.0, angle=style_angle(r["class"], scene.style, rng))
            added = place_objects([spec], rng, canvas=canvas, size_range=size_range, existing=objs)
            if added is None:
                return None
            objs += added
    elif violation == "missing":
        if not objs:
            return None
        r = include[int(rng.integers(len(include)))]
        del objs[int(rng.choice(_matching(objs, r)))]
    elif violation == "position":
        req_i = next((k for k, r in enumerate(include) if "position" in r), None)
        if req_i is None:
            return None
        rel, req_j = include[req_i]["position"]
        i, j = _matching(objs, include[req_i])[0], _matching(objs, include[req_j])[0]
        a, b = objs[i], objs[j]
        swapped = list(objs)
        swapped[i], swapped[j] = replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)
        strength = relation_strengths(swapped[i].bbox, swapped[j].bbox)[rel]
        if layout_fits(swapped, canvas) and strength <= 0.5 - RELATION_MARGIN:
            objs = swapped
        else:
            others = [o for k, o in enumerate(objs) if k not in (i, j)]

            def opposite(new: list[SceneObject]) -> bool:
                return relation_strengths(new[0].bbox, new[1].bbox)[OPPOSITE[rel]] >= 0.5 + RELATION_MARGIN

            moved = place_objects(
                [a, b], rng, canvas=canvas, size_range=size_range, existing=others, constraint=opposite
            )
            if moved is None:
                return None
            objs = [*others, *moved]
    else:
        raise ValueError(f"unknown violation {violation!r}; expected one of {VIOLATIONS}")
    out = replace(scene, objects=tuple(objs))
    if not layout_fits(objs, canvas) or scene_satisfies(out, metadata) or not scene_allowed(out, split):
        return None
    return out


def sample_violating_scene(
    metadata: dict[str, Any],
    rng: np.random.Generator,
    *,
    violation: str | None = None,
    base: Scene | None = None,
    split: str = "train",
    canvas: int = 64,
    size_range: tuple[float, float] | None = None,
    style: Style | None = None,
) -> tuple[Scene, str]:
    """A scene that breaks ``metadata`` in one way, and the violation type.

    With ``base`` (a satisfying scene) the violation edits it, giving a minimal pair; otherwise
    (or if editing ``base`` keeps failing) a fresh satisfying scene is drawn and edited.
    """
    return violate_with_retries(
        metadata,
        violation,
        base,
        choose=lambda: choose_violation(metadata, rng),
        fresh=lambda: sample_scene(metadata, rng, split=split, canvas=canvas, size_range=size_range, style=style),
        edit=lambda scene, v: violate(scene, metadata, v, rng, split=split, size_range=size_range),
    )


def violate_with_retries(
    metadata: dict[str, Any],
    violation: str | None,
    base: Scene | None,
    *,
    choose: Callable[[], str],
    fresh: Callable[[], Scene],
    edit: Callable[[Scene, str], Scene | None],
) -> tuple[Scene, str]:
    """The retry policy of still and video violations: an edited scene that breaks ``metadata``, and how.

    An edit can fail (no free spot for a moved object, no other allowed colour, ...), so it is
    retried. The first 10 attempts edit ``base`` when given, for a minimal pair; after that, or
    without ``base``, each attempt edits a fresh satisfying scene from ``fresh``.

    Args:
        metadata: The prompt to break.
        violation: The violation type; None draws one per attempt with ``choose``.
        base: A satisfying scene to edit first, or None.
        choose: Draws a violation type.
        fresh: Draws a satisfying scene.
        edit: Breaks a scene with a violation type; None when that fails.

    Raises:
        RuntimeError: if 60 attempts all fail.
    """
    for attempt in range(60):
        v = violation or choose()
        start = base if base is not None and attempt < 10 else None
        if start is None:
            start = fresh()
        out = edit(start, v)
        if out is not None:
            return out, v
    raise RuntimeError(f"could not violate {metadata['prompt']!r} with {violation or 'any violation'}")


# --- fixed prompt sets in GenEval's JSONL format ------------------------------------------------


def geneval_prompts(
    per_tag: int = 50,
    *,
    split: str = "test-id",
    seed: int = 0,
    tags: Sequence[str] = TAGS,
) -> list[dict[str, Any]]:
    """A fixed, deterministic set of distinct prompts: up to ``per_tag`` per tag.

    Some tags have few distinct prompts (single_object has three), so a tag may get fewer.
    Used to evaluate generators GenEval-style: generate images per prompt, judge them with
    :func:`~rewarddance.shapes.oracle.evaluate`, report the fraction correct per tag and
    the mean over tags.
    """
    from rewarddance.shapes.splits import SPLIT_IDS

    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], 7919]))
    out: list[dict[str, Any]] = []
    for tag in tags:
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(per_tag * 40):
            meta = sample_prompt(tag, rng, split)
            seen.setdefault(meta["prompt"], meta)
            if len(seen) >= per_tag:
                break
        out.extend(seen[p] for p in sorted(seen))
    return out


def write_geneval_jsonl(path: str | os.PathLike, prompts: Iterable[dict[str, Any]]) -> Path:
    """Write prompt metadata one JSON object per line, GenEval's ``evaluation_metadata.jsonl`` format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for meta in prompts:
            f.write(json.dumps(meta) + "\n")
    return path


def read_geneval_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a GenEval-format JSONL file (blank lines are skipped)."""
    from rewarddance.data.jsonl import read_jsonl

    return [row for _, row in read_jsonl(path)]
