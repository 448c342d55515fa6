"""RL fine-tuning math for diffusers generators: pure functions and small helpers, no Lightning.

- :mod:`~rewarddance.rl.schedules`: clean-sample prediction and re-noising for VP, VE and flow latents.
- :mod:`~rewarddance.rl.denoising`: step-level access to each pipeline (prepare, denoise, predict x0, decode).
- :mod:`~rewarddance.rl.refl`: ReFL (ImageReward's reward feedback learning, as RewardDance uses it).
- :mod:`~rewarddance.rl.reference`: best-of-N references by pairwise win counts, cached per prompt.
- :mod:`~rewarddance.rl.grpo`: Flow-GRPO and DDIM-SDE GRPO (SDE sampling with log-probs, group advantages, clipped
  loss, KL).
- :mod:`~rewarddance.rl.diagnostics`: reward-hacking flag and sample diversity.
- :mod:`~rewarddance.inference.search`: inference-time search over paths.
"""

from rewarddance.inference.search import PathSearchResult, search_over_paths
from rewarddance.rl.denoising import ADAPTERS, DenoisingContext, PipelineAdapter, adapter_for
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
from rewarddance.rl.schedules import flow_renoise, predict_x0_ddpm, predict_x0_flow, vp_renoise

__all__ = [
    "ADAPTERS",
    "DenoisingContext",
    "GRPOLoss",
    "HackingCheck",
    "PathSearchResult",
    "PipelineAdapter",
    "ReFLState",
    "ReferenceCache",
    "ReferenceSelection",
    "SDEStep",
    "Trajectory",
    "adapter_for",
    "anchor_loss",
    "ddim_sde_mean_std",
    "default_sde_steps",
    "detect_reward_hacking",
    "flow_renoise",
    "flow_sde_mean_std",
    "flow_sde_std",
    "flow_sde_step",
    "gaussian_log_prob",
    "group_advantages",
    "grpo_loss",
    "pairwise_win_matrix",
    "predict_x0_ddpm",
    "predict_x0_flow",
    "recompute_step",
    "refl_loss",
    "refl_predict_x0",
    "refl_step_latents",
    "sample_diversity",
    "sample_refl_step",
    "sample_trajectory",
    "search_over_paths",
    "select_by_wins",
    "select_references",
    "transition_kl",
    "trend_slope",
    "vp_renoise",
    "win_counts",
]
