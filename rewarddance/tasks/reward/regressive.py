"""The regressive baseline: a scalar head on the VLM, Bradley-Terry on preference pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rewarddance.data.schema import Sample
from rewarddance.judge.batch import RewardBatch, SampleRows
from rewarddance.judge.losses import bradley_terry_loss
from rewarddance.judge.prompting import Query
from rewarddance.judge.readout import RewardHead, hidden_size, last_hidden_state, regressive_rewards
from rewarddance.tasks.reward.base import RewardTask


class RegressiveRewardTask(RewardTask):
    """The paper's regressive baseline: a scalar head on the VLM, Bradley-Terry on preference pairs.

    r = w . h + b, with h the language model's final hidden state at the last position of the
    template's pointwise question (no answer word is involved). Loss per pair:
    ``-[p log sigmoid(r1 - r2) + (1 - p) log sigmoid(r2 - r1)]`` with p = P(first better) (soft
    labels and ties as 0.5 honoured); ``prob_second = sigmoid(r2 - r1)`` for the metrics. Point
    samples have no pair to rank and are skipped (counted as ``points_skipped``).

    Args:
        head_lr: Learning rate of the head (its own parameter group); null: the optimizer's.
        **kwargs: See :class:`RewardTask`.
    """

    kind = "regressive"

    def __init__(self, head_lr: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head: RewardHead | None = None

    def build_heads(self) -> None:
        if self.head is None:
            self.head = RewardHead(hidden_size(self._backbone().model))

    def parameter_groups(self) -> Any:
        if self.hparams.head_lr is None:
            return super().parameter_groups()
        assert self.head is not None
        head = {id(p) for p in self.head.parameters()}
        body = [p for p in self.parameters() if p.requires_grad and id(p) not in head]
        return [{"params": body}, {"params": list(self.head.parameters()), "lr": self.hparams.head_lr}]

    def sample_rows(self, sample: Sample) -> SampleRows | str:
        if sample.kind != "pair":
            return f"{sample.kind}s_skipped"
        assert sample.first is not None and sample.second is not None
        first = self.make_query("pointwise", sample, [sample.first])
        second = self.make_query("pointwise", sample, [sample.second])
        return SampleRows([first, second], [math.nan, math.nan], [0, 0], pair_target=self.pair_target(sample))

    def row_scores(self, batch: RewardBatch) -> Tensor:
        assert batch.inputs is not None and self.head is not None
        return self.head(last_hidden_state(self.model, batch.inputs))

    def loss_terms(self, batch: RewardBatch) -> dict[str, Tensor]:
        scores = self.row_scores(batch)
        pairs = batch.pair_rows[batch.pair_train]
        if not len(pairs):
            return {"pair": scores.sum() * 0.0}
        t_first = 1 - batch.pair_targets[batch.pair_train]
        return {"pair": bradley_terry_loss(scores[pairs[:, 0]], scores[pairs[:, 1]], t_first).mean()}

    @torch.no_grad()
    def score_queries(self, queries: Sequence[Query]) -> Tensor:
        assert self.head is not None
        was_training = self.training
        self.eval()
        try:
            rewards, _ = regressive_rewards(
                self._backbone(), self.head, self.template, queries, max_length=self.hparams.max_length
            )
        finally:
            self.train(was_training)
        return rewards

    def export_head(self) -> RewardHead | None:
        return self.head
