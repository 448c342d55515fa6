"""Weight averaging over the tail of the step budget (stochastic weight averaging, SWA).

With a learning rate that decays to 0 the last weights are already a good end point, but they are one draw of the
last batches' noise: an equal-weight average of snapshots taken along the schedule's second half lands nearer the
middle of the basin the run settled in (Izmailov et al., 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization"). :class:`TailAveraging` is Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` with
the schedule this project uses: a snapshot every ``every_n_steps`` optimizer steps after ``start_fraction`` of
``trainer.max_steps``, the last step always included, no snapshot (and no swap) before the window opens.

What it changes, as Lightning's callback does: validation inside the window, the test after fit, the export and
every checkpoint's ``state_dict`` hold the average; the weights being trained travel in the checkpoint's
``current_model_state``, so ``fit --ckpt_path`` resumes them exactly (the average is restored with them). Before the
window nothing is swapped or saved differently, so monitoring at the start of a run reads the weights being trained.
It keeps a full copy of the module (``device: cpu`` puts it in host memory) and refuses sharded (FSDP, model-parallel)
strategies, which Lightning's callback does not support.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from rewarddance.errors import UsageError

__all__ = ["TailAveraging"]


class TailAveraging(WeightAveraging):
    """Equal-weight average of the weights every ``every_n_steps`` steps after ``start_fraction`` of ``max_steps``.

    Args:
        start_fraction: Where the window opens, as a fraction of ``trainer.max_steps`` (0.5: the second half).
        every_n_steps: Steps between two snapshots; the run's last step is always one.
        device: Where the average lives (default: the model's device; ``cpu`` saves accelerator memory).
    """

    def __init__(self, start_fraction: float = 0.5, every_n_steps: int = 100, device: str | None = None) -> None:
        if not 0.0 <= start_fraction < 1.0:
            raise UsageError(f"TailAveraging: start_fraction must be in [0, 1), got {start_fraction}")
        if every_n_steps < 1:
            raise UsageError(f"TailAveraging: every_n_steps must be >= 1, got {every_n_steps}")
        # Buffers are copied, not averaged: this project's are constants (rotary frequencies), some not float.
        super().__init__(device=device, use_buffers=False)
        self.start_fraction = start_fraction
        self.every_n_steps = every_n_steps
        self._start_step = 0
        self._max_steps = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            if trainer.max_steps is None or trainer.max_steps <= 0:
                raise UsageError(
                    "TailAveraging averages over a fraction of trainer.max_steps, which is not set: give the run a "
                    "step budget (--trainer.max_steps N) or remove the callback"
                )
            if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
                raise UsageError(
                    f"TailAveraging keeps a whole copy of the model and cannot average sharded weights "
                    f"({type(trainer.strategy).__name__}): remove the callback, or train with DDP"
                )
            self._max_steps = trainer.max_steps
            self._start_step = int(self.start_fraction * trainer.max_steps)
        with warnings.catch_warnings():
            # Lightning warns for every task that overrides configure_model, sharded or not; sharding is refused above.
            warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback with a model that")
            super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        step = step_idx + 1  # optimizer steps done
        return step > self._start_step and (step % self.every_n_steps == 0 or step == self._max_steps)

    @property
    def snapshots(self) -> int:
        """How many snapshots the average holds so far."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    # Until the first snapshot the average model is the copy taken at setup: nothing to swap in or save.

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.snapshots:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.snapshots:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.snapshots:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.snapshots:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint from before the window has no average: the fresh copy taken at setup is right.
        if "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
