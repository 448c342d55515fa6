"""LightningModules ("tasks"): orchestration only; math lives in ``losses.py`` and ``models/``.

Short class names resolve in YAML (``class_path: GenerativeRewardTask``) through this package.
"""

from rewarddance.tasks.generator_rl import GeneratorRLTask
from rewarddance.tasks.reward import GenerativeRewardTask, RegressiveRewardTask, RewardTask

# LEAD: the caption-pretraining task (rewarddance/tasks/pretrain.py, another engineer's file) can be
# exported here too once it has landed: `from rewarddance.tasks.pretrain import CaptionPretrainTask`.

__all__ = ["GenerativeRewardTask", "GeneratorRLTask", "RegressiveRewardTask", "RewardTask"]
