"""Batches of the judge: samples become rows (queries), rows become one left-padded model batch.

A task decides which rows a sample becomes (:class:`SampleRows`: a pair's two orders, a point's
one question...); :class:`RewardCollator` turns a list of samples into a :class:`RewardBatch`:
the rows' queries encoded in one call, and the indices that tie rows back to pairs and points.

The collator runs inside the DataLoader workers (``ShardDataModule`` hands it to them), so it
holds only what encoding needs: the processor (no model weights, see :class:`QueryEncoder`), the
template, the encoding settings, and the function that makes a sample's rows. It is a plain
picklable object, so workers started with ``spawn`` receive it without the LightningModule.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from rewarddance.data.schema import Sample
from rewarddance.judge.prompting import BadInputError, Query, RationaleFormat, Template, encode_queries
from rewarddance.models.inputs import Message, Visual, encode

TiePolicy = Literal["soft", "exclude"]
BadInputPolicy = Literal["raise", "skip"]

PREVIEWS_PER_BATCH = 2
"""Pairs per batch carried to the metrics for the wandb table of sample pairs."""


@dataclass
class SampleRows:
    """The model rows one sample contributes (built by a task's ``sample_rows``).

    Attributes:
        queries: One query per row.
        targets: P(yes) target per row (NaN where the row has none of its own, e.g. pointwise pairs).
        judgment: Index of the judgment token in each row's answer (see
            :func:`rewarddance.judge.losses.judgment_positions`).
        pair_target: P(second better) for a pair sample, else None.
        point_target: P(yes) for a point sample, else None.
        counts: Notes to count (``no_rationale``, ``criteria_verbatim``, ...).
    """

    queries: list[Query]
    targets: list[float]
    judgment: list[int] = field(default_factory=list)
    pair_target: float | None = None
    point_target: float | None = None
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class RewardBatch:
    """A collated batch. Rows are model inputs; pairs and points index into them.

    Attributes:
        inputs: Left-padded model inputs of all rows (None when every sample was skipped).
        row_targets: ``[R]`` P(yes) target per row (NaN where none).
        row_train: ``[R]`` rows that contribute to the training loss.
        judgment: ``[R]`` index of the judgment token in each row's answer.
        pair_rows: ``[P, 2]`` the two rows of each pair: (order AB, order BA) for the pairwise
            paradigm, (first, second) otherwise.
        pair_targets: ``[P]`` P(second better).
        pair_train: ``[P]`` pairs in the training loss (False for ties with ``ties: exclude``).
        pair_padding: ``[P]`` loader repeats, left out of metrics.
        point_rows: ``[Q]`` row of each point sample.
        point_targets: ``[Q]`` P(yes) of each point sample.
        point_padding: ``[Q]`` loader repeats.
        pair_categories: Category per pair.
        keys: Sample keys, in row order of first appearance.
        counts: What collate skipped, excluded or truncated (logged).
        queries: The row queries, kept when scoring must re-encode them (reasons-first generation).
        conditioned: Samples (loader repeats left out) shown with a condition image (image-to-video): the task
            records whether it trained with them, for the export.
        criteria: Samples (loader repeats left out) per criteria text they were asked with: the task records
            them, and its export asks with the most frequent one (a question the model was trained on).
    """

    inputs: Mapping[str, Any] | None
    row_targets: Tensor
    row_train: Tensor
    judgment: Tensor
    pair_rows: Tensor
    pair_targets: Tensor
    pair_train: Tensor
    pair_padding: Tensor
    point_rows: Tensor
    point_targets: Tensor
    point_padding: Tensor
    pair_categories: list[str]
    keys: list[str]
    counts: dict[str, int]
    queries: list[Query] | None = None
    conditioned: int = 0
    criteria: dict[str, int] = field(default_factory=dict)
    previews: list[dict[str, Any]] = field(default_factory=list)
    """The first pairs of the batch as the model saw them (prompt, image 1, image 2, target), for
    the table of sample pairs a wandb logger shows; the i-th preview is pair i."""

    def to(self, device: torch.device | str) -> RewardBatch:
        """Move every tensor to ``device`` (Lightning calls this to transfer the batch)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), Tensor)
            else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }
        if self.inputs is not None:
            moved["inputs"] = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.inputs.items()}
        return RewardBatch(**moved)

    # A batch leaves a DataLoader worker pickled, and torch sends each tensor through its own shared-memory
    # segment (a file descriptor passed over a socket, then mapped): for the ~16 small tensors of a batch that
    # cost the training process ~3.0 ms of CPU per batch against ~1.1 ms with them inline (benchmarks/ipc.py).
    # So small tensors travel as numpy arrays inside the pickle; large ones (pixels) keep shared memory.

    def __getstate__(self) -> dict[str, Any]:
        state = {name: _inline_if_small(value) for name, value in self.__dict__.items()}
        if self.inputs is not None:
            state["inputs"] = {k: _inline_if_small(v) for k, v in self.inputs.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {name: _from_inline(value) for name, value in state.items()}
        if state["inputs"] is not None:
            state["inputs"] = {k: _from_inline(v) for k, v in state["inputs"].items()}
        self.__dict__.update(state)


INLINE_TENSOR_BYTES = 256 * 1024
"""Tensors up to this size are pickled inline (see ``RewardBatch.__getstate__``)."""


@dataclass(frozen=True)
class _InlineTensor:
    array: Any  # numpy.ndarray


def _inline_if_small(value: Any) -> Any:
    if (
        isinstance(value, Tensor)
        and value.device.type == "cpu"
        and not value.requires_grad
        and value.nbytes <= INLINE_TENSOR_BYTES
    ):
        try:
            return _InlineTensor(value.numpy())
        except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16, float8, ...): shared memory as before
            pass
    return value


