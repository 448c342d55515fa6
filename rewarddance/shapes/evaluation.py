"""The pixel oracle as the evaluator of GenEval-format metadata (registered by :mod:`.plugin`).

Generic evaluation (:mod:`rewarddance.callbacks.evaluation`) asks the evaluator registry for the judge of GenEval
metadata; in this project that is the shapes world's oracle: it detects shapes from pixels
(:func:`~.oracle.judge_image`) or tracks them through a clip (:func:`~.video.judge_clip`) and applies GenEval's
rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from rewarddance.callbacks.evaluation import Verdict
from rewarddance.shapes.oracle import judge_image
from rewarddance.shapes.video import judge_clip

__all__ = ["PARTS", "ShapesOracleEvaluator"]

PARTS: tuple[str, ...] = ("colors", "count", "shape", "position", "mean")
"""Per-part oracle scores reported next to the all-or-nothing verdict (see ``evaluate_parts``)."""


class ShapesOracleEvaluator:
    """GenEval's verdict and per-part scores of shapes images and clips, from pixels alone."""

    parts = PARTS
    video_parts = (*PARTS, "motion")

    def judge(self, image: Image.Image | np.ndarray, metadata: Mapping[str, Any]) -> Verdict:
        judgement = judge_image(image, dict(metadata))
        return Verdict(judgement.correct, judgement.parts())

    def judge_video(self, frames: Sequence[Image.Image | np.ndarray], metadata: Mapping[str, Any]) -> Verdict:
        judgement = judge_clip(frames, dict(metadata))
        return Verdict(judgement.correct, judgement.parts(video=True))

    def __repr__(self) -> str:
        return "ShapesOracleEvaluator()"
