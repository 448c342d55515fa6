"""Reward-model tasks: generative (reward = P("yes")) and the regressive baseline, as LightningModules.

RewardDance (arXiv 2509.08826) reads the reward from the language-model head: a VLM sees an
instruction with criteria, the prompt and one or two images, and r = P("yes"). These tasks
train that, on ``rewarddance`` shards (``ShardDataModule``), and export a folder that
:class:`rewarddance.judge.reward_model.RewardModel` loads for RL.

- :class:`GenerativeRewardTask` ``paradigm: pairwise`` (the paper's main RM): "is image 2 better
  than image 1?" with the pair's first image as image 1 (the reference) and the second as image 2
  (the candidate). Every pair is trained in *both* orders (targets t and 1 - t, rationales with
  "image 1"/"image 2" swapped), so the model cannot learn a position preference; evaluation asks
  both orders too and reports the position-bias rate. At RL time image 1 is the best-of-N
  reference, so training "first vs second" is the paradigm itself. ``Sample.references`` (extra
  correct renders in the shapes data) are not used and not decoded (``needs_references = False``).
- ``paradigm: pointwise``: one image and a quality/alignment question. Pairs are trained with
  :func:`rewarddance.judge.losses.pointwise_generative_loss` (Bradley-Terry on the yes-vs-no log-odds
  + ``ce_weight`` x CE, default 0.1), point samples (``Sample.answer``) with plain yes/no CE.
- :class:`RegressiveRewardTask`: the paper's baseline, a linear head on the last hidden state at
  the last position, Bradley-Terry loss, same data and metrics (``prob_second = sigmoid(r2 - r1)``).

The tasks only orchestrate; the math lives in plain functions (this module's top, ``losses.py``,
``models/scoring.py``) and the text in templates (``prompting.py``, ``templates/*.yaml``).
Subclass and override one small method to change a piece: :meth:`RewardTask.criteria_for`,
:meth:`RewardTask.instruction_for`, :meth:`RewardTask.pair_target`, :meth:`RewardTask.loss_weights`,
:meth:`RewardTask.parameter_groups`, :meth:`GenerativeRewardTask.answer_word`, ...

Batches are built by :meth:`RewardTask.collate` inside the DataLoader workers (the DataModule
calls it), so tokenisation and image processing run in parallel with training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import PeftModel
from torch import Tensor, nn

from rewarddance.callbacks import task_callbacks
from rewarddance.data.schema import Clip, Sample, decode_sample
from rewarddance.data.stream import iter_tar_samples, resolve_shards
from rewarddance.distributed import is_sharded, shard_task, unsharded_copy
from rewarddance.distributed import last_hidden_state as sharded_last_hidden_state
from rewarddance.errors import UsageError
from rewarddance.judge.losses import (
    bradley_terry_loss,
    pair_label_to_target,
    pointwise_generative_loss,
    yes_no_cross_entropy,
)
from rewarddance.judge.prompting import (
    BadInputError,
    Query,
    QuestionKind,
    RationaleFormat,
    Template,
    encode_queries,
    load_template,
    swap_image_mentions,
)
from rewarddance.judge.readout import Normalization, yes_no_log_probs
from rewarddance.judge.reward_model import (
    EXPORT_CONFIG,
    RewardHead,
    export_reward_model,
    generative_log_probs,
    generative_rewards,
    hidden_size,
    last_hidden_state,
)
from rewarddance.metrics import CalibrationError, CategoryAccuracy, PairwiseAccuracy, PositionBias, order_averaged_prob
from rewarddance.models import Backbone, LoraSettings, load_backbone, prepare_for_training, sample_frames
from rewarddance.models.inputs import Visual
from rewarddance.shapes.prompts import TAGS
from rewarddance.shapes.video import VIDEO_TAGS
from rewarddance.tasks.pretrain import sized_to_budget

Paradigm = Literal["pairwise", "pointwise"]
TiePolicy = Literal["soft", "exclude"]
PointPolicy = Literal["skip", "pointwise"]
BadInputPolicy = Literal["raise", "skip"]

DEFAULT_CATEGORIES: tuple[str, ...] = TAGS + VIDEO_TAGS

PREVIEWS_PER_BATCH = 2
"""Pairs per batch carried to the metrics for the wandb table of sample pairs."""
TABLE_ROWS = 16
"""Rows of that table per evaluation set and epoch."""
"""GenEval tags of the shapes world (stills and video); other categories are counted as ``other``."""

DEFAULT_LR = 3e-4
"""AdamW learning rate when no optimizer is configured (ENV.md: 1e-3 wrecked a pretrained tiny VLM)."""


# --------------------------------------------------------------------------------------------
# Math (plain functions)
# --------------------------------------------------------------------------------------------


def answer_cross_entropy(log_probs: Tensor, target: Tensor, normalization: Normalization = "yes_no") -> Tensor:
    r"""Cross-entropy of the judgment token against a soft target ``t = P(yes)``, per row.

    ``log_probs`` are ``[n, 2]`` log P(yes), log P(no) (see ``rewarddance.judge.readout``).

    - ``yes_no``: :func:`rewarddance.judge.losses.yes_no_cross_entropy`,
      :math:`-[t \log\sigma(d) + (1-t)\log\sigma(-d)]` with :math:`d = z_{yes} - z_{no}`
      (the two-token softmax; log P(yes) - log P(no) = d).
    - ``vocab``: :math:`-[t \log P_V(yes) + (1-t) \log P_V(no)]` over the full vocabulary; for a
      hard target this is the usual language-model loss on the answer token.
    """
    target = target.to(log_probs.dtype)
    if normalization == "yes_no":
        return yes_no_cross_entropy(log_probs[:, 0], log_probs[:, 1], target)
    return -(target * log_probs[:, 0] + (1 - target) * log_probs[:, 1])


def judgment_positions(answer_lengths: Tensor, judgment_index: Tensor, kept: int) -> Tensor:
    """Where each row's judgment token is predicted, among the last ``kept`` answer-predicting logits.

    With left padding every answer ends at the last position; a row's answer of ``n`` tokens
    occupies slice positions ``kept - n .. kept - 1``. ``judgment_index`` counts within the answer
    from the start (``0``: judgment first) or, when negative, from the end (``-2``: the judgment
    before the end-of-turn token, reasons first).
    """
    start = kept - answer_lengths
    return torch.where(judgment_index >= 0, start + judgment_index, kept + judgment_index)


def rationale_token_loss(logits: Tensor, labels: Tensor, judgment: Tensor) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy per row over answer tokens other than the judgment.

    Args:
        logits: ``[n, K, vocab]`` logits predicting the last ``K`` tokens.
        labels: ``[n, K]`` those tokens (-100 where not an answer token).
        judgment: ``[n]`` slice position of each row's judgment token (trained separately, with a
            soft target).

    Returns:
        ``(loss [n], token count [n])``; rows without rationale tokens have loss 0 and count 0.
    """
    labels = labels.clone()
    labels[torch.arange(labels.shape[0], device=labels.device), judgment] = -100
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    count = (labels != -100).sum(dim=1)
    return ce.sum(dim=1) / count.clamp_min(1), count


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclass
class SampleRows:
    """The model rows one sample contributes (built by ``sample_rows``).

    Attributes:
        queries: One query per row.
        targets: P(yes) target per row (NaN where the row has none of its own, e.g. pointwise pairs).
        judgment: Index of the judgment token in each row's answer (see :func:`judgment_positions`).
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


class _SetMetrics(nn.Module):
    """The metrics of one evaluation set."""

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


def _preview(sample: Sample, target: float) -> dict[str, Any]:
    assert sample.first is not None and sample.second is not None
    return {
        "key": sample.key,
        "prompt": sample.prompt,
        "category": sample.category,
        "image 1": sample.first[0],
        "image 2": sample.second[0],
        "P(image 2 better) truth": target,
    }


def _binary_ce(prob: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy(prob.float().clamp(1e-7, 1 - 1e-7), target.float(), reduction="sum")


# --------------------------------------------------------------------------------------------
# The common base
# --------------------------------------------------------------------------------------------


class RewardTask(L.LightningModule):
    """What every reward task shares: backbone, data to rows, metrics, checkpoints and export.

    Subclasses implement :meth:`sample_rows` (sample -> model rows), :meth:`row_scores` (rows ->
    one score each) and :meth:`loss_terms`, and may override the small hooks.

    Args:
        backbone: Registry name, hub id or folder (see ``rewarddance.models.load_backbone``), e.g.
            ``tiny-qwen2-vl``, ``internvl`` or ``data/backbones/shapes-vlm-tiny``.
        backbone_kwargs: Further ``load_backbone`` arguments: ``size`` (``tiny``/``small``, or a hub
            size such as ``8B``), ``dtype``, tiny-size overrides (``hidden_size``...).
        lora: LoRA settings (adapters on the language model), or null for full fine-tuning.
        freeze_vision: Freeze the vision encoder.
        gradient_checkpointing: Recompute activations in the backward pass.
        template: Template name (``default``, ``short``), YAML path, or mapping (see ``rewarddance/judge/templates``).
        criteria: Criteria name of the template (or a criteria text) for samples without
            ``Sample.criteria``; null uses the template's ``default_criteria``.
        ties: Tied pairs: ``soft`` trains them with target 0.5; ``exclude`` leaves them out of the
            loss (counted as ``ties_excluded``). They are always scored in evaluation.
        max_length: Token limit per sequence; longer prompts are truncated (prompt text only,
            counted as ``truncated``). Null: the model's ``max_position_embeddings``.
        num_frames: Frames sampled per video clip.
        on_bad_input: A sample the processor cannot take: ``raise`` an error naming it, or ``skip``
            it (counted as ``bad_inputs``).
        categories: Category names for per-category accuracy (others count as ``other``).
        yes_word: The answer word whose probability is the reward (must be a single token).
        no_word: The negative answer word (must be a single token).
        optimizer: Optimizer factory, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 3e-4}}``;
            null: AdamW with lr 3e-4, no weight decay.
        lr_scheduler: Learning-rate scheduler factory, stepped every optimizer step; null: none.
        export: Write an inference folder when fit ends (see :meth:`export_to`).
        export_dir: Where; null: ``<log_dir or default_root_dir>/export``.
    """

    needs_references: bool = False
    """Shard references are not used: the DataModule skips decoding them."""
    needs_visuals: bool = True
    kind: Literal["generative", "regressive"] = "generative"
    rationale_format: RationaleFormat = "none"

    def __init__(
        self,
        backbone: str = "tiny-qwen2-vl",
        backbone_kwargs: dict[str, Any] | None = None,
        lora: LoraSettings | None = None,
        freeze_vision: bool = False,
        gradient_checkpointing: bool = False,
        template: str | dict[str, Any] = "default",
        criteria: str | None = None,
        ties: TiePolicy = "soft",
        max_length: int | None = None,
        num_frames: int = 8,
        on_bad_input: BadInputPolicy = "raise",
        categories: list[str] | None = None,
        yes_word: str = "yes",
        no_word: str = "no",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        export: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Cheap on purpose: LightningCLI builds the module to print configs; the VLM is built in configure_model().
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if dataclasses.is_dataclass(lora):
            # Plain data in checkpoints: they then load with torch.load(weights_only=True).
            self.hparams["lora"] = dataclasses.asdict(lora)  # type: ignore[arg-type]
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.template: Template = load_template(template)  # validated now: a broken template fails before training
        self.backbone: Backbone | None = None
        self.eval_metrics = nn.ModuleDict()
        self.examples_pool: dict[str, list[Query]] = {}
        self.results: dict[str, dict[str, float]] = {}
        """Last computed metrics per evaluation set name (``val``, ``test-id``, ...)."""
        self.export_path: Path | None = None

    # -- model ---------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load the backbone and prepare it for training (LoRA, freezing, checkpointing); idempotent.

        Under Lightning's ``ModelParallelStrategy`` (``self.device_mesh`` set) the modules are then
        sharded with FSDP2 (:func:`rewarddance.distributed.shard_task`).
        """
        if self.backbone is not None:
            shard_task(self)  # no-op without a device mesh or once sharded
            return
        backbone = load_backbone(
            self.hparams.backbone,
            yes_word=self.hparams.yes_word,
            no_word=self.hparams.no_word,
            **(self.hparams.backbone_kwargs or {}),
        )
        backbone.model = prepare_for_training(
            backbone.model,
            self.lora_settings,
            freeze_vision=self.hparams.freeze_vision,
            gradient_checkpointing=self.hparams.gradient_checkpointing,
        )
        # load_backbone returns eval mode; Lightning keeps module modes as it finds them, and
        # gradient checkpointing only runs in training mode.
        backbone.model.train()
        self.backbone = backbone
        self.model = backbone.model
        self.build_heads()
        shard_task(self)

    @property
    def lora_settings(self) -> LoraSettings | None:
        """The LoRA settings (stored as a plain dict in the hyperparameters)."""
        lora = self.hparams.lora
        return LoraSettings(**lora) if isinstance(lora, Mapping) else lora

    def build_heads(self) -> None:
        """Add modules on top of the backbone (the regressive head); nothing for generative tasks."""

    def _backbone(self) -> Backbone:
        if self.backbone is None:
            self.configure_model()
        assert self.backbone is not None
        return self.backbone

    def parameter_groups(self) -> Any:
        """What the optimizer trains: the trainable parameters (override for per-group learning rates)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.parameter_groups()
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(params, lr=DEFAULT_LR, weight_decay=0.0)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = sized_to_budget(self.scheduler_factory(optimizer), self.trainer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- hooks a subclass overrides ----------------------------------------------------------------

    def criteria_for(self, sample: Sample) -> str:
        """The criteria (a template criteria name, or text) a sample is judged by.

        Default: ``Sample.criteria``, else the ``criteria`` argument, else the template's default.
        """
        return sample.criteria or self.hparams.criteria or self.template.default_criteria

    def instruction_for(self, sample: Sample) -> str | None:
        """The instruction text for a sample; None uses the template's."""
        return sample.instruction

    def pair_target(self, sample: Sample) -> float:
        """P(second better) for a pair: ``1 - soft_label`` when present (soft labels are P(first better)), else from the label."""
        if sample.soft_label is not None:
            return 1.0 - float(sample.soft_label)
        return pair_label_to_target(sample.label or "")

    def point_target(self, sample: Sample) -> float:
        """P(yes) target of a point sample."""
        return 1.0 if sample.answer == "yes" else 0.0

    def loss_weights(self) -> dict[str, float]:
        """Weight of each loss term (``pair``, ``point``, ``rationale``); terms not listed weigh 1."""
        return {"pair": 1.0, "point": 1.0}

    def visual(self, clip: Clip, video: bool) -> Visual:
        """A sample's clip as model input: the image of a still, ``num_frames`` frames of a video."""
        return sample_frames(clip, self.hparams.num_frames) if video else clip[0]

    def sample_rows(self, sample: Sample) -> SampleRows | str:
        """The rows a sample becomes, or the name of the reason it is skipped (counted)."""
        raise NotImplementedError

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

    def loss_terms(self, batch: RewardBatch) -> dict[str, Tensor]:
        """The training loss terms, weighted by :meth:`loss_weights` and summed."""
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------------------

    def criteria_text(self, sample: Sample, counts: Counter[str] | None = None) -> str:
        text, known = self.template.criteria_text(self.criteria_for(sample))
        if not known and counts is not None:
            counts["criteria_verbatim"] += 1
        return text

    def make_query(
        self,
        question: QuestionKind,
        sample: Sample,
        clips: Sequence[Clip],
        *,
        answer: str | None = None,
        counts: Counter[str] | None = None,
    ) -> Query:
        """A query about ``sample`` showing ``clips`` (with in-context examples, minus the sample itself)."""
        examples = [e for e in self.examples_pool.get(question, []) if e.key != sample.key]
        return Query(
            question=question,
            prompt=sample.prompt,
            visuals=[self.visual(c, sample.is_video) for c in clips],
            criteria=self.criteria_text(sample, counts),
            instruction=self.instruction_for(sample),
            answer=answer,
            examples=examples,
            key=sample.key,
        )

    @property
    def with_answers(self) -> bool:
        return self.rationale_format != "none"

    def collate(self, samples: list[Sample]) -> RewardBatch:
        """Build a batch from samples (called in DataLoader workers by ``ShardDataModule``)."""
        backbone = self._backbone()
        counts: Counter[str] = Counter()
        queries: list[Query] = []
        targets: list[float] = []
        judgment: list[int] = []
        row_train: list[bool] = []
        pair_rows, pair_targets, pair_train, pair_padding, pair_categories = [], [], [], [], []
        point_rows, point_targets, point_padding = [], [], []
        keys: list[str] = []
        previews: list[dict[str, Any]] = []
        for sample in samples:
            rows = self.sample_rows(sample)
            if isinstance(rows, str):
                counts[rows] += 0 if sample.padding else 1
                continue
            if not sample.padding:
                counts.update(rows.counts)
            start = len(queries)
            trained = True
            if rows.pair_target is not None:
                tie = rows.pair_target == 0.5
                trained = not (tie and self.hparams.ties == "exclude")
                if tie and not trained and not sample.padding:
                    counts["ties_excluded"] += 1
                pair_rows.append([start, start + 1])
                pair_targets.append(rows.pair_target)
                pair_train.append(trained)
                pair_padding.append(sample.padding)
                pair_categories.append(sample.category or "other")
                if len(previews) == len(pair_rows) - 1 and len(previews) < PREVIEWS_PER_BATCH and not sample.padding:
                    previews.append(_preview(sample, rows.pair_target))
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
                    backbone,
                    self.template,
                    queries,
                    rationale_format=self.rationale_format,
                    with_answers=self.with_answers,
                    max_length=self.hparams.max_length,
                )
            except BadInputError as err:
                if self.hparams.on_bad_input == "raise" or not err.keys:
                    raise
                keep = [s for s in samples if s.key not in err.keys]
                batch = self.collate(keep)
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
            previews=previews,
        )

    # -- training --------------------------------------------------------------------------------

    def training_step(self, batch: RewardBatch, batch_idx: int) -> Tensor | None:
        size = len(batch.keys)
        for name, value in batch.counts.items():
            self.log(f"train/{name}", float(value), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=size)
        if batch.inputs is None:
            return None  # every sample skipped (counted above)
        terms = self.loss_terms(batch)
        weights = self.loss_weights()
        loss = sum(weights.get(name, 1.0) * value for name, value in terms.items())
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=size)
        return loss  # type: ignore[return-value]

    def configure_callbacks(self) -> list[L.Callback]:
        return task_callbacks(self)  # stop on a NaN loss or gradient, in every config

    # -- evaluation ------------------------------------------------------------------------------

    def set_name(self, stage: Literal["validate", "test"], dataloader_idx: int) -> str:
        """The name of an evaluation set (``val``, ``test-id``, ...), from the DataModule when it has names."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "set_name"):
            return datamodule.set_name(stage, dataloader_idx)
        base = "val" if stage == "validate" else "test"
        return base if dataloader_idx == 0 else f"{base}{dataloader_idx}"

    def metrics_for(self, name: str) -> _SetMetrics:
        key = name.replace(".", "_")
        if key not in self.eval_metrics:
            categories = self.hparams.categories or list(DEFAULT_CATEGORIES)
            self.eval_metrics[key] = _SetMetrics(categories).to(self.device)
        return self.eval_metrics[key]  # type: ignore[return-value]

    def evaluate_batch(self, batch: RewardBatch, metrics: _SetMetrics) -> None:
        """Score a batch and update one set's metrics (padding repeats left out)."""
        for name, value in batch.counts.items():
            metrics.counts[name] += value
        if batch.inputs is None:
            return
        scores = self.row_scores(batch).detach().float()
        keep = ~batch.pair_padding
        if keep.any():
            prob = self.pair_probability(scores, batch)[keep].clamp(0, 1)
            target = batch.pair_targets[keep]
            categories = [c for c, k in zip(batch.pair_categories, keep.tolist()) if k]
            metrics.pairs.update(prob, target)
            metrics.categories.update(prob, target, categories)
            metrics.ece.update(prob, target)
            metrics.loss_sum += float(_binary_ce(prob, target))
            metrics.loss_count += int(keep.sum())
            all_probs = self.pair_probability(scores, batch)
            room = TABLE_ROWS - len(metrics.table)
            metrics.table += [{**p, "P(yes)": float(all_probs[i])} for i, p in enumerate(batch.previews[:room])]
            self.evaluate_orders(scores, batch, metrics)
        keep_points = ~batch.point_padding
        p_yes = self.yes_probability(scores)
        if p_yes is not None and keep_points.any():
            p_yes = p_yes[batch.point_rows][keep_points].clamp(0, 1)
            metrics.points.update(p_yes, batch.point_targets[keep_points])
            metrics.point_ece.update(p_yes, batch.point_targets[keep_points])

    def evaluate_orders(self, scores: Tensor, batch: RewardBatch, metrics: _SetMetrics) -> None:
        """Position-bias metrics, for tasks that ask both orders (the pairwise paradigm)."""

    def _eval_step(self, batch: RewardBatch, stage: Literal["validate", "test"], dataloader_idx: int) -> None:
        self.evaluate_batch(batch, self.metrics_for(self.set_name(stage, dataloader_idx)))

    def validation_step(self, batch: RewardBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "validate", dataloader_idx)

    def test_step(self, batch: RewardBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def _log_eval(self, stage: Literal["validate", "test"]) -> dict[str, dict[str, float]]:
        names = self._stage_set_names(stage)
        out: dict[str, dict[str, float]] = {}
        for name in names:
            key = name.replace(".", "_")
            if key not in self.eval_metrics:
                continue
            metrics: _SetMetrics = self.eval_metrics[key]  # type: ignore[assignment]
            values = metrics.compute()
            self.log_pair_table(name, metrics.table)
            metrics.reset()
            out[name] = values
            self.results[name] = values
            for metric, value in values.items():
                self.log(f"{name}/{metric}", value, add_dataloader_idx=False, prog_bar=metric == "acc")
        return out

    def log_pair_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """A table of sample pairs with their P(yes) and the ground truth, for wandb loggers."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not rows or not loggers or not self.trainer.is_global_zero:
            return
        import wandb

        columns = list(rows[0])
        data = [[wandb.Image(v) if k.startswith("image") else v for k, v in row.items()] for row in rows]
        for logger in loggers:
            logger.log_table(key=f"{name}/pairs", columns=columns, data=data, step=self.global_step)

    def _stage_set_names(self, stage: Literal["validate", "test"]) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = list(getattr(datamodule, "set_names", {}).get(stage, []))
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

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint_record(self) -> dict[str, Any]:
        """What a checkpoint records about the model, checked again when it is loaded."""
        lora = self.lora_settings
        return {
            "kind": self.kind,
            "backbone": str(self.hparams.backbone),
            "backbone_kwargs": dict(self.hparams.backbone_kwargs or {}),
            "lora": dataclasses.asdict(lora) if lora is not None else None,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rewarddance"] = self.checkpoint_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record, mine = checkpoint.get("rewarddance"), self.checkpoint_record()
        if record is not None:
            different = {k: (record.get(k), v) for k, v in mine.items() if record.get(k) != v}
            if different:
                details = "; ".join(f"{k}: checkpoint {a!r}, this task {b!r}" for k, (a, b) in different.items())
                raise UsageError(
                    f"This checkpoint was trained with another model configuration ({details}): resume with the "
                    "same model.init_args, or start a new fit."
                )
        state = checkpoint.get("state_dict")
        if state is None:
            return  # a distributed (FSDP2) checkpoint folder: the strategy has loaded the weights, strictly
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or shapes:
            raise UsageError(
                f"The checkpoint does not fit backbone {self.hparams.backbone!r}: {len(missing)} missing "
                f"parameters (e.g. {missing[:3]}), {len(shapes)} of another shape (e.g. {shapes[:3]}). "
                "Was it trained with another backbone or size?"
            )

    # -- export ----------------------------------------------------------------------------------

    def export_config(self) -> dict[str, Any]:
        """What ``rewarddance_reward.json`` records (see ``rewarddance.judge.reward_model``)."""
        backbone = self._backbone()
        return {
            "kind": self.kind,
            "paradigm": "pointwise",
            "template_name": self.template.name,
            "template": self.template.to_dict(),
            "normalization": "yes_no",
            "rationale_format": self.rationale_format,
            "yes_word": self.hparams.yes_word,
            "no_word": self.hparams.no_word,
            "backbone": str(self.hparams.backbone),
            "backbone_kwargs": dict(self.hparams.backbone_kwargs or {}),
            "family": backbone.family,
            "criteria": self.hparams.criteria,
            "max_length": self.hparams.max_length,
            "num_frames": self.hparams.num_frames,
            "lora": "merged" if self.hparams.lora is not None else None,
        }

    def export_head(self) -> RewardHead | None:
        return None

    def export_to(self, folder: str | Path) -> Path:
        """Write an inference folder: merged HF model + processor + ``rewarddance_reward.json``.

        LoRA adapters are merged into a copy of the model (``merge_and_unload``), so the folder is
        a plain checkpoint that loads like a hub model; the training model is left as it is.
        """
        backbone = self._backbone()
        model = backbone.model
        if isinstance(model, PeftModel):
            model = copy.deepcopy(model).merge_and_unload()
        plain = dataclasses.replace(backbone, model=model)
        return export_reward_model(
            folder, plain, self.export_config(), head=self.export_head(), examples=self.examples_pool
        )

    def _export_dir(self) -> Path:
        if self.hparams.export_dir:
            return Path(self.hparams.export_dir)
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "export"

    def on_fit_end(self) -> None:
        exporter: RewardTask | None = self
        if self.hparams.export and is_sharded(self):
            exporter = unsharded_copy(self)  # FSDP2: every rank takes part in gathering the weights
        if not self.trainer.is_global_zero:
            return
        callback = self.trainer.checkpoint_callback
        checkpoint = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
        print(f"[rewarddance] checkpoint: {checkpoint or 'none (checkpointing disabled)'}")
        if self.hparams.export:
            assert exporter is not None
            self.export_path = exporter.export_to(self._export_dir())
            print(f"[rewarddance] export: {self.export_path} (load with RewardModel.from_pretrained)")
        for name, values in self.results.items():
            print(f"[rewarddance] last {name}: acc {values.get('acc', float('nan')):.3f}")

    # -- scoring (the same path as RewardModel) --------------------------------------------------

    @torch.no_grad()
    def score_queries(self, queries: Sequence[Query]) -> Tensor:
        """Rewards of queries exactly as ``RewardModel.score`` computes them (eval mode, no gradients)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Generative
# --------------------------------------------------------------------------------------------


class GenerativeRewardTask(RewardTask):
    """Generative reward model: r = P("yes") from the LM head (RewardDance).

    The reward is read at one position only (``logits_to_keep=1``; with rationale training, the
    last K+1 positions that cover the answers). See the module docstring for the paradigms.

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
        examples: In-context solved examples (k) shown before every query as earlier chat turns.
            A fixed set, the first k labelled samples (alternating yes/no) of ``examples_from``, so
            training, evaluation and the export all see the same context.
        examples_from: Shards to draw the examples from; null: the DataModule's train source.
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
        max_new_tokens: int = 64,
        backbone: str = "tiny-qwen2-vl",
        backbone_kwargs: dict[str, Any] | None = None,
        lora: LoraSettings | None = None,
        freeze_vision: bool = False,
        gradient_checkpointing: bool = False,
        template: str | dict[str, Any] = "default",
        criteria: str | None = None,
        ties: TiePolicy = "soft",
        max_length: int | None = None,
        num_frames: int = 8,
        on_bad_input: BadInputPolicy = "raise",
        categories: list[str] | None = None,
        yes_word: str = "yes",
        no_word: str = "no",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        export: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            lora=lora,
            freeze_vision=freeze_vision,
            gradient_checkpointing=gradient_checkpointing,
            template=template,
            criteria=criteria,
            ties=ties,
            max_length=max_length,
            num_frames=num_frames,
            on_bad_input=on_bad_input,
            categories=categories,
            yes_word=yes_word,
            no_word=no_word,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            export=export,
            export_dir=export_dir,
        )
        if examples < 0:
            raise ValueError(f"examples must be >= 0, got {examples}")
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

    def _example_kinds(self) -> list[QuestionKind]:
        if self.paradigm == "pointwise":
            return ["pointwise"]
        return ["pairwise", "pointwise"] if self.hparams.point_samples == "pointwise" else ["pairwise"]

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

    def load_examples(self, source: str | list[str], scan: int = 5000) -> dict[str, list[Query]]:
        """The fixed in-context examples: per question kind, k from the start of ``source``, yes/no alternating."""
        k = self.hparams.examples
        kinds = self._example_kinds()
        found: dict[tuple[str, bool], list[Query]] = {(q, y): [] for q in kinds for y in (True, False)}
        need = {True: (k + 1) // 2, False: k // 2}
        for sample in _iter_samples(source, scan):
            made = self.example_query(sample)
            if made is None or made[0] not in kinds:
                continue
            question, query, yes = made
            if len(found[question, yes]) < need[yes]:
                found[question, yes].append(query)
            if all(len(found[q, y]) >= need[y] for q in kinds for y in (True, False)):
                break
        pool: dict[str, list[Query]] = {}
        for question in kinds:
            yes, no = found[question, True], found[question, False]
            interleaved = [q for pair in zip(yes, no) for q in pair] + yes[len(no) :] + no[len(yes) :]
            if len(interleaved) < k:
                raise UsageError(
                    f"Found only {len(interleaved)} of {k} {question} examples in {source!r} "
                    "(model.init_args.examples / examples_from): lower examples or use a larger source."
                )
            pool[question] = interleaved[:k]
        return pool

    # -- scoring ---------------------------------------------------------------------------------

    def judgment_log_probs(self, batch: RewardBatch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``[R, 2]`` log P(yes), log P(no) at each row's judgment position, and with rationale
        training the per-row rationale-token loss and token count.

        Without answers the judgment is the next token after the prompt (``logits_to_keep=1``).
        With answers (left-padded, ending at the last position) only the last ``K + 1`` logits are
        computed, K the longest answer; shorter answers are masked by their -100 labels (ENV.md).
        """
        backbone = self._backbone()
        assert batch.inputs is not None
        labels = batch.inputs.get("labels")
        if labels is None:
            return backbone.yes_no_log_probs(batch.inputs, self.normalization), None, None
        inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
        lengths = (labels != -100).sum(dim=1)
        kept = int(lengths.max())
        logits = self.model(**inputs, logits_to_keep=kept + 1, use_cache=False).logits[:, :-1]
        tokens = labels[:, -kept:]
        positions = judgment_positions(lengths, batch.judgment, kept)
        rows = torch.arange(labels.shape[0], device=labels.device)
        answer_ids = tokens[rows, positions]
        expected = torch.tensor([backbone.yes_token_id, backbone.no_token_id], device=labels.device)
        if not torch.isin(answer_ids, expected).all():
            raise ValueError(
                f"The judgment token of an answer is not {self.hparams.yes_word!r}/{self.hparams.no_word!r} "
                f"(found {backbone.tokenizer.convert_ids_to_tokens(answer_ids.tolist())}); the template's "
                f"{self.rationale_format} answer format must put the answer word on its own token."
            )
        judgment_logits = logits[rows, positions]
        log_probs = yes_no_log_probs(judgment_logits, backbone.yes_token_id, backbone.no_token_id, self.normalization)
        rationale, count = rationale_token_loss(logits, tokens, positions)
        return log_probs, rationale, count

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

    def evaluate_orders(self, scores: Tensor, batch: RewardBatch, metrics: _SetMetrics) -> None:
        if self.paradigm != "pairwise":
            return
        keep = ~batch.pair_padding
        p_yes = self.yes_probability(scores).clamp(0, 1)
        ab, ba = p_yes[batch.pair_rows[:, 0]][keep], p_yes[batch.pair_rows[:, 1]][keep]
        metrics.bias.update(ab, ba)
        metrics.order_averaged.update(order_averaged_prob(ab, ba), batch.pair_targets[keep])

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


# --------------------------------------------------------------------------------------------
# Regressive baseline
# --------------------------------------------------------------------------------------------


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

    def __init__(
        self,
        head_lr: float | None = None,
        backbone: str = "tiny-qwen2-vl",
        backbone_kwargs: dict[str, Any] | None = None,
        lora: LoraSettings | None = None,
        freeze_vision: bool = False,
        gradient_checkpointing: bool = False,
        template: str | dict[str, Any] = "default",
        criteria: str | None = None,
        ties: TiePolicy = "soft",
        max_length: int | None = None,
        num_frames: int = 8,
        on_bad_input: BadInputPolicy = "raise",
        categories: list[str] | None = None,
        yes_word: str = "yes",
        no_word: str = "no",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        export: bool = True,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            lora=lora,
            freeze_vision=freeze_vision,
            gradient_checkpointing=gradient_checkpointing,
            template=template,
            criteria=criteria,
            ties=ties,
            max_length=max_length,
            num_frames=num_frames,
            on_bad_input=on_bad_input,
            categories=categories,
            yes_word=yes_word,
            no_word=no_word,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            export=export,
            export_dir=export_dir,
        )
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
        if self.device_mesh is not None:  # FSDP2: enter at the top, where the root unit's hooks are
            return self.head(sharded_last_hidden_state(self.model, batch.inputs))
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
        from rewarddance.judge.reward_model import regressive_rewards

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


def _iter_samples(source: str | list[str], limit: int) -> Iterator[Sample]:
    """Decoded samples from the start of a shard source (references not decoded)."""
    seen = 0
    for info in resolve_shards(source):
        for raw in iter_tar_samples(info.url):
            yield decode_sample(raw, load_references=False)
            seen += 1
            if seen >= limit:
                return


__all__ = [
    "DEFAULT_CATEGORIES",
    "EXPORT_CONFIG",
    "GenerativeRewardTask",
    "RegressiveRewardTask",
    "RewardBatch",
    "RewardTask",
    "SampleRows",
    "answer_cross_entropy",
    "judgment_positions",
    "rationale_token_loss",
]
