"""The metrics of one evaluation set of a reward task, and where its categories come from.

:class:`EvalSetMetrics` bundles what the reward tasks log per set (``val``, ``test-id``, ...):
pairwise accuracy (with and without ties), per-category accuracy, calibration, position bias and
order-averaged accuracy (pairwise paradigm), point accuracy, the mean evaluation loss, the counts
the collator reported, and a few sample pairs for a wandb table.

Categories are data, not code: a task's ``categories`` argument, else the ``categories`` a set's
``manifest.json`` declares (the shapes builder writes them; :func:`manifest_categories`); pairs of
any other category count as ``other``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from rewarddance.data.writer import MANIFEST
from rewarddance.errors import BadFileError
from rewarddance.judge.losses import probability_cross_entropy_sum
from rewarddance.metrics import CalibrationError, CategoryAccuracy, PairwiseAccuracy, PositionBias, order_averaged_prob

TABLE_ROWS = 16
"""Rows of the table of sample pairs per evaluation set and epoch."""


def manifest_categories(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The categories the manifests of a shard source declare (``"categories"``: name -> count).

    Folders holding ``manifest.json`` and ``manifest.json`` paths are read; other sources (shard
    paths, brace patterns, URLs) declare none. Names are returned in order of first appearance.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    names: dict[str, None] = {}
    for item in items:
        path = Path(os.fspath(item).removeprefix("file://"))
        if path.is_dir():
            path = path / MANIFEST
        if path.name != MANIFEST or not path.is_file():
            continue
        try:
            declared = json.loads(path.read_text()).get("categories") or {}
        except json.JSONDecodeError as err:
            raise BadFileError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from err
        names.update(dict.fromkeys(str(name) for name in declared))
    return list(names)


class EvalSetMetrics(nn.Module):
    """The metrics of one evaluation set (see the module docstring).

    Args:
        categories: Category names for per-category accuracy; others count as ``other``.
    """

    def __init__(self, categories: Sequence[str]) -> None:
        super().__init__()
        self.pairs = PairwiseAccuracy()
        self.categories = CategoryAccuracy(categories, unknown="other")
        self.ece = CalibrationError()
        self.bias = PositionBias()
        self.order_averaged = PairwiseAccuracy()
        self.points = PairwiseAccuracy()
        self.point_ece = CalibrationError()
        self.loss_sum = 0.0
        self.loss_count = 0
        self.counts: Counter[str] = Counter()
        self.table: list[dict[str, Any]] = []

    def add_pairs(self, prob: Tensor, target: Tensor, categories: list[str]) -> None:
        """Pairs scored: P(second better) against the target, each with its category."""
        self.pairs.update(prob, target)
        self.categories.update(prob, target, categories)
        self.ece.update(prob, target)
        self.loss_sum += float(probability_cross_entropy_sum(prob, target))
        self.loss_count += len(prob)

    def add_previews(self, previews: list[dict[str, Any]], prob: Tensor) -> None:
        """Sample pairs for the table (up to :data:`TABLE_ROWS`), with the model's P(yes) of each."""
        room = TABLE_ROWS - len(self.table)
        self.table += [{**p, "P(yes)": float(prob[i])} for i, p in enumerate(previews[:room])]

    def add_orders(self, ab: Tensor, ba: Tensor, target: Tensor) -> None:
        """Both orders of the same pairs (pairwise paradigm): position bias and order-averaged accuracy."""
        self.bias.update(ab, ba)
        self.order_averaged.update(order_averaged_prob(ab, ba), target)

    def add_points(self, p_yes: Tensor, target: Tensor) -> None:
        """Point samples scored: P(yes) against the target."""
        self.points.update(p_yes, target)
        self.point_ece.update(p_yes, target)

    def compute(self) -> dict[str, float]:
        # Only metrics that saw data are computed (and logged): a set may hold no pairs or no points.
        out: dict[str, float] = {}
        if self.pairs.update_called:
            pairs = self.pairs.compute()
            out.update({k: float(pairs[k]) for k in ("acc", "acc_with_ties", "n", "n_ties")})
            out["ece"] = float(self.ece.compute())
            out.update({f"acc_{c}": float(v) for c, v in self.categories.compute().items() if not math.isnan(float(v))})
        if self.bias.update_called:
            bias = self.bias.compute()
            out["position_bias_rate"] = float(bias["position_bias_rate"])
            out["consistency_rate"] = float(bias["consistency_rate"])
            out["acc_order_averaged"] = float(self.order_averaged.compute()["acc"])
        if self.points.update_called:
            points = self.points.compute()
            out["point_acc"] = float(points["acc"])
            out["point_ece"] = float(self.point_ece.compute())
            out["point_n"] = float(points["n"])
        if self.loss_count:
            out["loss"] = self.loss_sum / self.loss_count
        out.update({k: float(v) for k, v in self.counts.items()})
        return out

    def reset(self) -> None:
        for metric in (
            self.pairs,
            self.categories,
            self.ece,
            self.bias,
            self.order_averaged,
            self.points,
            self.point_ece,
        ):
            metric.reset()
        self.loss_sum, self.loss_count = 0.0, 0
        self.counts = Counter()
        self.table = []


def log_pair_table(loggers: Sequence[Any], name: str, rows: list[dict[str, Any]], step: int) -> None:
    """The table of sample pairs (:attr:`EvalSetMetrics.table`) with their P(yes) and the ground truth,
    logged as ``<name>/pairs`` to the wandb loggers among ``loggers`` (others are left alone)."""
    from lightning.pytorch.loggers import WandbLogger  # wandb is optional: imported only to log to it

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not rows or not wandb_loggers:
        return
    import wandb

    columns = list(rows[0])
    data = [[wandb.Image(v) if k.startswith("image") else v for k, v in row.items()] for row in rows]
    for logger in wandb_loggers:
        logger.log_table(key=f"{name}/pairs", columns=columns, data=data, step=step)
