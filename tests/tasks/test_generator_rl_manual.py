"""GeneratorRLTask's manual optimization: GRPO backpropagates each trained step as it goes (one step's activations
alive at a time) and makes the update the stacked-loss backward of the mean made; clipping is the task's
``max_grad_norm``; the Trainer settings manual optimization refuses are refused naming the replacement; checkpoints
of automatic optimization resume at their step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rewarddance.errors import UsageError
from rewarddance.planning.measure import LiveTensorBytes
from rewarddance.rl.settings import GeneratorLora, GRPOSettings
from rewarddance.tasks import GeneratorRLTask
from tests.tasks.test_generator_rl import FAST, _data, prompts_jsonl  # noqa: F401 (a fixture)

GRPO = GRPOSettings(group_size=2, train_steps=3, kl_coef=0.1)
"""Three trained steps, and the KL (its no-grad reference forward runs before each step's gradient pass)."""


class StackedGRPO(GeneratorRLTask):
    """The update as it was before manual optimization: every trained step's graph kept, one backward of the mean."""

    def grpo_step(self, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        self._rollout = rollout = self._sample_rollouts(prompts, metadata)
        loss = torch.stack([self.step_loss(rollout, step).loss for step in self.trained_steps(rollout)]).mean()
        self.log("train/loss", loss.detach(), batch_size=len(prompts))
        self.manual_backward(loss)
        return loss.detach()


class StepPeak(L.Callback):
    """The peak of live tensor bytes during each training step (what a GPU's memory_allocated would show)."""

    def __init__(self) -> None:
        self.peaks: list[int] = []

    def on_train_batch_start(self, *_: object) -> None:
        self.mode = LiveTensorBytes()
        self.mode.__enter__()

    def on_train_batch_end(self, *_: object) -> None:
        self.mode.__exit__(None, None, None)
        self.peaks.append(self.mode.peak)


def _fit(task: GeneratorRLTask, prompts: str, root: Path, **trainer: Any) -> L.Trainer:
    fit = L.Trainer(
        **{"max_steps": 1, "enable_checkpointing": False, **trainer},
        accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    fit.fit(task, datamodule=_data(prompts))
    return fit


def _pair(**kwargs: Any) -> tuple[GeneratorRLTask, GeneratorRLTask]:
    tasks = []
    for cls in (GeneratorRLTask, StackedGRPO):
        task = cls(algorithm="grpo", grpo=GRPO, lora=GeneratorLora(r=4), plot=False, export=False, **kwargs, **FAST)
        torch.manual_seed(0)  # the same LoRA initialisation in both
        task.configure_model()
        tasks.append(task)
    return tasks[0], tasks[1]


def test_per_step_backward_makes_the_update_of_the_stacked_mean(tmp_path: Path, prompts_jsonl: str):  # noqa: F811 (the fixture)
    # SGD: the update is the gradient itself (Adam's first step would hide differences behind sign(g)); clipping on.
    sgd = lambda params: torch.optim.SGD(params, lr=10.0)  # noqa: E731
    per_step, stacked = _pair(optimizer=sgd, max_grad_norm=0.002)
    start = {n: p.detach().clone() for n, p in per_step.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, q) for p, q in zip(per_step.parameters(), stacked.parameters(), strict=True))
    fits = [_fit(task, prompts_jsonl, tmp_path / type(task).__name__) for task in (per_step, stacked)]

    assert [f.global_step for f in fits] == [1, 1]
    a, b = (dict(t.named_parameters()) for t in (per_step, stacked))
    moved = max(float((a[n].detach() - start[n]).abs().max()) for n in start)
    assert moved > 1e-4  # a real update, well above the tolerance below
    for name in start:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
    for key in ("train/loss", "train/grad_norm"):  # the same loss, and the norm logged before clipping
        torch.testing.assert_close(fits[0].callback_metrics[key], fits[1].callback_metrics[key])
    assert float(fits[0].callback_metrics["train/grad_norm"]) > 0.002  # so the clipping above acted


def test_per_step_backward_keeps_one_steps_activations_alive(tmp_path: Path, prompts_jsonl: str):  # noqa: F811 (the fixture)
    per_step, stacked = _pair(max_grad_norm=None)
    peaks = []
    for task in (per_step, stacked):
        peak = StepPeak()
        _fit(task, prompts_jsonl, tmp_path / type(task).__name__, callbacks=[peak])
        peaks.append(peak.peaks[0])
    # Three trained steps: the stacked backward holds three graphs at once, the per-step one a single graph.
    print(f"peak live bytes in the step: per-step {peaks[0] / 2**20:.2f} MiB, stacked {peaks[1] / 2**20:.2f} MiB")
    assert peaks[0] < 0.6 * peaks[1]


def test_clipping_is_the_tasks_and_the_trainers_is_refused_naming_it(tmp_path: Path, prompts_jsonl: str):  # noqa: F811 (the fixture)
    task = GeneratorRLTask(plot=False, export=False, **FAST)
    with pytest.raises(UsageError, match=r"trainer.gradient_clip_val: 0.5: .* set model.init_args.max_grad_norm: 0.5"):
        _fit(task, prompts_jsonl, tmp_path, gradient_clip_val=0.5)
    with pytest.raises(UsageError, match=r"trainer.accumulate_grad_batches: 2: .* data.init_args.batch_size"):
        _fit(task, prompts_jsonl, tmp_path, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="max_grad_norm must be >= 0"):
        GeneratorRLTask(max_grad_norm=-1.0)


def test_a_checkpoint_of_automatic_optimization_resumes_at_its_step(tmp_path: Path, prompts_jsonl: str):  # noqa: F811 (the fixture)
    task = GeneratorRLTask(plot=False, export=False, **FAST)
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    _fit(task, prompts_jsonl, tmp_path, max_steps=2, callbacks=[save], enable_checkpointing=True)
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    # As the task saved them before it optimized manually: the steps counted in the automatic loop's progress.
    loop = checkpoint["loops"]["fit_loop"]
    manual = loop["epoch_loop.manual_optimization.optim_step_progress"]
    assert manual["total"]["completed"] == 2
    loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = manual
    loop["epoch_loop.manual_optimization.optim_step_progress"] = {
        "total": {"ready": 0, "completed": 0},
        "current": {"ready": 0, "completed": 0},
    }
    torch.save(checkpoint, tmp_path / "automatic.ckpt")

    resumed = GeneratorRLTask(plot=False, export=False, **FAST)
    steps: list[int] = []

    class Steps(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
            steps.append(trainer.global_step)

    fit = L.Trainer(
        max_steps=3, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, callbacks=[Steps()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    fit.fit(resumed, datamodule=_data(prompts_jsonl), ckpt_path=tmp_path / "automatic.ckpt")
    assert steps == [2] and fit.global_step == 3


def test_the_lr_scheduler_steps_once_per_update(tmp_path: Path, prompts_jsonl: str):  # noqa: F811 (the fixture)
    # Manual optimization: Lightning steps no scheduler; the task does, after each optimizer step.
    task = GeneratorRLTask(
        plot=False,
        export=False,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1)),
        **FAST,
    )
    fit = _fit(task, prompts_jsonl, tmp_path, max_steps=3)
    assert fit.global_step == 3
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(1 / 4)
