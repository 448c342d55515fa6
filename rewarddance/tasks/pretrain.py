"""Pretrain a tiny VLM on the shapes world: captions and dense visual questions, answer-only loss.

Real generative reward models start from a pretrained VLM. None can be downloaded where
rewarddance is developed, so :class:`CaptionPretrainTask` teaches a random tiny VLM to see the
shapes world first; the reward tasks then fine-tune the exported folder like any hub checkpoint.

What was observed while the bundled backbones were developed shaped the design (the runs
themselves are not kept in this repository; ``data/backbones/*/TRAINING_RECORD.md`` records the
final ones):

- Questions answered in the same sequence as the caption were solved by copying the caption and
  taught nothing. Here every training sequence is ONE image with ONE task: either
  ``"Describe the image."`` -> caption, or one visual question -> its short answer
  (:mod:`rewarddance.data.captions`).
- Caption pretraining alone learned colour and count but not shape or position. Questions are
  drawn type-balanced (a question type first, then a question of that type), so shape, existence,
  location and yes/no relation questions are as frequent as count questions.
- Loss and accuracy are on answer tokens only (the prompt is given, not predicted).

Evaluation reports answer-token accuracy and, per question type, exact-match accuracy of the
whole answer (EOS included) under teacher forcing. If every answer token is the argmax given the
correct prefix, greedy decoding produces exactly that answer and stops, so this *is* greedy
exact match, at the cost of one forward pass.

Run it with ``python -m rewarddance fit --config configs/pretrain/shapes_vlm_tiny.yaml``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from rewarddance.callbacks import task_callbacks
from rewarddance.data.captions import CAPTION, Sequences, all_sequences, question_type, sample_sequences
from rewarddance.data.schema import Sample
from rewarddance.data.stream import ShardStream, resolve_shards
from rewarddance.models import Backbone, load_backbone
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.inputs import IMAGE_PLACEHOLDER
from rewarddance.optimization import WarmupCosineLR, configure_optimization

# WarmupCosineLR is re-exported: configs name it rewarddance.tasks.pretrain.WarmupCosineLR.
__all__ = [
    "CaptionPretrainTask",
    "WarmupCosineLR",
    "answer_correctness",
    "ask",
    "evaluate_sequences",
    "export_backbone",
]

# --------------------------------------------------------------------------------------------
# Metrics shared by the task, the export record and the tests
# --------------------------------------------------------------------------------------------


def answer_correctness(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Token and sequence correctness of teacher-forced answers.

    Args:
        logits: ``[batch, length, vocab]`` model logits.
        labels: ``[batch, length]`` answer token ids, -100 elsewhere (aligned with the inputs).

    Returns:
        ``(token_correct, token_count, exact)``: correct answer tokens and answer tokens per
        sequence, and whether every answer token was the argmax (greedy exact match), each ``[batch]``.
    """
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    correct = (predicted == target) & mask
    count = mask.sum(-1)
    return correct.sum(-1), count, (correct.sum(-1) == count) & (count > 0)


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def evaluate_sequences(backbone: Backbone, sequences: Sequences, batch_size: int = 128) -> dict[str, float]:
    """Greedy exact-match accuracy per task type, and answer-token accuracy, of a backbone.

    Args:
        backbone: The VLM (put in eval mode here).
        sequences: What to ask (e.g. :func:`all_sequences` of a split).
        batch_size: Sequences per forward pass.

    Returns:
        ``{"token_acc": ..., "acc_<type>": ..., "n_<type>": ...}``; ``acc_question`` pools every
        question type (the caption excluded).
    """
    was_training = backbone.model.training
    backbone.model.eval()
    exact: dict[str, list[float]] = defaultdict(list)
    tokens_right = tokens = 0
    for start in range(0, len(sequences), batch_size):
        part = slice(start, start + batch_size)
        batch = backbone.encode(sequences.prompts[part], sequences.images[part], answers=sequences.answers[part])
        logits = backbone.model(**_model_inputs(batch)).logits
        right, count, ok = answer_correctness(logits.float(), batch["labels"])
        tokens_right += int(right.sum())
        tokens += int(count.sum())
        for kind, value in zip(sequences.types[part], ok.tolist()):
            exact[kind].append(float(value))
    backbone.model.train(was_training)
    out: dict[str, float] = {"token_acc": tokens_right / max(tokens, 1)}
    for kind, values in sorted(exact.items()):
        out[f"acc_{kind}"] = sum(values) / len(values)
        out[f"n_{kind}"] = len(values)
    questions = [v for kind, values in exact.items() if kind != CAPTION for v in values]
    if questions:
        out["acc_question"] = sum(questions) / len(questions)
    return out


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class CaptionPretrainTask(L.LightningModule):
    """Pretrain a VLM on shapes-world captions and visual questions, one task per sequence.

    Args:
        backbone: Backbone name for :func:`rewarddance.models.load_backbone`: a tiny family name
            (``tiny-qwen2-vl``) to start from random weights, or a folder / registered name to go on
            training a checkpoint.
        size: Tiny preset (``tiny`` or ``small``); None for folders and hub ids.
        backbone_overrides: :class:`rewarddance.models.TinySize` fields, e.g. ``{"vision_depth": 4}``.
        init_seed: Seed of the random initial weights of a tiny backbone.
        caption_fraction: Probability that a training sequence is the caption task rather than one
            visual question.
        balance_types: Draw the question type uniformly before the question (dense shape/position
            supervision), instead of uniformly over a sample's questions.
        sequences_per_sample: Training sequences drawn from each sample (each one task).
        mixing: Toss the caption-or-question coin per batch (faster: no padding of questions to
            caption length) or per task; see :func:`sample_sequences`.
        data_seed: Seed of the task choices in :meth:`collate`.
        max_length: Longest sequence allowed (image tokens included); longer ones raise.
        optimizer: Optimizer factory (LightningCLI: ``optimizer:`` or ``model.init_args.optimizer``).
        scheduler: Learning-rate scheduler factory, stepped every optimizer step (e.g.
            :class:`WarmupCosineLR`); None keeps the lr constant.
        export_dir: Folder to write the trained backbone to when fit ends (``save_pretrained`` of
            model and processor, weights in ``export_dtype``; no optimizer state), with
            ``training_record.json`` and ``TRAINING_RECORD.md``. None: no export.
        export_dtype: Dtype of the exported weights (``float16`` halves the folder); the config
            says float32, so loading with the default ``dtype="auto"`` upcasts for training.
        export_eval_samples: Samples of each validation set evaluated on the *exported* folder
            (reloaded from disk) for the training record; 0 skips it.
        run_command: The command line recorded in the training record.
    """

    needs_references = False  # ShardDataModule: caption samples have none; skip decoding them.

    def __init__(
        self,
        backbone: str = "tiny-qwen2-vl",
        size: str | None = "tiny",
        backbone_overrides: dict[str, Any] | None = None,
        init_seed: int = 0,
        caption_fraction: float = 0.25,
        balance_types: bool = True,
        sequences_per_sample: int = 1,
        mixing: Literal["batch", "sample"] = "batch",
        data_seed: int = 0,
        max_length: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        export_dir: str | None = None,
        export_dtype: str = "float16",
        export_eval_samples: int = 1000,
        run_command: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.backbone_name, self.size = backbone, size
        self.backbone_overrides = dict(backbone_overrides or {})
        self.init_seed = init_seed
        self.caption_fraction, self.balance_types = caption_fraction, balance_types
        self.sequences_per_sample, self.mixing = sequences_per_sample, mixing
        self.max_length = max_length
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.export_dir, self.export_dtype = export_dir, export_dtype
        self.export_eval_samples, self.run_command = export_eval_samples, run_command
        self._rng = random.Random(data_seed)
        self.backbone: Backbone | None = None
        self._fit_started: float | None = None

    # -- model ---------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Build the backbone once (Lightning may call this hook more than once)."""
        if self.backbone is not None:
            return
        kwargs: dict[str, Any] = dict(self.backbone_overrides)
        if self.size is not None:
            kwargs["size"] = self.size
        if self.backbone_name.startswith("tiny-"):
            kwargs["seed"] = self.init_seed
        # float32: CPU half-precision training is slow and loses small updates.
        self.backbone = load_backbone(self.backbone_name, dtype=torch.float32, **kwargs)
        self.model = self.backbone.model  # registered as a submodule: Lightning trains and checkpoints it
        self.model.train()

    def _backbone(self) -> Backbone:
        if self.backbone is None:
            self.configure_model()
        assert self.backbone is not None
        return self.backbone

    # -- data ----------------------------------------------------------------------------------

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        """Turn caption samples into model inputs with answer-only labels.

        In training mode each sample gives ``sequences_per_sample`` random tasks (see
        :func:`sample_sequences`); in eval mode every task of every sample (the caption and all
        questions), so validation scores each question type on all of its questions. The mode is
        read when the batch is built, which is in-process with ``num_workers: 0`` (the setting here;
        the configs train one thread per run).

        Args:
            samples: Decoded caption samples (padding repeats are dropped).

        Returns:
            The encoded batch plus ``types`` (task type per sequence).
        """
        if self.training:
            sequences = sample_sequences(
                samples, self._rng, self.caption_fraction, self.balance_types, self.sequences_per_sample, self.mixing
            )
        else:
            sequences = all_sequences(samples)
        if not len(sequences):
            return {"types": []}
        batch = self._backbone().encode(
            sequences.prompts, sequences.images, answers=sequences.answers, max_length=self.max_length
        )
        return {**batch, "types": sequences.types}

    # -- steps ---------------------------------------------------------------------------------

    def _forward(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "types")}
        logits = self.model(**inputs).logits
        labels = batch["labels"]
        # Causal shift: logits at t predict the token at t + 1; everything but answers is -100.
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
        )
        right, count, exact = answer_correctness(logits.detach(), labels)
        return loss, logits, right, count, exact

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        if not batch.get("types"):
            return None  # an all-padding batch: nothing to learn
        loss, _, right, count, _ = self._forward(batch)
        n = len(batch["types"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/token_acc", right.sum() / count.sum().clamp(min=1), batch_size=n)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        types: list[str] = batch.get("types", [])
        if not types:
            return
        name = self._set_name(dataloader_idx)
        loss, _, right, count, exact = self._forward(batch)
        log = {"add_dataloader_idx": False, "sync_dist": True, "on_epoch": True, "on_step": False}
        # Lightning averages epoch values weighted by batch_size: pass the number each mean is over.
        self.log(f"{name}/loss", loss, batch_size=int(count.sum()), **log)
        self.log(f"{name}/token_acc", right.sum() / count.sum().clamp(min=1), batch_size=int(count.sum()), **log)
        by_type: dict[str, list[int]] = defaultdict(list)
        for i, kind in enumerate(types):
            by_type[kind].append(i)
        for kind, index in by_type.items():
            self.log(f"{name}/acc_{kind}", exact[index].float().mean(), batch_size=len(index), **log)
        questions = [i for i, kind in enumerate(types) if kind != CAPTION]
        if questions:
            self.log(f"{name}/acc_question", exact[questions].float().mean(), batch_size=len(questions), **log)

    def _set_name(self, dataloader_idx: int) -> str:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_name"):
            return datamodule.set_name("validate", dataloader_idx)
        return f"val{dataloader_idx}" if dataloader_idx else "val"

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        trainer = self.trainer if self.scheduler_factory is not None else None  # a task may be used without one
        return configure_optimization(self.parameters(), self.optimizer_factory, self.scheduler_factory, trainer)

    def configure_callbacks(self) -> list[L.Callback]:
        return task_callbacks(self)  # stop on a NaN loss or gradient, in every config

    # -- export --------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._fit_started = time.time()

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            export_backbone(self, self.export_dir)


def _num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _eval_sets(task: CaptionPretrainTask) -> dict[str, list[Sample]]:
    """The first ``export_eval_samples`` real samples of each validation set of the datamodule."""
    datamodule = getattr(task.trainer, "datamodule", None)
    if datamodule is None or task.export_eval_samples <= 0 or getattr(datamodule, "val", None) is None:
        return {}
    specs = datamodule.val if isinstance(datamodule.val, dict) else {"val": datamodule.val}
    sets: dict[str, list[Sample]] = {}
    for name, spec in specs.items():
        stream = ShardStream(resolve_shards(spec), batch_size=1, shuffle=False, load_references=False, name=name)
        samples: list[Sample] = []
        for batch in stream:
            samples += [s for s in batch if not s.padding]
            if len(samples) >= task.export_eval_samples:
                break
        sets[name] = samples[: task.export_eval_samples]
    return sets


def export_backbone(task: CaptionPretrainTask, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the trained backbone as a ``save_pretrained`` folder and a training record.

    The weights are cast to ``task.export_dtype`` (only in the copy on disk), while ``config.json``
    keeps ``dtype: float32`` so ``load_backbone(folder)`` loads float32 weights ready to fine-tune.
    The folder is then reloaded from disk and scored on the validation sets, so the recorded
    metrics are those of exactly what was exported.

    Args:
        task: The trained task (its trainer supplies steps, data and the last validation metrics).
        out_dir: The folder (created; files in it are overwritten).

    Returns:
        The record written to ``training_record.json``.
    """
    backbone = task._backbone()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(task.export_dtype)
    state = {k: v.detach().to(dtype) for k, v in backbone.model.state_dict().items()}
    backbone.model.config.dtype = torch.float32
    backbone.model.save_pretrained(out, state_dict=state)
    backbone.processor.save_pretrained(out)

    trainer = task.trainer
    wall = time.time() - task._fit_started if task._fit_started else None
    final_metrics: dict[str, dict[str, float]] = {}
    eval_sets = _eval_sets(task)
    if eval_sets:
        reloaded = load_backbone(out)
        for name, samples in eval_sets.items():
            final_metrics[name] = evaluate_sequences(reloaded, all_sequences(samples))
    last_val = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if not k.startswith("train/")}
    record: dict[str, Any] = {
        "name": out.name,
        "command": task.run_command,
        "backbone": task.backbone_name,
        "size": task.size,
        "backbone_overrides": task.backbone_overrides,
        "tiny_size": vars(backbone.tiny_size) if backbone.tiny_size else None,
        "parameters": _num_parameters(backbone.model),
        "hparams": {k: v for k, v in dict(task.hparams).items() if k != "run_command"},
        "optimizer": repr(trainer.optimizers[0]).replace("\n", " ") if trainer.optimizers else None,
        "seed": task.init_seed,
        "global_step": trainer.global_step,
        "epochs_completed": trainer.current_epoch,
        "wall_time_s": round(wall, 1) if wall is not None else None,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "export_dtype": task.export_dtype,
        "last_validation": last_val,
        "final_metrics": final_metrics,
        "eval_samples_per_set": {name: len(s) for name, s in eval_sets.items()},
    }
    # Training continued from an exported folder (a second stage) keeps that folder's record, so
    # the bundle documents its whole history; totals add the stages up.
    previous = Path(task.backbone_name, "training_record.json")
    if previous.is_file():
        earlier = json.loads(previous.read_text())
        record["previous_stage"] = earlier
        record["tiny_size"] = record["tiny_size"] or earlier.get("tiny_size")
        record["seed"] = earlier.get("seed")  # the initial weights came from the first stage
        stages = [*earlier.get("stages", [_stage_summary(earlier)]), _stage_summary(record)]
        record["stages"] = stages
        record["total_steps"] = sum(st["global_step"] for st in stages)
        record["total_wall_time_s"] = round(sum(st["wall_time_s"] or 0 for st in stages), 1)
    config = Path(trainer.log_dir or "", "config.yaml")  # written by LightningCLI's SaveConfigCallback
    if config.is_file():
        record["config"] = "training_config.yaml"
        (out / "training_config.yaml").write_text(config.read_text())
    (out / "training_record.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "TRAINING_RECORD.md").write_text(_record_markdown(record))
    return record


def _stage_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("command", "backbone", "size", "global_step", "wall_time_s", "optimizer")
    return {k: record.get(k) for k in keys}


def _record_markdown(record: Mapping[str, Any]) -> str:
    stages: list[Mapping[str, Any]] = record.get("stages") or [_stage_summary(record)]
    lines = [f"# {record['name']}: training record", ""]
    for i, stage in enumerate(stages, 1):
        lines += [
            f"- Stage {i}: `{stage['command']}` (from `{stage['backbone']}`): "
            f"{stage['global_step']} optimizer steps in {stage['wall_time_s']} s",
        ]
    lines += [
        f"- Total: {record.get('total_steps', record['global_step'])} optimizer steps, "
        f"{record.get('total_wall_time_s', record['wall_time_s'])} s wall time on "
        f"{record['torch_threads']} CPU thread(s)",
        f"- Architecture: tiny-qwen2-vl `{json.dumps(record['tiny_size'])}`",
        f"- Parameters: {record['parameters']:,}",
        f"- Seeds: init {record['seed']}, data/task choices {record['hparams'].get('data_seed')}",
        f"- Weights stored as {record['export_dtype']} (loaded as float32)",
        "",
        "Greedy exact-match accuracy per question type on the exported weights "
        "(`position` = yes/no relation questions, `where` = 3x3 grid location; "
        "`token_acc` = answer-token accuracy over captions and questions):",
        "",
    ]
    metrics: Mapping[str, Mapping[str, float]] = record["final_metrics"]
    if metrics:
        keys = sorted({k for m in metrics.values() for k in m if not k.startswith("n_")})
        lines.append("| metric | " + " | ".join(metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for key in keys:
            cells = [f"{m[key]:.3f}" if key in m else "" for m in metrics.values()]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        counts = {name: {k[2:]: int(v) for k, v in m.items() if k.startswith("n_")} for name, m in metrics.items()}
        lines += ["", f"Sequences scored per type: `{json.dumps(counts)}`"]
    lines += [
        "",
        "Full record (hyperparameters, last validation during training): `training_record.json`; "
        "the resolved LightningCLI config: `training_config.yaml`.",
        "",
    ]
    return "\n".join(lines)


def ask(backbone: Backbone, images: Sequence[Any], questions: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """Would greedy decoding answer each question about its image exactly with the given answer?

    Args:
        backbone: The VLM.
        images: One PIL image per question.
        questions: The questions (without image placeholder).
        answers: The expected answers.

    Returns:
        One bool per question.
    """
    sequences = Sequences(
        prompts=[f"{IMAGE_PLACEHOLDER} {q}" for q in questions],
        images=[[im] for im in images],
        answers=list(answers),
        types=[question_type(q) for q in questions],
    )
    was_training = backbone.model.training
    backbone.model.eval()
    with torch.no_grad():
        batch = backbone.encode(sequences.prompts, sequences.images, answers=sequences.answers)
        logits = backbone.model(**_model_inputs(batch)).logits
    backbone.model.train(was_training)
    return answer_correctness(logits.float(), batch["labels"])[2].tolist()
