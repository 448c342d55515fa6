"""Periodic evaluation of a generator under RL: a fixed prompt set judged by the evaluator and by the reward.

Every ``eval_every`` optimizer steps (and before the first, and after the last) :class:`RLEvaluation` samples the
DataModule's fixed ``val`` prompts with the current denoiser, judges the samples with the evaluator of their
metadata (:data:`~rewarddance.callbacks.evaluation.EVALUATORS`: GenEval-style per-tag accuracy and their mean,
per-part scores), scores the same samples with the training reward, measures the diversity per prompt, and runs
the reward-hacking check on the series so far (:func:`rewarddance.rl.diagnostics.detect_reward_hacking`): a
:class:`RewardHackingWarning` fires when the reward rises while the evaluator's score does not.

It is driven by the task's own hooks rather than attached as a Lightning callback: Lightning runs every callback's
``on_train_batch_end`` before the LightningModule's and always runs ``ModelCheckpoint`` last among callbacks, so as
a callback the evaluation of a checkpoint's step would land in that checkpoint; from the task's hook it runs after
the checkpoint is written, as the resumed run's first evaluation expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from rewarddance.callbacks.evaluation import EVALUATORS, GENEVAL, Evaluator, has_geneval_metadata
from rewarddance.data.prompts import PromptItem
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.diagnostics import detect_reward_hacking, sample_diversity

__all__ = ["EVAL_SERIES", "RLEvaluation", "RewardHackingWarning"]

EVAL_SERIES = ("step", "reward", "geneval", "parts", "diversity", "hacking")
"""The series one evaluation appends to (``history["eval"]`` of the task, plotted by the RL curves)."""


class RewardHackingWarning(UserWarning):
    """The reward keeps rising while the oracle score falls or stalls."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RLEvaluation:
    """The fixed-prompt evaluation of :class:`~rewarddance.tasks.GeneratorRLTask` and its reward-hacking check.

    Of the task it uses the public sampling surface: ``reward``, ``denoiser``, ``components()`` (the loaded
    generator), ``generate(prompts, samples_per_prompt=, seed=)``, ``seed_for(*parts)`` and ``precision_context()``.

    Args:
        every: Evaluate every this many optimizer steps (and before the first); None or 0: never.
        samples_per_prompt: Samples per evaluation prompt (2 or more also measure diversity per prompt).
        batch_size: Evaluation prompts sampled together.
        hacking_window: Steps the hacking check fits its trends over; None: 5 x ``every``.
        hacking_signal: Evaluator series compared with the reward: ``parts`` (mean of per-part scores) or
            ``geneval`` (the all-or-nothing GenEval overall).
    """

    def __init__(
        self,
        every: int | None,
        samples_per_prompt: int,
        batch_size: int,
        hacking_window: int | None,
        hacking_signal: Literal["parts", "geneval"],
    ) -> None:
        self.every, self.samples_per_prompt, self.batch_size = every, samples_per_prompt, batch_size
        self.hacking_window, self.hacking_signal = hacking_window, hacking_signal
        self.history: dict[str, list[float]] = {name: [] for name in EVAL_SERIES}
        """The series so far (the task keeps it as ``history["eval"]`` and checkpoints it)."""
        self.last: dict[str, float] = {}
        """Metrics of the latest evaluation (``oracle/geneval``, ``oracle/<tag>``, ``hacking/flag``...)."""
        self._items: list[PromptItem] | None = None
        self._hacking = False
        self._last_step = -1

    def prompts(self, module: L.LightningModule) -> list[PromptItem]:
        """The fixed evaluation prompts: the DataModule's ``val_prompts()``, those with GenEval metadata."""
        if self._items is None:
            datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
            items = datamodule.val_prompts() if hasattr(datamodule, "val_prompts") else []
            self._items = [i for i in items if has_geneval_metadata(i.get("metadata"))]
            if not items:
                rank_zero_warn(
                    "eval_every is set but the DataModule gives no evaluation prompts (PromptDataModule val, e.g. "
                    "shapes:test-id): no oracle evaluation, no reward-hacking check."
                )
            elif not self._items:
                rank_zero_warn("No evaluation prompt has GenEval metadata (tag, include): the oracle cannot judge them")
        return self._items

    def maybe_evaluate(self, module: L.LightningModule, force: bool = False) -> None:
        """Evaluate when the step is due (or ``force``), once per step."""
        if not self.every or self._last_step == module.global_step:
            return
        if force or module.global_step % self.every == 0:
            self.evaluate(module)

    @torch.no_grad()
    def evaluate(self, module: L.LightningModule) -> dict[str, float]:
        """Sample the fixed prompts, judge them with the evaluator and the reward; returns (and logs) the metrics.

        Metrics: ``oracle/geneval`` (mean over tags of per-tag accuracy), ``oracle/<tag>``,
        ``oracle/parts/<part>``, ``oracle/reward`` (the reward of the same samples), ``oracle/diversity`` (mean
        pairwise RMS pixel distance between a prompt's samples), and the hacking check ``hacking/flag``,
        ``hacking/reward_gain``, ``hacking/oracle_gain``. Under DDP each rank samples a slice of the prompts.
        """
        task: Any = module  # a GeneratorRLTask (the class docstring lists what is used)
        items = self.prompts(module)
        if not items:
            return {}
        evaluator: Evaluator = EVALUATORS[GENEVAL]
        rank, world = (module.global_rank, module.trainer.world_size) if module._trainer is not None else (0, 1)
        tags = sorted({str(i["metadata"].get("tag", "other")) for i in items})
        video = task.components().kind == "video"
        parts = list(evaluator.video_parts if video else evaluator.parts)
        n = self.samples_per_prompt
        # Sums over this rank's samples, in one vector so that one all-reduce gathers them:
        # [correct per tag | count per tag | part sums | reward sum | sample count | diversity sum | prompt count]
        totals = torch.zeros(2 * len(tags) + len(parts) + 4, dtype=torch.float64)
        was_training = task.denoiser.training
        task.denoiser.eval()
        try:
            mine = items[rank::world]
            for chunk_index, chunk in enumerate(_chunks(mine, self.batch_size)):
                prompts = [i["prompt"] for i in chunk]
                metadata = [i["metadata"] for i in chunk]
                with task.precision_context():
                    task.reward.prepare(prompts, metadata)
                    # The same seeds at every evaluation: curves compare the model, not the noise.
                    images = task.generate(prompts, samples_per_prompt=n, seed=task.seed_for(rank, chunk_index))
                    rewards = task.reward(
                        images, [p for p in prompts for _ in range(n)], [m for m in metadata for _ in range(n)]
                    )
                for j, sample in enumerate(images.float().cpu()):
                    meta = metadata[j // n]
                    verdict = self._judge(evaluator, sample, meta)
                    t = tags.index(str(meta.get("tag", "other")))
                    totals[t] += float(verdict.correct)
                    totals[len(tags) + t] += 1
                    for p, part in enumerate(parts):
                        totals[2 * len(tags) + p] += float(verdict.parts.get(part, math.nan))
                base = 2 * len(tags) + len(parts)
                rewards = task.reward.monitored(rewards)  # a group-normalised reward's raw scores
                totals[base] += float(rewards.float().sum())
                totals[base + 1] += rewards.numel()
                if n > 1:
                    diversity = sample_diversity(images.view(len(chunk), n, *images.shape[1:]).float())
                    totals[base + 2] += float(diversity.sum())
                    totals[base + 3] += len(chunk)
        finally:
            task.denoiser.train(was_training)
        if world > 1:
            totals = module.trainer.strategy.reduce(totals.to(module.device), reduce_op="sum").cpu()
        metrics = self.check_hacking(_metrics(tags, parts, totals), module.global_step)
        self.last = metrics
        self._last_step = module.global_step
        _log_metrics(module, metrics)
        return metrics

    @staticmethod
    def _judge(evaluator: Evaluator, sample: Tensor, metadata: Mapping[str, Any]) -> Any:
        if sample.ndim == 4:  # a video: [T, 3, H, W]
            return evaluator.judge_video(to_pil_images(sample), metadata)
        (image,) = to_pil_images(sample[None])
        return evaluator.judge(image, metadata)

    def summary(self) -> str | None:
        """First and last evaluation in a line (None before two evaluations)."""
        evals = self.history
        if len(evals["step"]) < 2:
            return None
        return (
            f"oracle (fixed val prompts) step {evals['step'][0]:.0f} -> {evals['step'][-1]:.0f}: "
            f"geneval {evals['geneval'][0]:.3f} -> {evals['geneval'][-1]:.3f}, parts {evals['parts'][0]:.3f} -> "
            f"{evals['parts'][-1]:.3f}; reward {evals['reward'][0]:.3f} -> {evals['reward'][-1]:.3f}"
        )

    def check_hacking(self, metrics: Mapping[str, float], step: int) -> dict[str, float]:
        """Record an evaluation (``oracle/reward``, ``oracle/geneval``, ``oracle/parts/mean``...) in the history and
        run the reward-hacking check on the series so far (:func:`rewarddance.rl.detect_reward_hacking`).

        Warns (:class:`RewardHackingWarning`) when the check turns positive.

        Args:
            metrics: The evaluation's metrics.
            step: Its step.

        Returns:
            ``metrics`` plus ``hacking/flag``, ``hacking/reward_gain`` and ``hacking/oracle_gain``.
        """
        record = self.history
        record["step"].append(float(step))
        record["reward"].append(float(metrics["oracle/reward"]))
        record["geneval"].append(float(metrics["oracle/geneval"]))
        record["parts"].append(float(metrics["oracle/parts/mean"]))
        record["diversity"].append(float(metrics.get("oracle/diversity", math.nan)))
        signal = record["parts"] if self.hacking_signal == "parts" else record["geneval"]
        window = self.hacking_window or 5 * max(int(self.every or 1), 1)
        check = detect_reward_hacking(record["step"], record["reward"], record["step"], signal, window=window)
        record["hacking"].append(float(check.hacking))
        if check.hacking and not self._hacking:
            rank_zero_warn(
                f"Reward hacking suspected at step {step}: over the last {window} steps the reward rose by "
                f"{check.reward_gain:+.3f} while the oracle ({self.hacking_signal}) changed by "
                f"{check.oracle_gain:+.3f}. Inspect samples; consider stopping, a KL term or a better reward model.",
                category=RewardHackingWarning,
            )
        self._hacking = check.hacking
        return {
            **metrics,
            "hacking/flag": float(check.hacking),
            "hacking/reward_gain": check.reward_gain,
            "hacking/oracle_gain": check.oracle_gain,
        }


def _metrics(tags: list[str], parts: list[str], totals: Tensor) -> dict[str, float]:
    """The metrics from the summed vector of :meth:`RLEvaluation.evaluate`."""
    k, base = len(tags), 2 * len(tags) + len(parts)
    count = totals[k : 2 * k]
    per_tag = {tag: float(totals[i] / count[i]) for i, tag in enumerate(tags) if count[i] > 0}
    samples = float(count.sum())
    metrics = {"oracle/geneval": sum(per_tag.values()) / len(per_tag) if per_tag else math.nan}
    metrics.update({f"oracle/{tag}": acc for tag, acc in per_tag.items()})
    metrics.update({f"oracle/parts/{part}": float(totals[2 * k + p]) / samples for p, part in enumerate(parts)})
    metrics["oracle/reward"] = float(totals[base] / totals[base + 1])
    metrics["oracle/diversity"] = float(totals[base + 2] / totals[base + 3]) if totals[base + 3] > 0 else math.nan
    return metrics


@rank_zero_only
def _log_metrics(module: L.LightningModule, metrics: Mapping[str, float]) -> None:
    # Straight to the loggers: self.log is not allowed in on_train_start / on_train_end.
    for logger in module.loggers:
        logger.log_metrics(dict(metrics), step=module.global_step)