def _from_inline(value: Any) -> Any:
    return torch.from_numpy(value.array) if isinstance(value, _InlineTensor) else value


def preview(sample: Sample, target: float) -> dict[str, Any]:
    """A pair as the table of sample pairs shows it: key, prompt, category, both images, the truth."""
    if sample.first is None or sample.second is None:
        raise ValueError(f"Sample {sample.key!r}: a pair preview needs both images (first and second)")
    return {
        "key": sample.key,
        "prompt": sample.prompt,
        "category": sample.category,
        "image 1": sample.first[0],
        "image 2": sample.second[0],
        "P(image 2 better) truth": target,
    }


@dataclass(frozen=True)
class QueryEncoder:
    """What encoding queries needs of a backbone: its processor, without the model weights.

    Satisfies what :func:`rewarddance.judge.prompting.encode_queries` calls (``encode``,
    ``tokenizer``) given an explicit ``max_length``.
    """

    processor: ProcessorMixin

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    def encode(
        self,
        samples: Sequence[str | Sequence[Message]],
        visuals: Sequence[Sequence[Visual]],
        *,
        answers: Sequence[str] | None = None,
        max_length: int | None = None,
    ) -> BatchFeature:
        """Model inputs for a batch, as :meth:`rewarddance.models.Backbone.encode` makes them."""
        return encode(self.processor, samples, visuals, answers=answers, max_length=max_length)


