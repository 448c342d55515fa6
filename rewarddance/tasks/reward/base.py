"""What every reward task shares: backbone, samples to rows, evaluation, checkpoints and export."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from peft import PeftModel
from torch import Tensor, nn

from rewarddance.callbacks import task_callbacks
from rewarddance.data.schema import Clip, Sample
from rewarddance.distributed import is_sharded, shard_task, unsharded_copy
from rewarddance.errors import UsageError
from rewarddance.judge.batch import BadInputPolicy, QueryEncoder, RewardBatch, RewardCollator, SampleRows, TiePolicy
from rewarddance.judge.examples import ExampleRetriever, RetrievalMode, pool_to_json, sample_tag
from rewarddance.judge.export import EXPORT_CONFIG, export_reward_model
from rewarddance.judge.losses import pair_label_to_target
from rewarddance.judge.prompting import (
    Query,
    QuestionKind,
    RationaleFormat,
    Template,
    load_template,
    model_max_length,
)
from rewarddance.judge.readout import RewardHead
from rewarddance.models import (
    Backbone,
    FreezeError,
    LoraSettings,
    load_backbone,
    prepare_for_training,
    sample_frames,
)
from rewarddance.models.inputs import Visual
from rewarddance.models.vision_cache import VisionFeatureCache, install_vision_cache
from rewarddance.optimization import configure_optimization
from rewarddance.tasks.reward.evaluation import RewardEvaluation

CONDITIONS_RECORD = {frozenset({True}): "always", frozenset({False}): "never", frozenset({True, False}): "mixed"}
"""The export's ``conditions``: every training sample had a condition image, none had, or some had; null (not
recorded) when the export saw no training step."""

DEFAULT_LR = 3e-4
"""AdamW learning rate when no optimizer is configured, a conservative constant rate for fine-tuning a
pretrained VLM; the shipped configs set their own (the quickstart: warmup to 1e-3, then cosine decay)."""


class RewardTask(RewardEvaluation):
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
        freeze_projector: Freeze the vision-to-language projector (Qwen's merger, InternVL's
            ``multi_modal_projector``); with ``freeze_vision``, only the language model learns.
        freeze: Further parameters to freeze, as regexes on their names (``re.search``), e.g.
            ``["embed_tokens", "layers\\.0\\."]`` for the token embeddings and the lowest layer: with
            nothing trainable below a layer, the backward pass stops there. A pattern that matches no
            parameter is an error. Tied embeddings freeze the output head with them. In YAML, quote the
            patterns with single quotes (``'layers\\.0\\.'``): ``\\.`` is not a valid escape in JSON or double quotes.
        vision_cache_mb: With ``freeze_vision``, keep up to this many megabytes of the vision encoder's
            per-image features and encode only images not seen before (Qwen2-VL backbones; 0: off; off
            under FSDP; the bundled shapes backbones need 16 KiB an image).
            A fine-tuning run sees each image many times: after its first epoch the quickstart's steps
            cost 0.90-0.93x the CPU (``benchmarks/vision_cache.py``). See :mod:`rewarddance.models.vision_cache`.
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
        categories: Category names for per-category accuracy (others count as ``other``); null:
            the ``categories`` each evaluation set's ``manifest.json`` declares.
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
        freeze_projector: bool = False,
        freeze: list[str] | None = None,
        vision_cache_mb: float = 0,
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
        # The subclasses' own arguments are saved too (save_hyperparameters reads the whole call stack).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if dataclasses.is_dataclass(lora):
            # Plain data in checkpoints: they then load with torch.load(weights_only=True).
            self.hparams["lora"] = dataclasses.asdict(lora)  # type: ignore[arg-type]
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        if vision_cache_mb < 0 or (vision_cache_mb and not freeze_vision):
            raise UsageError(
                f"model.init_args.vision_cache_mb {vision_cache_mb}: megabytes >= 0, and > 0 only with "
                "freeze_vision: true (a trained vision tower's features change every step)"
            )
        self.vision_cache: VisionFeatureCache | None = None
        self.template: Template = load_template(template)  # validated now: a broken template fails before training
        self.backbone: Backbone | None = None
        self.eval_metrics = nn.ModuleDict()
        self.examples_pool: dict[str, list[Query]] = {}
        self.results: dict[str, dict[str, float]] = {}
        """Last computed metrics per evaluation set name (``val``, ``test-id``, ...)."""
        self.export_path: Path | None = None
        self.trained_conditions: set[bool] = set()
        """Whether training showed samples with (True) and without (False) a condition image (image-to-video):
        the export records it, so that scoring refuses inputs the model was not trained to see."""
        self.trained_criteria: Counter[str] = Counter()
        """Training samples per criteria text they were asked with: with no ``criteria`` argument the export asks
        with the most frequent one (:meth:`export_criteria`), never a criteria training did not show."""

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
        try:
            backbone.model = prepare_for_training(
                backbone.model,
                self.lora_settings,
                freeze_vision=self.hparams.freeze_vision,
                freeze_projector=self.hparams.freeze_projector,
                gradient_checkpointing=self.hparams.gradient_checkpointing,
                freeze_patterns=self.hparams.freeze or (),
            )
        except FreezeError as error:  # only freezing: a LoRA error keeps its own message
            raise UsageError(f"model.init_args freeze settings: {error}") from None
        if self.hparams.vision_cache_mb and self.device_mesh is not None:
            # A sharded tower gathers its weights in collectives every rank must join; a rank that
            # serves its images from the cache would skip them and hang the others.
            rank_zero_warn("vision_cache_mb is ignored under FSDP: every rank must run the sharded vision tower")
        elif self.hparams.vision_cache_mb:
            try:
                self.vision_cache = install_vision_cache(backbone.model, self.hparams.vision_cache_mb)
            except ValueError as error:
                raise UsageError(f"model.init_args.vision_cache_mb: {error}; set it to 0 for this backbone") from None
        # load_backbone returns eval mode; Lightning keeps module modes as it finds them, and
        # gradient checkpointing only runs in training mode.
        backbone.model.train()
        self.backbone = backbone
        self.model = backbone.model
        self.build_heads()
        self.warn_if_asked_unlike_the_export()
        shard_task(self)

    # The settings of rewarddance_reward.json that decide what the model reads and where its answer is read.
    QUERY_SETTINGS = ("kind", "paradigm", "template_name", "rationale_format", "yes_word", "no_word")

    def warn_if_asked_unlike_the_export(self) -> None:
        """Warn when the backbone is a reward-model export that this task asks differently from its training.

        An export's weights say nothing of the question they were trained on; ``rewarddance_reward.json`` does. Tested
        with other settings (``test`` on a rationale-trained export without its ``rationale_format``), a model
        reads a question it never saw and scores lower without any error (measured: 0.547 instead of 0.583 on
        held-out generated pairs, docs/generated_pairs.md). Fine-tuning into another format is legitimate, so this
        warns and does not refuse.
        """
        record = Path(str(self.hparams.backbone)) / EXPORT_CONFIG
        if not record.is_file():
            return
        trained = json.loads(record.read_text())
        here = self.export_config()
        differ = [
            f"{key} {trained[key]!r} (this task: {here.get(key)!r})"
            for key in self.QUERY_SETTINGS
            if key in trained and trained[key] != here.get(key)
        ]
        if differ:
            rank_zero_warn(
                f"backbone {self.hparams.backbone} is a reward model trained with {', '.join(differ)}: this task "
                "asks it another question. To evaluate it as trained, set the same values (model.init_args); to "
                "fine-tune it into the new format, ignore this."
            )

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
        trainer = self.trainer if self.scheduler_factory is not None else None  # a task may be used without one
        return configure_optimization(params, self.optimizer_factory, self.scheduler_factory, trainer, DEFAULT_LR)

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

    def loss_terms(self, batch: RewardBatch) -> dict[str, Tensor]:
        """The training loss terms, weighted by :meth:`loss_weights` and summed."""
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------------------

    def criteria_text(self, sample: Sample, counts: Counter[str] | None = None) -> str:
        text, known = self.template.criteria_text(self.criteria_for(sample))
        if not known and counts is not None:
            counts["criteria_verbatim"] += 1
        return text

    def retrieval_settings(self) -> tuple[int, RetrievalMode, int]:
        """``(k, mode, seed)`` of the in-context examples: here every example of the pool, in order."""
        return max((len(v) for v in self.examples_pool.values()), default=0), "first", 0

    @property
    def example_retriever(self) -> ExampleRetriever:
        """Chooses each query's in-context examples from :attr:`examples_pool` (built again when it or the settings change)."""
        settings = (*self.retrieval_settings(), self.hparams.yes_word, self.rationale_format)
        cached = self.__dict__.get("_example_retriever")
        if cached is None or cached[0] is not self.examples_pool or cached[1] != settings:
            k, mode, seed, yes_word, rationale_format = settings
            retriever = ExampleRetriever(
                self.examples_pool, k, mode, seed, yes_word=yes_word, rationale_format=rationale_format
            )
            cached = (self.examples_pool, settings, retriever)
            self.__dict__["_example_retriever"] = cached
        return cached[2]

    def make_query(
        self,
        question: QuestionKind,
        sample: Sample,
        clips: Sequence[Clip],
        *,
        answer: str | None = None,
        counts: Counter[str] | None = None,
    ) -> Query:
        """A query about ``sample`` showing ``clips``, with its in-context examples (never the sample itself)."""
        tag = sample_tag(sample)
        examples = self.example_retriever.choose(question, sample.prompt, tag, sample.key) if self.examples_pool else []
        return Query(
            question=question,
            prompt=sample.prompt,
            visuals=[self.visual(c, sample.is_video) for c in clips],
            criteria=self.criteria_text(sample, counts),
            instruction=self.instruction_for(sample),
            answer=answer,
            examples=examples,
            key=sample.key,
            tag=tag,
            condition=sample.condition,
        )

    @property
    def with_answers(self) -> bool:
        return self.rationale_format != "none"

    def rows_view(self) -> RewardTask:
        """This task without its modules (weights, metrics), backbone and trainer: what the collator
        calls :meth:`sample_rows` on, with this task's hooks (a subclass's overrides included)."""
        view = copy.copy(self)  # LightningModule.__getstate__ drops the trainer
        view.__dict__.update(_parameters={}, _buffers={}, _modules={}, backbone=None)
        return view

    @property
    def collator(self) -> RewardCollator:
        """The batch builder ``ShardDataModule`` hands to its DataLoader workers (no model weights)."""
        backbone = self._backbone()
        max_length = self.hparams.max_length
        return RewardCollator(
            encoder=QueryEncoder(backbone.processor),
            template=self.template,
            rows=self.rows_view().sample_rows,
            max_length=max_length if max_length is not None else model_max_length(backbone),
            rationale_format=self.rationale_format,
            ties=self.hparams.ties,
            on_bad_input=self.hparams.on_bad_input,
        )

    def collate(self, samples: list[Sample]) -> RewardBatch:
        """Build a batch from samples with :attr:`collator` (in this process)."""
        return self.collator(samples)

    # -- training --------------------------------------------------------------------------------

    def training_step(self, batch: RewardBatch, batch_idx: int) -> Tensor | None:
        size = len(batch.keys)
        for name, value in batch.counts.items():
            self.log(f"train/{name}", float(value), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=size)
        if batch.inputs is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if distributed and torch.distributed.get_world_size() > 1:
                # Every sample of this rank's batch was skipped (counted above), but the other ranks train: each
                # rank must take part in the step's collectives, so there is no skipping it (Lightning refuses None).
                if is_sharded(self):  # the other ranks' forward all-gathers the shards: only a forward would do
                    raise UsageError(
                        f"rank {self.global_rank}: every sample of training batch {batch_idx} was skipped "
                        f"({dict(batch.counts)}), and a sharded (FSDP) step cannot go on without this rank's forward. "
                        "Use a larger data.init_args.batch_size, or keep the samples (point_samples, on_bad_input)."
                    )
                # DDP all-reduces gradients in backward only: a zero loss through every trainable weight joins it,
                # so this rank adds nothing to the step's gradient (as if its samples were left out of the batch; were
                # every rank's batch skipped, the optimizer would still step, on zero gradients).
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0  # type: ignore[return-value]
            # One process: the step is skipped. Lightning warns on any None from training_step in case it
            # is a mistake; this one is deliberate, so exactly that message goes.
            warnings.filterwarnings(
                "ignore",
                message=re.escape("`training_step` returned `None`"),
                module=r"lightning\.pytorch\.loops\.optimization\.automatic",
            )
            return None
        real = int((~batch.pair_padding).sum()) + int((~batch.point_padding).sum())
        self.trained_conditions.update({True} if batch.conditioned else set())
        self.trained_conditions.update({False} if batch.conditioned < real else set())
        self.trained_criteria.update(batch.criteria)
        terms = self.loss_terms(batch)
        weights = self.loss_weights()
        loss = sum(weights.get(name, 1.0) * value for name, value in terms.items())
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=size)
        return loss  # type: ignore[return-value]

    def configure_callbacks(self) -> list[L.Callback]:
        return task_callbacks(self)  # stop on a NaN loss or gradient, in every config

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
        checkpoint["rewarddance_conditions"] = sorted(self.trained_conditions)
        checkpoint["rewarddance_criteria"] = dict(self.trained_criteria)

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
        self.trained_conditions = set(checkpoint.get("rewarddance_conditions", ()))
        self.trained_criteria = Counter(checkpoint.get("rewarddance_criteria", {}))
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
        """What ``rewarddance_reward.json`` records (see ``rewarddance.judge.export``)."""
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
            "criteria": self.export_criteria(),
            "max_length": self.hparams.max_length,
            "num_frames": self.hparams.num_frames,
            "lora": "merged" if self.hparams.lora is not None else None,
            # How training showed condition images (image-to-video): RewardModel refuses the other case.
            "conditions": CONDITIONS_RECORD.get(frozenset(self.trained_conditions)),
        }

    def export_criteria(self) -> str | None:
        """The criteria the export asks with by default: the ``criteria`` argument, else the criteria most training
        samples were asked with (its template name where it has one), else None (the template's default).

        Shards name their criteria per sample (the shapes world: ``text-image alignment`` for 80% of its samples,
        ``visual quality`` for the rest); a default the data never used would ask the model a question it was
        not trained on (measured: 0.61 instead of 0.68 pair accuracy on generated pairs, docs/generated_pairs.md).
        """
        if self.hparams.criteria is not None or not self.trained_criteria:
            return self.hparams.criteria
        text = self.trained_criteria.most_common(1)[0][0]
        return next((name for name, known in self.template.criteria.items() if known == text), text)

    def export_head(self) -> RewardHead | None:
        return None  # the regressive task exports its head

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
        config = self.export_config()
        k, mode, seed = self.retrieval_settings()
        examples: dict[str, list[Query]] | None = {kind: pool[:k] for kind, pool in self.examples_pool.items()}
        if mode != "first" and any(self.examples_pool.values()):
            # Retrieved per query: the whole pool is saved with the retrieval settings, and the portable query
            # (which can only show a fixed context) shows none.
            config["example_pool"] = pool_to_json(self.examples_pool, Path(folder), k=k, mode=mode, seed=seed)
            examples = None
        return export_reward_model(folder, plain, config, head=self.export_head(), examples=examples)

    def _export_dir(self) -> Path:
        if self.hparams.export_dir:
            return Path(self.hparams.export_dir)
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "export"

    def on_fit_end(self) -> None:
        exporter: RewardTask | None = self
        if self.hparams.export:
            # Every rank's batches count (all ranks take part): whether training showed condition images.
            flags = torch.tensor([v in self.trained_conditions for v in (True, False)], device=self.device).int()
            seen = self.all_gather(flags).reshape(-1, 2).amax(0).tolist()
            self.trained_conditions = {v for v, f in zip((True, False), seen) if f}
        if self.hparams.export and is_sharded(self):
            exporter = unsharded_copy(self)  # FSDP2: every rank takes part in gathering the weights
            if exporter is not None:
                exporter.trained_conditions = self.trained_conditions
                exporter.trained_criteria = self.trained_criteria
        # Every rank asks: the trainer's log_dir is a collective (broadcast from rank 0) under DDP.
        export_dir = self._export_dir() if self.hparams.export else None
        if not self.trainer.is_global_zero:
            return
        callback = self.trainer.checkpoint_callback
        checkpoint = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
        print(f"[rewarddance] checkpoint: {checkpoint or 'none (checkpointing disabled)'}")
        if export_dir is not None:
            assert exporter is not None
            self.export_path = exporter.export_to(export_dir)
            print(f"[rewarddance] export: {self.export_path} (load with RewardModel.from_pretrained)")
        for name, values in self.results.items():
            print(f"[rewarddance] last {name}: acc {values.get('acc', float('nan')):.3f}")
        if self.vision_cache is not None:
            stats = self.vision_cache.stats()
            print(
                f"[rewarddance] vision cache: {stats['hits']} images served, {stats['misses']} encoded, "
                f"{stats['held']} held ({stats['bytes'] / 2**20:.0f} MB)"
            )

    # -- scoring (the same path as RewardModel) --------------------------------------------------

    @torch.no_grad()
    def score_queries(self, queries: Sequence[Query]) -> Tensor:
        """Rewards of queries exactly as ``RewardModel.score`` computes them (eval mode, no gradients)."""
        raise NotImplementedError
