"""RL fine-tuning math for diffusers generators: pure functions and small helpers, no Lightning.

Written against :class:`rewarddance.models.adapters.GeneratorAdapter` (step-level access to each pipeline) and
the noise-schedule math of :mod:`rewarddance.models.schedules`.

- :mod:`~rewarddance.rl.refl`: ReFL (ImageReward's reward feedback learning, as RewardDance uses it).
- :mod:`~rewarddance.rl.reference`: best-of-N references by pairwise win counts, cached per prompt.
- :mod:`~rewarddance.rl.grpo`: Flow-GRPO and DDIM-SDE GRPO (SDE sampling with log-probs, group advantages, clipped
  loss, KL).
- :mod:`~rewarddance.rl.diagnostics`: reward-hacking flag and sample diversity.
- :mod:`~rewarddance.rl.rewards`: the reward protocol and its registry.
"""

from rewarddance.rl.diagnostics import HackingCheck, detect_reward_hacking, sample_diversity, trend_slope
from rewarddance.rl.grpo import (
    GRPOLoss,
    SDEStep,
    Trajectory,
    ddim_sde_mean_std,
    default_sde_steps,
    flow_sde_mean_std,
    flow_sde_std,
    flow_sde_step,
    gaussian_log_prob,
    group_advantages,
    grpo_log_values,
    grpo_loss,
    recompute_step,
    sample_trajectory,
    transition_kl,
)
from rewarddance.rl.reference import (
    ReferenceCache,
    ReferenceSelection,
    pairwise_win_matrix,
    select_by_wins,
    select_references,
    win_counts,
)
from rewarddance.rl.refl import ReFLState, anchor_loss, refl_loss, refl_predict_x0, refl_step_latents, sample_refl_step

__all__ = [
    "GRPOLoss",
    "HackingCheck",
    "ReFLState",
    "ReferenceCache",
    "ReferenceSelection",
    "SDEStep",
    "Trajectory",
    "anchor_loss",
    "ddim_sde_mean_std",
    "default_sde_steps",
    "detect_reward_hacking",
    "flow_sde_mean_std",
    "flow_sde_std",
    "flow_sde_step",
    "gaussian_log_prob",
    "group_advantages",
    "grpo_log_values",
    "grpo_loss",
    "pairwise_win_matrix",
    "recompute_step",
    "refl_loss",
    "refl_predict_x0",
    "refl_step_latents",
    "sample_diversity",
    "sample_refl_step",
    "sample_trajectory",
    "select_by_wins",
    "select_references",
    "transition_kl",
    "trend_slope",
    "win_counts",
]
