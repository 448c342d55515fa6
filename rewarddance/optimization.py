"""Optimisation the tasks share: a warmup-cosine learning rate sized to the trainer's step budget.

Configs name the schedule ``rewarddance.tasks.pretrain.WarmupCosineLR`` (re-exported there); the
tasks pass each scheduler through :func:`sized_to_budget` and build their optimizer with
:func:`configure_optimization`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class WarmupCosineLR(LambdaLR):
    """Linear warmup to the optimizer's lr, then cosine decay to ``min_ratio`` times it.

    Args:
        optimizer: The optimizer (LightningCLI passes it; configure the rest in YAML).
        warmup_steps: Steps of linear warmup from 0.
        total_steps: Step at which the cosine reaches its minimum (stays there afterwards); null: the
            trainer's ``max_steps``, or without one Lightning's estimate from ``max_epochs`` (the task
            fills it in, see :func:`sized_to_budget`), so overriding ``--trainer.max_steps`` resizes the
            schedule too.
        min_ratio: Final lr as a fraction of the peak lr.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 200,
        total_steps: int | None = 10000,
        min_ratio: float = 0.1,
    ) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio
        self.budget: Callable[[], int] | None = None
        """Where ``total_steps`` comes from when it is None (set by :func:`sized_to_budget`)."""
        super().__init__(optimizer, self._factor)

    def state_dict(self) -> dict[str, Any]:
        # LambdaLR saves every attribute; the budget callback holds the trainer, which is no checkpoint content.
        return {k: v for k, v in super().state_dict().items() if k != "budget"}

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step == self.warmup_steps:
            return 1.0  # the peak, whatever the length: LambdaLR asks for step 0 before any budget is known
        if self.total_steps is None:
            if self.budget is None:
                raise ValueError("WarmupCosineLR: total_steps is null and no trainer budget was given")
            self.total_steps = self.budget()
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def sized_to_budget(scheduler: Any, trainer: L.Trainer) -> Any:
    """Give a :class:`WarmupCosineLR` configured without ``total_steps`` the trainer's step budget.

    The budget is ``trainer.max_steps``, or where that is unset (-1) Lightning's estimate from
    ``max_epochs`` and the batches per epoch. Called by the tasks' ``configure_optimizers``; other
    schedulers pass through.
    """
    if not isinstance(scheduler, WarmupCosineLR) or scheduler.total_steps is not None:
        return scheduler
    if trainer.max_steps > 0:
        scheduler.total_steps = trainer.max_steps
    else:
        # The estimate sets up the train loader to count its batches. Asked here, in configure_optimizers, that
        # would happen before a resumed fit restores the loader's state, which Lightning then skips; so the
        # scheduler asks on its first decaying step, when training has begun.
        scheduler.budget = functools.partial(_estimated_steps, trainer)
    return scheduler


def _estimated_steps(trainer: L.Trainer) -> int:
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps) or steps < 1:  # inf: max_epochs -1; -1: an endless iterable
        raise ValueError(
            "WarmupCosineLR without total_steps decays over the training steps, which are unbounded here: "
            "set trainer.max_steps or the scheduler's total_steps"
        )
    return int(steps)


def configure_optimization(
    params: Iterable[Any],
    optimizer: OptimizerFactory | None,
    scheduler: SchedulerFactory | None,
    trainer: L.Trainer | None,
    default_lr: float | None = None,
) -> Any:
    """What a task's ``configure_optimizers`` returns: the optimizer, and the scheduler stepped every step.

    Args:
        params: Parameters or parameter groups.
        optimizer: The configured optimizer factory; None: AdamW at ``default_lr`` without weight decay.
        scheduler: The configured scheduler factory (sized with :func:`sized_to_budget`); None: none.
        trainer: The trainer whose step budget sizes the schedule (needed only with a scheduler).
        default_lr: The learning rate of the default AdamW (required when ``optimizer`` is None).
    """
    if optimizer is None:
        if default_lr is None:
            raise ValueError("configure_optimization: no optimizer configured and no default_lr given")
        built = torch.optim.AdamW(params, lr=default_lr, weight_decay=0.0)
    else:
        built = optimizer(params)
    if scheduler is None:
        return built
    if trainer is None:
        raise ValueError("configure_optimization: a scheduler is sized to the trainer's step budget; pass the trainer")
    sized = sized_to_budget(scheduler(built), trainer)
    return {"optimizer": built, "lr_scheduler": {"scheduler": sized, "interval": "step"}}