@dataclass
class RewardCollator:
    """Samples -> :class:`RewardBatch`: rows from ``rows``, encoded in one call (DataLoader workers).

    Attributes:
        encoder: The backbone's processor (:class:`QueryEncoder`).
        template: The prompt template.
        rows: A sample's rows, or the name of the reason it is skipped (counted).
        max_length: Token limit per sequence (the task resolves a default from the model).
        rationale_format: Which answer layout is trained (``none``: no answers are encoded).
        ties: ``exclude`` keeps tied pairs out of the training loss (counted as ``ties_excluded``).
        on_bad_input: A sample the processor cannot take: ``raise``, or ``skip`` it (``bad_inputs``).
        previews_per_batch: Pairs per batch kept for the table of sample pairs.
    """

    encoder: QueryEncoder
    template: Template
    rows: Callable[[Sample], SampleRows | str]
    max_length: int | None
    rationale_format: RationaleFormat = "none"
    ties: TiePolicy = "soft"
    on_bad_input: BadInputPolicy = "raise"
    previews_per_batch: int = PREVIEWS_PER_BATCH

    def __call__(self, samples: list[Sample]) -> RewardBatch:
        counts: Counter[str] = Counter()
        queries: list[Query] = []
        targets: list[float] = []
        judgment: list[int] = []
        row_train: list[bool] = []
        pair_rows, pair_targets, pair_train, pair_padding, pair_categories = [], [], [], [], []
        point_rows, point_targets, point_padding = [], [], []
        keys: list[str] = []
        previews: list[dict[str, Any]] = []
        conditioned = 0
        criteria: Counter[str] = Counter()
        for sample in samples:
            rows = self.rows(sample)
            if isinstance(rows, str):
                counts[rows] += 0 if sample.padding else 1
                continue
            if not sample.padding:
                counts.update(rows.counts)
                conditioned += sample.condition is not None
                criteria.update(q.criteria for q in rows.queries[:1])
            start = len(queries)
            trained = True
            if rows.pair_target is not None:
                tie = rows.pair_target == 0.5
                trained = not (tie and self.ties == "exclude")
                if tie and not trained and not sample.padding:
                    counts["ties_excluded"] += 1
                pair_rows.append([start, start + 1])
                pair_targets.append(rows.pair_target)
                pair_train.append(trained)
                pair_padding.append(sample.padding)
                pair_categories.append(sample.category or "other")
                first_pairs = len(previews) == len(pair_rows) - 1 and len(previews) < self.previews_per_batch
                if first_pairs and not sample.padding:
                    previews.append(preview(sample, rows.pair_target))
            if rows.point_target is not None:
                point_rows.append(start)
                point_targets.append(rows.point_target)
                point_padding.append(sample.padding)
            queries += rows.queries
            targets += rows.targets
            judgment += rows.judgment or [0] * len(rows.queries)
            row_train += [trained] * len(rows.queries)
            keys.append(sample.key)
        inputs = None
        if queries:
            try:
                inputs, report = encode_queries(
                    self.encoder,
                    self.template,
                    queries,
                    rationale_format=self.rationale_format,
                    with_answers=self.rationale_format != "none",
                    max_length=self.max_length,
                )
            except BadInputError as err:
                if self.on_bad_input == "raise" or not err.keys:
                    raise
                keep = [s for s in samples if s.key not in err.keys]
                batch = self(keep)
                batch.counts["bad_inputs"] = batch.counts.get("bad_inputs", 0) + len(samples) - len(keep)
                return batch
            counts["truncated"] += report.truncated
        return RewardBatch(
            inputs=inputs,
            row_targets=torch.tensor(targets, dtype=torch.float32),
            row_train=torch.tensor(row_train, dtype=torch.bool),
            judgment=torch.tensor(judgment, dtype=torch.long),
            pair_rows=torch.tensor(pair_rows, dtype=torch.long).reshape(-1, 2),
            pair_targets=torch.tensor(pair_targets, dtype=torch.float32),
            pair_train=torch.tensor(pair_train, dtype=torch.bool),
            pair_padding=torch.tensor(pair_padding, dtype=torch.bool),
            point_rows=torch.tensor(point_rows, dtype=torch.long),
            point_targets=torch.tensor(point_targets, dtype=torch.float32),
            point_padding=torch.tensor(point_padding, dtype=torch.bool),
            pair_categories=pair_categories,
            keys=keys,
            counts={k: v for k, v in counts.items() if v},
            queries=queries if self.rationale_format == "reasons_first" else None,
            conditioned=conditioned,
            criteria=dict(criteria),
            previews=previews,
        )
