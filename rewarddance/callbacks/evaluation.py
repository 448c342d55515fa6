"""Judging generated samples against their prompts' metadata, GenEval-style: the evaluator seam.

A prompt travels with its metadata (:mod:`rewarddance.data.prompts`): GenEval's format, ``{"tag", "include",
"exclude"?, "prompt"}``. An :class:`Evaluator` judges a sample against that metadata (an all-or-nothing verdict and
per-part scores); :data:`EVALUATORS` maps a metadata format to the evaluator that judges it. Generic code (the RL
task's periodic evaluation, generator pretraining, the ``evaluate`` command) asks for
``EVALUATORS[GENEVAL]`` and never names a world: the synthetic shapes world's plug-in registers its pixel oracle
for the format (``rewarddance.shapes.plugin``), and a plug-in with a real detector would register its own.

The aggregation is GenEval's: the fraction of correct samples per tag, and the overall score is the mean over tags
of those fractions (not over samples), so a tag with many prompts does not outweigh the others.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from rewarddance.registry import Registry

__all__ = [
    "EVALUATORS",
    "GENEVAL",
    "Evaluator",
    "Verdict",
    "format_report",
    "geneval_report",
    "geneval_summary",
    "has_geneval_metadata",
]

GENEVAL = "geneval"
"""The metadata format of prompt items: GenEval's ``{"tag", "include", "exclude"?, "prompt"}``."""


@dataclass(frozen=True)
class Verdict:
    """An evaluator's judgement of one sample.

    Attributes:
        correct: GenEval's all-or-nothing verdict: every requirement of the prompt holds.
        parts: Per-part scores in [0, 1] (e.g. ``colors``, ``count``, ``mean``), denser than the verdict.
    """

    correct: bool
    parts: Mapping[str, float]


class Evaluator(Protocol):
    """Judges generated images and clips against their prompts' metadata.

    Attributes:
        parts: Names of the per-part scores an image verdict reports, in report order.
        video_parts: The same for a clip.
    """

    parts: tuple[str, ...]
    video_parts: tuple[str, ...]

    def judge(self, image: Image.Image | np.ndarray, metadata: Mapping[str, Any]) -> Verdict:
        """The verdict on one image."""
        ...

    def judge_video(self, frames: Sequence[Image.Image | np.ndarray], metadata: Mapping[str, Any]) -> Verdict:
        """The verdict on one clip, given as its frames."""
        ...


EVALUATORS: Registry[Evaluator] = Registry(
    "evaluator",
    hint="Evaluators are registered per metadata format by plug-ins (the shapes world registers its pixel oracle "
    "for 'geneval' through the rewarddance.plugins entry point).",
)
"""Metadata format (:data:`GENEVAL`) to the evaluator that judges samples against metadata of that format."""


def has_geneval_metadata(metadata: Mapping[str, Any] | None) -> bool:
    """Whether a prompt's metadata says what to judge (GenEval's ``include``); other prompts cannot be evaluated."""
    return bool((metadata or {}).get("include"))


def geneval_summary(tags: Sequence[str], correct: Sequence[bool | float]) -> dict[str, float]:
    """GenEval-style scores: accuracy per tag, and ``overall`` = the mean over tags of the per-tag accuracies.

    Args:
        tags: The tag of each judged sample.
        correct: The all-or-nothing verdict of each sample.

    Returns:
        ``{tag: accuracy, ..., "overall": mean}`` (tags in sorted order; ``overall`` NaN without samples).
    """
    if len(tags) != len(correct):
        raise ValueError(f"{len(tags)} tags for {len(correct)} verdicts")
    totals: dict[str, list[float]] = defaultdict(list)
    for tag, ok in zip(tags, correct, strict=True):
        totals[tag].append(float(ok))
    out = {tag: float(np.mean(v)) for tag, v in sorted(totals.items())}
    out["overall"] = float(np.mean(list(out.values()))) if out else math.nan
    return out


def geneval_report(
    images: Sequence[Image.Image | np.ndarray],
    metadata: Sequence[Mapping[str, Any]],
    evaluator: Evaluator | None = None,
) -> dict[str, float]:
    """Judge each image against its prompt's metadata and aggregate as GenEval does.

    Args:
        images: The images, one per metadata entry.
        metadata: Each image's prompt metadata (GenEval format).
        evaluator: The judge; default: the one registered for GenEval metadata (``EVALUATORS[GENEVAL]``).

    Returns:
        ``geneval``: the mean over tags of each tag's fraction of correct images (GenEval's overall
        score); ``tag/<tag>``: that fraction per tag; ``correct``: the fraction over all images;
        ``parts/<part>``: the mean per-part score over all images; ``images``: how many were judged.
    """
    if len(images) != len(metadata):
        raise ValueError(f"{len(images)} images but {len(metadata)} metadata entries")
    if not images:
        raise ValueError("no images to judge")
    judge = evaluator if evaluator is not None else EVALUATORS[GENEVAL]
    verdicts = [judge.judge(image, meta) for image, meta in zip(images, metadata, strict=True)]
    correct = [v.correct for v in verdicts]
    tags = geneval_summary([str(meta.get("tag", "other")) for meta in metadata], correct)
    report = {"geneval": tags.pop("overall")}
    report.update({f"tag/{tag}": acc for tag, acc in tags.items()})
    report["correct"] = float(np.mean(correct))
    parts = defaultdict(list)
    for verdict in verdicts:
        for name, score in verdict.parts.items():
            parts[name].append(score)
    report.update({f"parts/{name}": float(np.mean(parts[name])) for name in judge.parts if parts[name]})
    report["images"] = float(len(images))
    return report


def format_report(report: Mapping[str, float]) -> str:
    """One line: overall, per tag, per part."""
    tags = " ".join(f"{k[4:]} {v:.2f}" for k, v in report.items() if k.startswith("tag/"))
    parts = " ".join(f"{k[6:]} {v:.2f}" for k, v in report.items() if k.startswith("parts/"))
    return f"geneval {report['geneval']:.3f} | {tags} | parts: {parts} | {int(report['images'])} images"
