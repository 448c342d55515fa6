"""LightningModules ("tasks"): they wire data, model and optimiser together and log; the judge's math,
batches, metrics and export live in :mod:`rewarddance.judge`, the builders in :mod:`rewarddance.models`.

Short class names resolve in YAML (``class_path: GenerativeRewardTask``) through this package.
"""

from rewarddance.tasks.generator_pretrain import GeneratorPretrainTask
from rewarddance.tasks.generator_rl import GeneratorRLTask
from rewarddance.tasks.pretrain import CaptionPretrainTask
from rewarddance.tasks.reward import GenerativeRewardTask, RegressiveRewardTask, RewardTask

__all__ = [
    "CaptionPretrainTask",
    "GenerativeRewardTask",
    "GeneratorPretrainTask",
    "GeneratorRLTask",
    "RegressiveRewardTask",
    "RewardTask",
]
