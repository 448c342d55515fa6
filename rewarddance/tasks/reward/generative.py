"""The generative reward task: r = P("yes") from the LM head (RewardDance)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from rewarddance.data.schema import Sample
from rewarddance.errors import UsageError
from rewarddance.judge.batch import RewardBatch, SampleRows
from rewarddance.judge.evaluation import EvalSetMetrics
from rewarddance.judge.examples import DEFAULT_POOL, RETRIEVAL_MODES, RetrievalMode, select_examples
from rewarddance.judge.losses import answer_cross_entropy, pointwise_generative_loss
from rewarddance.judge.prompting import Query, QuestionKind, RationaleFormat, swap_image_mentions
from rewarddance.judge.readout import Normalization, generative_log_probs, generative_rewards, judgment_log_probs
from rewarddance.tasks.reward.base import RewardTask

Paradigm = Literal["pairwise", "pointwise"]
PointPolicy = Literal["skip", "pointwise"]


class GenerativeRewardTask(RewardTask):
    """Generative reward model: r = P("yes") from the LM head (RewardDance).

    The reward is read at one position only (``logits_to_keep=1``; with rationale training, the
    last K+1 positions that cover the answers). See :mod:`rewarddance.tasks.reward` for the paradigms.

    Args:
        paradigm: ``pairwise`` ("is image 2 better than image 1?", trained on both orders) or
            ``pointwise`` (one image; BT + CE on pairs, CE on point samples).
        normalization: ``yes_no``: P(yes) = softmax over the two answer tokens (default);
            ``vocab``: softmax over the whole vocabulary.
        rationale_format: Chain of thought from ``Sample.rationale``: ``none`` (answer word only),
            ``judgment_first`` (trains "yes. <reasons>"; the reward is read right after the prompt,
            as the paper's RL does), ``reasons_first`` (trains "<reasons> Answer: yes"; scoring
            generates the reasons greedily, then reads P(yes)). The exact layouts are template data.
        rationale_weight: Weight of the rationale-token loss.
        ce_weight: Pointwise paradigm: weight of the CE term of ``pointwise_generative_loss``.
            0.1 (the paper gives none): BT ranks, the small CE keeps P(yes) on the right side of 0.5.
        point_samples: Pairwise paradigm: ``skip`` point samples (counted) or train them with
            the template's ``pointwise`` question as an auxiliary task.
        examples: In-context solved examples (k) shown before every query as earlier chat turns,
            chosen from a pool (the first labelled samples of ``examples_from``, yes and no
            alternating) by ``example_retrieval``; training, evaluation and the export's scoring
            choose alike (:mod:`rewarddance.judge.examples`). A query's own sample is never shown.
        examples_from: Shards to draw the pool from; null: the DataModule's train source.
        example_retrieval: ``first`` (the first k of the pool for every query), ``tag`` (same tag as the
            query first, seeded order) or ``similar`` (nearest prompts by TF-IDF cosine). All keep yes/no balanced.
        example_pool: Pool size per question kind; null: k for ``first``, 256 otherwise.
        example_seed: Seed of the retrieval order and tie-breaks.
        max_new_tokens: Reasons-first scoring: longest generated rationale.
        **kwargs: See :class:`RewardTask` (backbone, template, optimizer, export...).
    """

    kind = "generative"

    def __init__(
        self,
        paradigm: Paradigm = "pairwise",
        normalization: Normalization = "yes_no",
        rationale_format: RationaleFormat = "none",
        rationale_weight: float = 1.0,
        ce_weight: float = 0.1,
        point_samples: PointPolicy = "skip",
        examples: int = 0,
        examples_from: str | list[str] | None = None,
        example_retrieval: RetrievalMode = "first",
        example_pool: int | None = None,
        example_seed: int = 0,
        max_new_tokens: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if examples < 0:
            raise ValueError(f"examples must be >= 0, got {examples}")
        if example_retrieval not in RETRIEVAL_MODES:
            raise UsageError(
                f"model.init_args.example_retrieval must be one of {list(RETRIEVAL_MODES)}, got {example_retrieval!r}"
            )
        if example_pool is not None and example_pool < examples:
            raise UsageError(
                f"model.init_args.example_pool ({example_pool}) must hold at least the {examples} examples shown per query"
            )
        self.paradigm = paradigm
        self.normalization: Normalization = normalization
        self.rationale_format = rationale_format

    # -- hooks -----------------------------------------------------------------------------------

    def loss_weights(self) -> dict[str, float]:
        return {"pair": 1.0, "point": 1.0, "rationale": self.hparams.rationale_weight}

    def answer_word(self, target: float) -> str:
        """The judgment word taught for a target P(yes): yes above 0.5, else no (ties: "no", i.e.
        "image 2 is not better"; the judgment token itself is trained on the soft target)."""
        return self.hparams.yes_word if target > 0.5 else self.hparams.no_word

    def answer_for(self, target: float, rationale: str | None, counts: Counter[str] | None = None) -> str | None:
        """The answer text of a row (None without rationale training)."""
        if not self.with_answers:
            return None
        if not rationale and counts is not None:
            counts["no_rationale"] += 1
        return self.template.answer(self.answer_word(target), rationale, self.rationale_format)

    def judgment_index(self, rationale: str | None) -> int:
        """Index of the judgment token in the answer: 0 (first) or -2 (last before end-of-turn)."""
        return -2 if self.rationale_format == "reasons_first" and rationale else 0

    # -- rows ------------------------------------------------------------------------------------

    def sample_rows(self, sample: Sample) -> SampleRows | str:
        counts: Counter[str] = Counter()
        if sample.kind == "pair":
            rows = self.pair_rows(sample, counts)
        elif sample.kind == "point" and not (self.paradigm == "pairwise" and self.hparams.point_samples == "skip"):
            rows = self.point_rows(sample, counts)
        else:
            return f"{sample.kind}s_skipped"
        rows.counts = counts
        return rows

    def pair_rows(self, sample: Sample, counts: Counter[str]) -> SampleRows:
        """Rows of a pair: both orders (pairwise) or each image alone (pointwise)."""
        assert sample.first is not None and sample.second is not None
        t = self.pair_target(sample)
        if self.paradigm == "pairwise":
            rationale = sample.rationale
            swapped = swap_image_mentions(rationale) if rationale else None
            ab = self.make_query(
                "pairwise",
                sample,
                [sample.first, sample.second],
                answer=self.answer_for(t, rationale, counts),
                counts=counts,
            )
            ba = self.make_query(
                "pairwise", sample, [sample.second, sample.first], answer=self.answer_for(1 - t, swapped)
            )
            judgment = [self.judgment_index(rationale), self.judgment_index(swapped)]
            return SampleRows([ab, ba], [t, 1 - t], judgment, pair_target=t)
        # Pointwise: the pair's rationale compares the two images, so each row gets the judgment alone.
        first = self.make_query("pointwise", sample, [sample.first], answer=self.answer_for(1 - t, None), counts=counts)
        second = self.make_query("pointwise", sample, [sample.second], answer=self.answer_for(t, None), counts=counts)
        return SampleRows([first, second], [math.nan, math.nan], [0, 0], pair_target=t)

    def point_rows(self, sample: Sample, counts: Counter[str]) -> SampleRows:
        """The row of a point sample (pointwise question, yes/no target)."""
        assert sample.image is not None
        t = self.point_target(sample)
        query = self.make_query(
            "pointwise", sample, [sample.image], answer=self.answer_for(t, sample.rationale), counts=counts
        )
        return SampleRows([query], [t], [self.judgment_index(sample.rationale)], point_target=t)

    # -- in-context examples -----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.hparams.examples > 0 and not self.examples_pool:
            source = self.hparams.examples_from
            if source is None:
                datamodule = getattr(self.trainer, "datamodule", None)
                source = getattr(datamodule, "train", None)
            if source is None:
                raise UsageError(
                    "model.init_args.examples > 0 needs model.init_args.examples_from, or a DataModule with a "
                    "train source."
                )
            self.examples_pool = self.load_examples(source)

    def example_query(self, sample: Sample) -> tuple[QuestionKind, Query, bool] | None:
        """A solved example from a sample: (question kind, query with answer, answer is yes), or None."""
        if sample.kind == "pair" and self.paradigm == "pairwise":
            t = self.pair_target(sample)
            if t == 0.5:
                return None
            answer = self.template.answer(self.answer_word(t), sample.rationale, self.rationale_format)
            query = self.make_query("pairwise", sample, [sample.first, sample.second], answer=answer)  # type: ignore[list-item]
            return "pairwise", dataclasses.replace(query, examples=[]), t > 0.5
        if sample.kind == "point":
            t = self.point_target(sample)
            answer = self.template.answer(self.answer_word(t), sample.rationale, self.rationale_format)
            query = self.make_query("pointwise", sample, [sample.image], answer=answer)  # type: ignore[list-item]
            return "pointwise", dataclasses.replace(query, examples=[]), t > 0.5
        return None

    def retrieval_settings(self) -> tuple[int, RetrievalMode, int]:
        return self.hparams.examples, self.hparams.example_retrieval, self.hparams.example_seed

    def load_examples(self, source: str | list[str], scan: int = 5000) -> dict[str, list[Query]]:
        """The pool of in-context examples: per question kind, from the start of ``source``, yes/no alternating."""
        kinds: list[QuestionKind] = ["pointwise"] if self.paradigm == "pointwise" else ["pairwise"]
        if self.paradigm == "pairwise" and self.hparams.point_samples == "pointwise":
            kinds.append("pointwise")
        k, mode = self.hparams.examples, self.hparams.example_retrieval
        size = self.hparams.example_pool or (k if mode == "first" else DEFAULT_POOL)
        return select_examples(source, self.example_query, kinds, k, max(scan, 4 * size), size=size)

    # -- scoring ---------------------------------------------------------------------------------

    def judgment_log_probs(self, batch: RewardBatch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``[R, 2]`` log P(yes), log P(no) at each row's judgment position, and with rationale
        training the per-row rationale-token loss and token count (see
        :func:`rewarddance.judge.readout.judgment_log_probs`)."""
        assert batch.inputs is not None
        return judgment_log_probs(self._backbone(), batch.inputs, batch.judgment, self.normalization)

    def row_scores(self, batch: RewardBatch) -> Tensor:
        if self.rationale_format == "reasons_first" and not self.training:
            # Read P(yes) after *generated* reasons: the gold rationale would leak the answer.
            assert batch.queries is not None
            log_probs, _, _ = generative_log_probs(
                self._backbone(),
                self.template,
                batch.queries,
                normalization=self.normalization,
                rationale_format="reasons_first",
                max_length=self.hparams.max_length,
                max_new_tokens=self.hparams.max_new_tokens,
            )
            return log_probs.to(self.device)
        log_probs, _, _ = self.judgment_log_probs(batch)
        return log_probs

    def yes_probability(self, scores: Tensor) -> Tensor:
        return scores[:, 0].exp()

    def pair_probability(self, scores: Tensor, batch: RewardBatch) -> Tensor:
        if self.paradigm == "pairwise":
            # P(yes | first, second) = P(second better): the single-order reading RL uses.
            return self.yes_probability(scores)[batch.pair_rows[:, 0]]
        # Pointwise: Bradley-Terry on the yes-vs-no log-odds, as trained.
        return super().pair_probability(scores[:, 0] - scores[:, 1], batch)

    def evaluate_orders(self, scores: Tensor, batch: RewardBatch, metrics: EvalSetMetrics) -> None:
        if self.paradigm != "pairwise":
            return
        keep = ~batch.pair_padding
        p_yes = self.yes_probability(scores).clamp(0, 1)
        metrics.add_orders(
            p_yes[batch.pair_rows[:, 0]][keep], p_yes[batch.pair_rows[:, 1]][keep], batch.pair_targets[keep]
        )

    def loss_terms(self, batch: RewardBatch) -> dict[str, Tensor]:
        log_probs, rationale, count = self.judgment_log_probs(batch)
        terms: dict[str, Tensor] = {}
        pairs = batch.pair_rows[batch.pair_train]
        if len(pairs):
            if self.paradigm == "pairwise":
                rows = pairs.reshape(-1)
                ce = answer_cross_entropy(log_probs[rows], batch.row_targets[rows], self.normalization)
                terms["pair"] = ce.mean()
            else:
                a, b = pairs[:, 0], pairs[:, 1]
                t_first = 1 - batch.pair_targets[batch.pair_train]
                terms["pair"] = pointwise_generative_loss(
                    log_probs[a, 0],
                    log_probs[a, 1],
                    log_probs[b, 0],
                    log_probs[b, 1],
                    ce_weight=self.hparams.ce_weight,
                    target=t_first,
                ).mean()
        if len(batch.point_rows):
            points = batch.point_rows
            terms["point"] = answer_cross_entropy(log_probs[points], batch.point_targets, self.normalization).mean()
        if rationale is not None and count is not None:
            rows = batch.row_train & (count > 0)
            if rows.any():
                terms["rationale"] = rationale[rows].mean()
        if not terms:
            terms["pair"] = log_probs.sum() * 0.0  # only excluded ties: keep the graph, learn nothing
        return terms

    @torch.no_grad()
    def score_queries(self, queries: Sequence[Query]) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            rewards, _, _ = generative_rewards(
                self._backbone(),
                self.template,
                queries,
                normalization=self.normalization,
                rationale_format=self.rationale_format,
                max_length=self.hparams.max_length,
                max_new_tokens=self.hparams.max_new_tokens,
            )
        finally:
            self.train(was_training)
        return rewards

    def export_config(self) -> dict[str, Any]:
        return {
            **super().export_config(),
            "paradigm": self.paradigm,
            "normalization": self.normalization,
            "max_new_tokens": self.hparams.max_new_tokens,
        }
