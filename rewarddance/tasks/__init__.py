"""LightningModules ("tasks"): orchestration only; math lives in ``losses.py`` and ``models/``.

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
