"""Evaluation metrics for reward models, by topic:

* :mod:`rewarddance.metrics.pairwise`: pairwise accuracy (overall, per category, with and without ties),
  calibration, position bias; it states the conventions all of them share (``prob_second``, ``target``,
  predicted ties) and how the ``torchmetrics`` classes sync and are logged.
* :mod:`rewarddance.metrics.benchmarks`: public benchmarks' accuracy conventions (HPSv2, ImageReward,
  PickScore) and the accuracy of scored pairs in the convention of their source.
* :mod:`rewarddance.metrics.rl`: reward statistics for RL (the windowed reward std).

This package imports nothing from rewarddance above the foundation; import the names below from it.
"""

from rewarddance.metrics.benchmarks import (
    SOURCE_CONVENTIONS,
    BenchmarkConvention,
    auto_convention,
    benchmark_accuracy,
    hpsv2_accuracy,
    imagereward_accuracy,
    pickscore_accuracy,
)
from rewarddance.metrics.pairwise import (
    CalibrationError,
    CategoryAccuracy,
    PairwiseAccuracy,
    PositionBias,
    TieCalibratedAccuracy,
    accuracy_with_and_without_ties,
    order_averaged_prob,
    reliability_curve,
)
from rewarddance.metrics.rl import RewardVariance

__all__ = [
    "SOURCE_CONVENTIONS",
    "BenchmarkConvention",
    "CalibrationError",
    "CategoryAccuracy",
    "PairwiseAccuracy",
    "PositionBias",
    "RewardVariance",
    "TieCalibratedAccuracy",
    "accuracy_with_and_without_ties",
    "auto_convention",
    "benchmark_accuracy",
    "hpsv2_accuracy",
    "imagereward_accuracy",
    "order_averaged_prob",
    "pickscore_accuracy",
    "reliability_curve",
]
