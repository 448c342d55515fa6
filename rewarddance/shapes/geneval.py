"""GenEval-style scoring of generated images with the pixel oracle: per tag, overall, per part."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from rewarddance.shapes.oracle import judge_image

PARTS: tuple[str, ...] = ("colors", "count", "shape", "position", "mean")
"""Per-part oracle scores reported next to the all-or-nothing verdict (see ``evaluate_parts``)."""


def geneval_summary(tags: Sequence[str], correct: Sequence[bool | float]) -> dict[str, float]:
    """GenEval-style scores: accuracy per tag, and ``overall`` = the mean over tags of the per-tag accuracies.

    Args:
        tags: The tag of each judged sample.
        correct: The oracle's all-or-nothing verdict of each sample.

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


def geneval_report(images: Sequence[Image.Image | np.ndarray], metadata: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Judge each image against its prompt's metadata and aggregate as GenEval does.

    Returns:
        ``geneval``: the mean over tags of each tag's fraction of correct images (GenEval's overall
        score); ``tag/<tag>``: that fraction per tag; ``correct``: the fraction over all images;
        ``parts/<part>``: the mean per-part score over all images; ``images``: how many were judged.
    """
    if len(images) != len(metadata):
        raise ValueError(f"{len(images)} images but {len(metadata)} metadata entries")
    if not images:
        raise ValueError("no images to judge")
    judgements = [judge_image(image, meta) for image, meta in zip(images, metadata, strict=True)]
    correct = [j.correct for j in judgements]
    tags = geneval_summary([str(meta.get("tag", "other")) for meta in metadata], correct)
    report = {"geneval": tags.pop("overall")}
    report.update({f"tag/{tag}": acc for tag, acc in tags.items()})
    report["correct"] = float(np.mean(correct))
    parts = defaultdict(list)
    for judgement in judgements:
        for name, score in judgement.parts().items():
            parts[name].append(score)
    report.update({f"parts/{name}": float(np.mean(parts[name])) for name in PARTS if parts[name]})
    report["images"] = float(len(images))
    return report


def format_report(report: dict[str, float]) -> str:
    """One line: overall, per tag, per part."""
    tags = " ".join(f"{k[4:]} {v:.2f}" for k, v in report.items() if k.startswith("tag/"))
    parts = " ".join(f"{k[6:]} {v:.2f}" for k, v in report.items() if k.startswith("parts/"))
    return f"geneval {report['geneval']:.3f} | {tags} | parts: {parts} | {int(report['images'])} images"
