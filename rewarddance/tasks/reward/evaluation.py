"""Evaluation of the reward tasks: validation and test steps, per-set metrics, their logging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from rewarddance.judge.batch import RewardBatch
from rewarddance.judge.evaluation import EvalSetMetrics, log_pair_table, manifest_categories

EvalStage = Literal["validate", "test"]


class RewardEvaluation(L.LightningModule):
    """The evaluation half of :class:`rewarddance.tasks.reward.RewardTask`: each evaluation set
    (``val``, ``test-id``, ...) gets its own :class:`rewarddance.judge.evaluation.EvalSetMetrics`,
    logged as ``<set>/<metric>`` at the end of the epoch.

    A task implements :meth:`row_scores` and may override :meth:`yes_probability`,
    :meth:`pair_probability` and :meth:`evaluate_orders`.
    """

    eval_metrics: Any
    results: dict[str, dict[str, float]]

    # -- scoring hooks ---------------------------------------------------------------------------

    def row_scores(self, batch: RewardBatch) -> Tensor:
        """Scores per row: ``[R, 2]`` log P(yes), log P(no) (generative) or ``[R]`` rewards (regressive)."""
        raise NotImplementedError

    def yes_probability(self, scores: Tensor) -> Tensor | None:
        """P(yes) per row from :meth:`row_scores`, or None for a model without one (regressive)."""
        return None

    def pair_probability(self, scores: Tensor, batch: RewardBatch) -> Tensor:
        """P(second better) per pair from row scores; default BT on two pointwise scores."""
        first, second = batch.pair_rows[:, 0], batch.pair_rows[:, 1]
        return torch.sigmoid(scores[second] - scores[first])

    # -- per-set metrics -------------------------------------------------------------------------

    @property
    def _datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def set_name(self, stage: EvalStage, dataloader_idx: int) -> str:
        """The name of an evaluation set (``val``, ``test-id``, ...), from the DataModule when it has names."""
        datamodule = self._datamodule
        if datamodule is not None and hasattr(datamodule, "set_name"):
            return datamodule.set_name(stage, dataloader_idx)
        base = "val" if stage == "validate" else "test"
        return base if dataloader_idx == 0 else f"{base}{dataloader_idx}"

    def categories_for(self, stage: EvalStage, name: str) -> list[str]:
        """The categories of evaluation set ``name``: the ``categories`` argument, else its manifest's."""
        if self.hparams.categories:
            return list(self.hparams.categories)
        spec = getattr(self._datamodule, "val" if stage == "validate" else "test", None)
        source = spec.get(name) if isinstance(spec, Mapping) else spec
        return manifest_categories(source) if source is not None else []

    def metrics_for(self, stage: EvalStage, name: str) -> EvalSetMetrics:
        key = name.replace(".", "_")
        if key not in self.eval_metrics:
            self.eval_metrics[key] = EvalSetMetrics(self.categories_for(stage, name)).to(self.device)
        return self.eval_metrics[key]  # type: ignore[return-value]

    def evaluate_batch(self, batch: RewardBatch, metrics: EvalSetMetrics) -> None:
        """Score a batch and update one set's metrics (padding repeats left out)."""
        for name, value in batch.counts.items():
            metrics.counts[name] += value
        if batch.inputs is None:
            return
        scores = self.row_scores(batch).detach().float()
        keep = ~batch.pair_padding
        if keep.any():
            prob = self.pair_probability(scores, batch)[keep].clamp(0, 1)
            categories = [c for c, k in zip(batch.pair_categories, keep.tolist()) if k]
            metrics.add_pairs(prob, batch.pair_targets[keep], categories)
            metrics.add_previews(batch.previews, self.pair_probability(scores, batch))
            self.evaluate_orders(scores, batch, metrics)
        keep_points = ~batch.point_padding
        p_yes = self.yes_probability(scores)
        if p_yes is not None and keep_points.any():
            metrics.add_points(p_yes[batch.point_rows][keep_points].clamp(0, 1), batch.point_targets[keep_points])

    def evaluate_orders(self, scores: Tensor, batch: RewardBatch, metrics: EvalSetMetrics) -> None:
        """Position-bias metrics, for tasks that ask both orders (the pairwise paradigm)."""

    def _eval_step(self, batch: RewardBatch, stage: EvalStage, dataloader_idx: int) -> None:
        self.evaluate_batch(batch, self.metrics_for(stage, self.set_name(stage, dataloader_idx)))

    def validation_step(self, batch: RewardBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "validate", dataloader_idx)

    def test_step(self, batch: RewardBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def _log_eval(self, stage: EvalStage) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name in self._stage_set_names(stage):
            key = name.replace(".", "_")
            if key not in self.eval_metrics:
                continue
            metrics: EvalSetMetrics = self.eval_metrics[key]  # type: ignore[assignment]
            values = metrics.compute()
            if self.trainer.is_global_zero:
                log_pair_table(self.loggers, name, metrics.table, self.global_step)
            metrics.reset()
            out[name] = values
            self.results[name] = values
            for metric, value in values.items():
                self.log(f"{name}/{metric}", value, add_dataloader_idx=False, prog_bar=metric == "acc")
        return out

    def _stage_set_names(self, stage: EvalStage) -> list[str]:
        names = list(getattr(self._datamodule, "set_names", {}).get(stage, []))
        if not names:
            loaders = self.trainer.val_dataloaders if stage == "validate" else self.trainer.test_dataloaders
            count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
            names = [self.set_name(stage, i) for i in range(count)]
        return names

    def on_validation_epoch_end(self) -> None:
        self._log_eval("validate")

    def on_test_epoch_end(self) -> None:
        results = self._log_eval("test")
        if self.trainer.is_global_zero and results:
            summary = " | ".join(
                f"{name}: acc {values.get('acc', float('nan')):.3f}" for name, values in results.items()
            )
            print(f"[rewarddance] test accuracy: {summary}")
