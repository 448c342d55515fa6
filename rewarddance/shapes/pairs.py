"""Preference pairs and pointwise samples of the shapes world, labelled by construction and
checked by the pixel oracle.

Pair types (``meta["pair_type"]``):

- ``alignment``: the chosen candidate satisfies the prompt, the rejected one violates it in one
  controlled way (``meta["violation"]``). Half of the time (``minimal_fraction``) the rejected
  scene is an edit of the chosen one (a minimal pair), otherwise an independent layout.
  Criteria: text-image (text-video) alignment.
- ``quality``: the same render twice, one copy degraded (blur, heavy noise, JPEG blocks or
  stripes; ``meta["degradation"]``). Criteria: visual quality.
- ``tie``: both candidates satisfy the prompt, or both violate it; label ``tie``, soft label 0.5.

Which side the chosen candidate is on is a coin flip, so labels are balanced. Every candidate
is judged by the pixel oracle; a sample whose oracle verdicts disagree with the ground truth is
drawn again (counted as ``oracle_rejected``), so rationales, which are written from the
oracle's findings, never contradict the labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from rewarddance.data.schema import Clip, Sample
from rewarddance.shapes import prompts
from rewarddance.shapes import video as vid
from rewarddance.shapes.oracle import judge_image
from rewarddance.shapes.render import DEGRADATIONS, RenderOptions, degrade, render_clip
from rewarddance.shapes.rules import Judgement
from rewarddance.shapes.scene import Scene, Style
from rewarddance.shapes.splits import style_for

DEGRADATION_TEXT = {
    "blur": "is blurry",
    "noise": "is covered in heavy noise",
    "blocks": "has blocky compression artefacts",
    "stripes": "has stripe artefacts across it",
}
QUALITY = "visual quality"
SOURCE = "shapes"


@dataclass
class World:
    """Everything that differs between stills and clips, behind one interface.

    Args:
        split: Which split's distribution to draw from (held-out rules, default style).
        video: Clips of moving shapes instead of still images.
        canvas: Image side in pixels.
        frames: Frames per clip (video only).
        fps: Frames per second stored with clips (video only).
        style: Rendering style; None picks the split's (``alt`` for test-ood).
        size_range: Object bounding sizes in pixels; None gives 18-30 px at 64 px.
        options: Appearance randomisation (noise, jitter, background variation).
        condition: Video only: give each sample a condition image (image-to-video): a fresh render of the first
            frame of a clip that satisfies the prompt (its own jitter and noise, so no candidate's first frame
            equals it pixel for pixel). Pairs: the chosen clip's scene (so a minimally edited rejected clip starts
            from it too and differs in motion); points: the clip's scene, or for a ``no`` clip the satisfying
            scene it was edited from.
    """

    split: str = "train"
    video: bool = False
    canvas: int = 64
    frames: int = vid.FRAMES
    fps: float = vid.FPS
    style: Style | None = None
    size_range: tuple[float, float] | None = None
    options: RenderOptions = field(default_factory=RenderOptions)
    condition: bool = False

    def __post_init__(self) -> None:
        self.style = self.style or style_for(self.split)
        if self.condition and not self.video:
            raise ValueError("condition images are for video samples (image-to-video): set video=True")

    @property
    def tags(self) -> tuple[str, ...]:
        return vid.VIDEO_TAGS if self.video else prompts.TAGS

    @property
    def criteria(self) -> str:
        return "text-video alignment" if self.video else "text-image alignment"

    def prompt(self, tag: str, rng: np.random.Generator) -> dict[str, Any]:
        return (vid.sample_video_prompt if self.video else prompts.sample_prompt)(tag, rng, self.split)

    def scene(self, meta: dict[str, Any], rng: np.random.Generator) -> Scene:
        kw = {"split": self.split, "canvas": self.canvas, "size_range": self.size_range, "style": self.style}
        if self.video:
            return vid.sample_video_scene(meta, rng, frames=self.frames, **kw)
        return prompts.sample_scene(meta, rng, **kw)

    def violating(self, meta: dict[str, Any], rng: np.random.Generator, base: Scene | None = None) -> tuple[Scene, str]:
        kw = {"split": self.split, "canvas": self.canvas, "size_range": self.size_range, "style": self.style}
        if self.video:
            return vid.sample_violating_video_scene(meta, rng, base=base, frames=self.frames, **kw)
        return prompts.sample_violating_scene(meta, rng, base=base, **kw)

    def truth(self, scene: Scene, meta: dict[str, Any]) -> Judgement:
        return vid.video_judgement(scene, meta) if self.video else prompts.scene_judgement(scene, meta)

    def render(self, scene: Scene, rng: np.random.Generator) -> Clip:
        return render_clip(scene, rng, self.options)

    def first_frame(self, scene: Scene, rng: np.random.Generator) -> Image.Image:
        """A condition image: the first frame of ``scene``, rendered on its own (its own jitter and noise)."""
        return render_clip(replace(scene, frames=1), rng, self.options)[0]

    def oracle(self, clip: Clip, meta: dict[str, Any]) -> Judgement:
        return vid.judge_clip(clip, meta) if self.video else judge_image(clip[0], meta)

    @property
    def sample_fps(self) -> float | None:
        return self.fps if self.video else None


class OracleDisagrees(Exception):
    """The oracle's verdict on a render differs from the scene's ground truth; draw again."""


def _checked(
    world: World, scene: Scene, meta: dict[str, Any], rng: np.random.Generator, verify: bool
) -> tuple[Clip, Judgement]:
    """Render ``scene`` and judge the pixels; raise :class:`OracleDisagrees` if they contradict the truth."""
    clip = world.render(scene, rng)
    found = world.oracle(clip, meta)
    if verify and found.correct != world.truth(scene, meta).correct:
        raise OracleDisagrees(meta["prompt"])
    return clip, found


def _references(world: World, meta: dict[str, Any], rng: np.random.Generator, n: int, verify: bool) -> list[Clip]:
    return [_checked(world, world.scene(meta, rng), meta, rng, verify)[0] for _ in range(n)]


def _retry(build: Callable[[], Sample], stats: Counter | None, attempts: int = 20) -> Sample:
    for _ in range(attempts):
        try:
            return build()
        except OracleDisagrees:
            if stats is not None:
                stats["oracle_rejected"] += 1
    raise RuntimeError(f"the oracle disagreed with the ground truth {attempts} times in a row")


def _pick_type(rng: np.random.Generator, quality_fraction: float, tie_fraction: float) -> str:
    if min(quality_fraction, tie_fraction) < 0 or quality_fraction + tie_fraction > 1:
        raise ValueError("quality_fraction and tie_fraction must be >= 0 and sum to at most 1")
    u = rng.random()
    return "tie" if u < tie_fraction else "quality" if u < tie_fraction + quality_fraction else "alignment"


def make_pair(
    rng: np.random.Generator,
    *,
    key: str = "pair",
    world: World | None = None,
    tag: str | None = None,
    references: int = 1,
    quality_fraction: float = 0.2,
    tie_fraction: float = 0.1,
    minimal_fraction: float = 0.5,
    verify: bool = True,
    stats: Counter | None = None,
) -> Sample:
    """One preference pair (see the module docstring for the pair types).

    Args:
        rng: Source of all randomness; the same generator state gives the same sample.
        key: Sample key in the shards.
        world: Split, stills or video, canvas, style and render options.
        tag: GenEval tag (or video tag); None draws one.
        references: How many extra correct renders of the prompt to attach as references.
        quality_fraction: Share of visual-quality pairs.
        tie_fraction: Share of ties.
        minimal_fraction: Share of alignment pairs whose rejected scene edits the chosen one.
        verify: Check every candidate with the pixel oracle and redraw on disagreement.
        stats: Counter that receives ``oracle_rejected`` counts.
    """
    world = world or World()
    tag = tag or str(rng.choice(world.tags))
    pair_type = _pick_type(rng, quality_fraction, tie_fraction)

    def build() -> Sample:
        meta = world.prompt(tag, rng)
        violation = degradation = None
        criteria = world.criteria
        # Candidate A is the chosen one (or, in a tie, either); B the rejected one (or the other).
        b: Scene | None = None
        if pair_type == "tie" and rng.random() < 0.5:  # equally wrong
            (a, va), (b, vb) = world.violating(meta, rng), world.violating(meta, rng)
            violation = f"{va}+{vb}"
        else:
            a = world.scene(meta, rng)
        clip_a, found_a = _checked(world, a, meta, rng, verify)
        if pair_type == "quality":
            degradation = str(rng.choice(DEGRADATIONS))
            b, clip_b, found_b = a, degrade(clip_a, degradation, rng), None
            criteria = QUALITY
        else:
            if pair_type == "alignment":
                b, violation = world.violating(meta, rng, base=a if rng.random() < minimal_fraction else None)
            elif b is None:  # equally right
                b = world.scene(meta, rng)
            clip_b, found_b = _checked(world, b, meta, rng, verify)
        cands = [(clip_a, a, found_a), (clip_b, b, found_b)]
        chosen_first = bool(rng.random() < 0.5)
        if not chosen_first:
            cands.reverse()
        (c1, s1, j1), (c2, s2, j2) = cands
        if pair_type == "tie":
            label, soft = "tie", 0.5
            if j1.correct and j2.correct:
                rationale = "Both images match the prompt."
            else:
                rationale = f"{j1.sentence('Image 1')} {j2.sentence('Image 2')} Neither matches the prompt."
        else:
            label, soft = ("first", 1.0) if chosen_first else ("second", 0.0)
            if pair_type == "alignment":
                rationale = f"{j1.sentence('Image 1')} {j2.sentence('Image 2')}"
            else:
                worse = 2 if chosen_first else 1
                rationale = f"Both images match the prompt, but image {worse} {DEGRADATION_TEXT[degradation]}."
        if world.video:
            rationale = rationale.replace("image", "video").replace("Image", "Video")
        refs = _references(world, meta, rng, references, verify)
        condition = None
        if world.condition:
            # A tie of two wrong clips has no satisfying scene: the condition then shows a fresh one.
            start = a if world.truth(a, meta).correct else world.scene(meta, rng)
            condition = world.first_frame(start, rng)
        return Sample(
            key=key,
            kind="pair",
            prompt=meta["prompt"],
            first=c1,
            second=c2,
            references=refs,
            condition=condition,
            label=label,
            soft_label=soft,
            criteria=criteria,
            rationale=rationale,
            fps=world.sample_fps,
            source=SOURCE,
            category=tag,
            meta={
                "geneval": meta,
                "pair_type": pair_type,
                "violation": violation,
                "degradation": degradation,
                "split": world.split,
                "style": world.style,
                "scenes": {"first": s1.to_dict(), "second": s2.to_dict()},
                "parts": {
                    "first": j1.parts(world.video) if j1 else None,
                    "second": j2.parts(world.video) if j2 else None,
                },
            },
        )

    return _retry(build, stats)


def make_point(
    rng: np.random.Generator,
    *,
    key: str = "point",
    world: World | None = None,
    tag: str | None = None,
    references: int = 0,
    quality_fraction: float = 0.2,
    verify: bool = True,
    stats: Counter | None = None,
) -> Sample:
    """One pointwise yes/no sample; ``yes`` and ``no`` are equally likely.

    An alignment sample (``text-image alignment``) asks whether the image satisfies the prompt:
    ``no`` images violate it in one controlled way. A quality sample (share
    ``quality_fraction``, criteria ``visual quality``) shows a correct image, clean (``yes``) or
    degraded (``no``). The rationale is the oracle's finding as a sentence.

    Args:
        rng: Source of all randomness.
        key: Sample key in the shards.
        world: Split, stills or video, canvas, style and render options.
        tag: GenEval tag (or video tag); None draws one.
        references: Extra correct renders of the prompt to attach as references.
        quality_fraction: Share of visual-quality samples.
        verify: Check the image with the pixel oracle and redraw on disagreement.
        stats: Counter that receives ``oracle_rejected`` counts.
    """
    world = world or World()
    tag = tag or str(rng.choice(world.tags))
    quality = bool(rng.random() < quality_fraction)
    positive = bool(rng.random() < 0.5)
    subject = "The video" if world.video else "The image"

    def build() -> Sample:
        meta = world.prompt(tag, rng)
        violation = degradation = None
        start = None
        if positive or quality:
            scene = world.scene(meta, rng)
        elif world.condition:
            # The condition satisfies the prompt; the "no" clip breaks it from there (an edit of that scene).
            start = world.scene(meta, rng)
            scene, violation = world.violating(meta, rng, base=start)
        else:
            scene, violation = world.violating(meta, rng)
        clip, found = _checked(world, scene, meta, rng, verify)
        condition = world.first_frame(scene if start is None else start, rng) if world.condition else None
        if quality:
            if positive:
                rationale = f"{subject} is clean and sharp."
            else:
                degradation = str(rng.choice(DEGRADATIONS))
                clip = degrade(clip, degradation, rng)
                rationale = f"{subject} {DEGRADATION_TEXT[degradation]}."
        else:
            rationale = found.sentence(subject)
        return Sample(
            key=key,
            kind="point",
            prompt=meta["prompt"],
            image=clip,
            references=_references(world, meta, rng, references, verify),
            condition=condition,
            answer="yes" if positive else "no",
            criteria=QUALITY if quality else world.criteria,
            rationale=rationale,
            fps=world.sample_fps,
            source=SOURCE,
            category=tag,
            meta={
                "geneval": meta,
                "point_type": "quality" if quality else "alignment",
                "violation": violation,
                "degradation": degradation,
                "split": world.split,
                "style": world.style,
                "scene": scene.to_dict(),
                "parts": found.parts(world.video),
            },
        )

    return _retry(build, stats)
