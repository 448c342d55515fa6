"""GenEval's judging rules on a list of objects, shared by the ground truth and the pixel oracle.

:func:`judge` decides whether a set of objects satisfies a GenEval-style prompt. The ground truth
calls it with a scene's true objects; the oracle calls it with the objects it detected in the
pixels. So "oracle agrees with ground truth" measures exactly one thing: detection.

The rules follow GenEval's ``evaluate``: each ``include`` entry needs at least ``count`` objects
of its class (of its colour, if given); a ``position`` entry ``[relation, i]`` requires every
matching object to stand in that relation to every object matched by include entry ``i``; each
``exclude`` entry forbids ``count`` or more objects of its class. Extra, unmentioned objects are
allowed, as in GenEval. One deliberate difference: GenEval takes the ``count`` most confident
detections of a class and then checks their colour; here objects are filtered by colour first,
because the oracle has no confidences and filtering is order-independent. Video prompts add a
``motion`` key (a direction word): at least ``count`` matching objects must move that way.

Findings are predicate phrases ("has three circles but the prompt asks for two") so that callers
can put any subject in front: "Image 2 has three circles but the prompt asks for two."
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rewarddance.shapes.scene import STILL, Box, relation_strengths, relations

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PARTS: tuple[str, ...] = ("colors", "count", "shape", "position")
"""Per-part scores of still prompts; video prompts add ``motion``."""


class ObjectLike(Protocol):
    """What the judge needs to know about an object (scene objects and detections both have it)."""

    shape: str
    color: str

    @property
    def bbox(self) -> Box: ...


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def plural(shape: str) -> str:
    return shape + "s"


def describe(shape: str, color: str | None = None) -> str:
    """``red circle`` or ``circle``."""
    return f"{color} {shape}" if color else shape


def count_phrase(n: int, shape: str, color: str | None = None) -> str:
    """``no circle``, ``a red circle``, ``three circles``."""
    if n == 0:
        return f"no {describe(shape, color)}"
    if n == 1:
        return with_article(describe(shape, color))
    return f"{number_word(n)} {describe(plural(shape), color)}"


def motion_phrase(motion: str) -> str:
    return "standing still" if motion == STILL else f"moving {motion}"


@dataclass
class Judgement:
    """The verdict on one image: correct or not, why, and per-part scores in [0, 1].

    Parts that a prompt does not constrain (``colors`` for "three squares", ``position`` for
    anything but position prompts, ``motion`` for stills) are absent from :attr:`scores`;
    :meth:`parts` fills them with 1.0 (nothing to get wrong).
    """

    correct: bool
    findings: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The findings as one predicate phrase, or ``matches the prompt``."""
        return " and ".join(self.findings) if self.findings else "matches the prompt"

    def sentence(self, subject: str = "The image") -> str:
        """``Image 2 has three circles but the prompt asks for two.``"""
        return f"{subject} {self.reason}."

    def parts(self, video: bool = False) -> dict[str, float]:
        """Scores for colors, count, shape, position (and motion for video), plus ``overall``
        (1.0 iff correct) and ``mean`` (the mean of the parts the prompt constrains)."""
        names = (*PARTS, "motion") if video else PARTS
        out = {name: self.scores.get(name, 1.0) for name in names}
        applicable = [self.scores[name] for name in names if name in self.scores]
        out["overall"] = 1.0 if self.correct else 0.0
        out["mean"] = sum(applicable) / len(applicable) if applicable else out["overall"]
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def judge(objects: Sequence[ObjectLike], metadata: dict[str, Any]) -> Judgement:
    """Does this set of objects satisfy the GenEval-style prompt ``metadata``? (rules above)"""
    include = metadata.get("include", [])
    exclude = metadata.get("exclude", [])
    findings: list[str] = []
    scores: dict[str, list[float]] = {}
    correct = True

    # Upper bounds from exclude entries, used for the count part score.
    upper: dict[tuple[str, str | None], int] = {}
    for req in exclude:
        key = (req["class"], req.get("color"))
        upper[key] = min(upper.get(key, 10**9), int(req["count"]) - 1)

    groups: list[list[ObjectLike] | None] = []
    for req in include:
        cls, n, color = req["class"], int(req["count"]), req.get("color")
        of_class = [o for o in objects if o.shape == cls]
        matches = [o for o in of_class if color is None or o.color == color]
        ok = True
        k = len(of_class)
        scores.setdefault("shape", []).append(1.0 if of_class else 0.0)
        hi = upper.get((cls, None), 10**9)
        if n <= k <= hi:
            count_score = 1.0
        else:
            count_score = max(0.0, 1.0 - ((n - k) if k < n else (k - hi)) / n)
        scores.setdefault("count", []).append(count_score)
        if k < n:
            ok = False
            if k == 0:
                others = [o for o in objects if o.shape not in {r["class"] for r in include}]
                extra = f", only {_list_objects(others)}" if others else ""
                empty = not objects
                findings.append(
                    f"is empty: it has no {describe(cls, color)}" if empty else f"has no {describe(cls, color)}{extra}"
                )
            else:
                findings.append(f"has {count_phrase(k, cls)} but the prompt asks for {number_word(n)}")
        elif color is not None and len(matches) < n:
            ok = False
            # Objects of this class whose colour another include entry asks for belong to that
            # entry, e.g. the white circle of "a brown circle right of a white circle".
            claimed = {r.get("color") for r in include if r is not req and r["class"] == cls}
            unclaimed = [o for o in of_class if o.color not in claimed]
            if n == 1 and unclaimed:
                have = with_article(describe(cls, unclaimed[0].color))
                findings.append(f"has {have} where the prompt asks for {article(color)} {color} one")
            elif n == 1:
                findings.append(f"has no {describe(cls, color)}")
            else:
                findings.append(
                    f"has {count_phrase(len(matches), cls, color)} but the prompt asks for {number_word(n)}"
                )
        if color is not None:
            scores.setdefault("colors", []).append(min(len(matches), n) / n)

        if "position" in req:
            rel, idx = req["position"]
            target = groups[idx] if 0 <= idx < len(groups) else None
            holds = False
            if ok and target:
                bad = [(o, t) for o in matches for t in target if rel not in relations(o.bbox, t.bbox)]
                holds = not bad
                if bad:
                    o, t = bad[0]
                    other = include[idx]
                    a = f"the {describe(cls, color)}"
                    b = f"the {describe(other['class'], other.get('color'))}"
                    strengths = relation_strengths(o.bbox, t.bbox)
                    actual = max(strengths, key=strengths.__getitem__)
                    if strengths[actual] > 0.5:
                        findings.append(f"has {a} {actual} {b}, not {rel} it")
                    else:
                        findings.append(f"has {a} too close to {b} to be {rel} it")
            ok = ok and holds
            scores.setdefault("position", []).append(1.0 if holds else 0.0)

        if "motion" in req:
            want = req["motion"]
            movers = [o for o in matches if getattr(o, "motion", None) == want]
            holds = ok and len(movers) >= n
            if ok and not holds:
                seen = getattr(matches[0], "motion", None) or STILL
                findings.append(f"has the {describe(cls, color)} {motion_phrase(seen)}, not {motion_phrase(want)}")
            ok = ok and holds
            scores.setdefault("motion", []).append(1.0 if holds else 0.0)

        correct = correct and ok
        groups.append(matches if ok else None)

    for req in exclude:
        cls, color, m = req["class"], req.get("color"), int(req["count"])
        k = sum(1 for o in objects if o.shape == cls and (color is None or o.color == color))
        if k >= m:
            correct = False
            findings.append(f"has {count_phrase(k, cls, color)} but the prompt asks for {number_word(m - 1)}")
    return Judgement(correct=correct, findings=findings, scores={k: _mean(v) for k, v in scores.items()})


def _list_objects(objs: Sequence[ObjectLike]) -> str:
    """``a red triangle``, ``a red triangle and a blue square``, ``two red triangles``."""
    counts: dict[tuple[str, str], int] = {}
    for o in objs:
        counts[(o.shape, o.color)] = counts.get((o.shape, o.color), 0) + 1
    parts = [count_phrase(n, shape, color) for (shape, color), n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
