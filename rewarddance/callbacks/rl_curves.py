"""The RL curves plot: reward mean and band, the reward std over a sliding window, and the oracle's scores.

:class:`~rewarddance.tasks.GeneratorRLTask` records the series (``history``) and saves the plot at fit end and when
the non-finite guard stops a run (:func:`save_rl_curves`); it lands in ``<log dir>/rl_curves.png`` and, when a
``WandbLogger`` is attached, in the wandb run as ``rl/curves``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["plot_rl_history", "save_rl_curves"]


def plot_rl_history(history: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """Save the RL curves: reward mean and batch std band, windowed reward std, oracle scores; returns the path.

    Args:
        history: ``{"train": {"step", "reward_mean", "reward_std", "window_std"}, "eval": {"step", "reward",
            "geneval", "parts", "hacking"}}`` lists, as :class:`~rewarddance.tasks.GeneratorRLTask` records them.
        path: Where to write the PNG.
    """
    # The Agg canvas directly: no pyplot, so the caller's matplotlib backend (a notebook's) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, evaluation = history.get("train", {}), history.get("eval", {})
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    ax_reward, ax_std, ax_oracle = figure.subplots(1, 3)
    steps = list(train.get("step", []))
    if steps:
        mean = torch.tensor(train["reward_mean"], dtype=torch.float64)
        band = torch.tensor(train["reward_std"], dtype=torch.float64)
        ax_reward.plot(steps, mean.tolist(), label="train reward (batch mean)")
        ax_reward.fill_between(steps, (mean - band).tolist(), (mean + band).tolist(), alpha=0.25, label="± batch std")
        ax_std.plot(steps, list(train["window_std"]), color="tab:purple")
    eval_steps = list(evaluation.get("step", []))
    if eval_steps:
        ax_reward.plot(eval_steps, list(evaluation["reward"]), "o-", color="tab:red", label="reward on eval prompts")
        ax_oracle.plot(eval_steps, list(evaluation["geneval"]), "o-", label="GenEval overall (all-or-nothing)")
        ax_oracle.plot(eval_steps, list(evaluation["parts"]), "s--", label="oracle parts mean")
        flagged = [s for s, h in zip(eval_steps, evaluation.get("hacking", [])) if h]
        for step in flagged:
            ax_oracle.axvline(step, color="tab:red", alpha=0.3)
        if flagged:
            ax_oracle.plot([], [], color="tab:red", alpha=0.3, label="reward hacking flagged")
    ax_reward.set(title="reward", xlabel="step")
    ax_std.set(title="reward std, sliding window", xlabel="step")
    ax_oracle.set(title="shapes oracle on the eval prompts", xlabel="step", ylim=(-0.02, 1.02))
    for ax in (ax_reward, ax_oracle):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def save_rl_curves(
    module: L.LightningModule, history: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path | None = None
) -> Path | None:
    """Write the RL curves (:func:`plot_rl_history`) to ``path`` (default ``<log dir>/rl_curves.png``) and log them
    to wandb when a ``WandbLogger`` is attached. Call it on every rank (rank 0 writes); returns the path (None on
    other ranks, or without matplotlib)."""
    attached = module._trainer is not None
    if path is None:
        if not attached:
            raise ValueError("save_plot needs a path when the task is not attached to a Trainer")
        # On every rank: Trainer.log_dir broadcasts rank 0's under DDP.
        path = Path(module.trainer.log_dir or module.trainer.default_root_dir) / "rl_curves.png"
    if attached and not module.trainer.is_global_zero:
        return None
    try:
        written = plot_rl_history(history, path)
    except ImportError:
        rank_zero_warn("matplotlib is not installed: no RL plot (pip install matplotlib)")
        return None
    if attached:
        for logger in module.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="rl/curves", images=[str(written)], step=module.global_step)
    return written
