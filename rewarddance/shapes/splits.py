"""Splits of the shapes world and the held-out combinations that make ``test-ood`` out of distribution.

``train``, ``val`` and ``test-id`` share one distribution (they differ only by seed). ``test-ood``
uses combinations that never occur in the other three, and renders them in the ``alt`` style:

- six (colour, shape) pairs, two per shape, each colour at most once. No object of these
  colours and shapes is ever drawn in an in-distribution split, in any role (prompted object,
  random colour, violation, reference, caption scene);
- two (axis, shape pair) relation combinations: a triangle and a circle stacked vertically, and
  a square and a triangle side by side. In-distribution splits never *ask* about them (no
  position prompt and no caption question relates those two shapes along that axis, in either
  order); the objects may still happen to sit that way in a random caption scene.

Every ``test-ood`` prompt or scene contains at least one held-out combination.
"""

from __future__ import annotations

from typing import Any, Literal

from rewarddance.shapes.scene import AXIS, COLOR_NAMES, Style

Split = Literal["train", "val", "test-id", "test-ood"]
SPLITS: tuple[str, ...] = ("train", "val", "test-id", "test-ood")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
"""Mixed into every sample's seed so that the same ``--seed`` gives different splits."""

HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("green", "triangle"),
        ("blue", "circle"),
        ("orange", "circle"),
        ("yellow", "square"),
        ("purple", "square"),
    }
)
HELDOUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("vertical", "circle", "triangle"),
        ("horizontal", "square", "triangle"),
    }
)
"""(axis, shape, shape) with the two shapes sorted by name."""


def relation_key(relation: str, shape_a: str, shape_b: str) -> tuple[str, str, str]:
    a, b = sorted((shape_a, shape_b))
    return (AXIS[relation], a, b)


def is_ood(split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split == "test-ood"


def style_for(split: str) -> Style:
    """The rendering style of a split: ``alt`` for test-ood, ``default`` for the rest."""
    return "alt" if is_ood(split) else "default"


def color_allowed(color: str, shape: str, split: str) -> bool:
    """May an object of this colour and shape appear in ``split``?"""
    return is_ood(split) or (color, shape) not in HELDOUT_COLOR_SHAPE


def allowed_colors(shape: str, split: str) -> list[str]:
    return [c for c in COLOR_NAMES if color_allowed(c, shape, split)]


def heldout_colors(shape: str) -> list[str]:
    return [c for c in COLOR_NAMES if (c, shape) in HELDOUT_COLOR_SHAPE]


def relation_allowed(relation: str, shape_a: str, shape_b: str, split: str) -> bool:
    """May a prompt or question relate these shapes along this relation's axis in ``split``?"""
    return is_ood(split) or relation_key(relation, shape_a, shape_b) not in HELDOUT_RELATIONS


def prompt_has_heldout(metadata: dict[str, Any]) -> bool:
    """Does a GenEval-style prompt mention a held-out colour-shape pair or relation combination?"""
    include = metadata.get("include", [])
    for req in include:
        if "color" in req and (req["color"], req["class"]) in HELDOUT_COLOR_SHAPE:
            return True
        if "position" in req:
            rel, idx = req["position"]
            if relation_key(rel, req["class"], include[idx]["class"]) in HELDOUT_RELATIONS:
                return True
    return False
