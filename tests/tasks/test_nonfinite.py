"""NonFiniteGuard on every task: a NaN injected at one step into the loss, a gradient or the reward stops the run
at that step with a message naming the step and the quantity, before the update, and the checkpoints written
before it (``last.ckpt``) and at it (``last-good.ckpt``) load with the finite weights of the step before."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rewarddance.callbacks import NonFiniteError, NonFiniteGuard
from rewarddance.data.datamodule import ShardDataModule
from rewarddance.shapes.text_image import TextImageDataModule
from rewarddance.tasks import GenerativeRewardTask, GeneratorPretrainTask, GeneratorRLTask, RegressiveRewardTask
from rewarddance.tasks.pretrain import CaptionPretrainTask
from tests.processes import run_group
from tests.tasks.test_generator_pretrain import ROOT, SMALL
from tests.tasks.test_generator_rl import FAST, _adamw, _data, prompts_jsonl  # noqa: F401 (a fixture)
from tests.tasks.test_pretrain import caption_data  # noqa: F401 (a fixture)
from tests.tasks.test_reward import shards  # noqa: F401 (a fixture)

STEP = 2
"""The step the NaN is injected at: two good steps, each checkpointed, come first."""

NAN = float("nan")
VLM_LAYER = "model.model.language_model.layers.3.mlp.down_proj"
"""A layer of the tiny VLM that every reward and pretraining loss goes through."""


class Inject(L.Callback):
    """At global step ``STEP``: NaN in a module's output, in a parameter's gradient, or in the step's loss."""

    def __init__(self, module: str | None = None, parameter: str | None = None, loss: bool = False) -> None:
        self.module, self.parameter, self.loss = module, parameter, loss

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != STEP:
            return
        if self.module is not None:  # an activation overflows: what follows it (loss, images, reward) turns NaN
            _find(task, self.module, "modules").register_forward_hook(lambda module, args, out: out * NAN)
        if self.parameter is not None:  # the loss is finite, one parameter's gradient is not
            _find(task, self.parameter, "parameters").register_hook(lambda grad: torch.full_like(grad, NAN))
        if self.loss and task.automatic_optimization:  # a finite reward, a NaN loss (GRPO's ratios can overflow so)
            step = task.training_step
            task.training_step = lambda *args, **kwargs: step(*args, **kwargs) * NAN  # type: ignore[method-assign]
        elif self.loss:  # manual optimization (the RL task): the loss the step backpropagates
            backward = task.manual_backward
            task.manual_backward = lambda loss, *a, **k: backward(loss * NAN, *a, **k)  # type: ignore[method-assign]


def _find(task: L.LightningModule, name: str, kind: str) -> Any:
    # The RL task keeps its VAE outside its submodules: its modules are reached through the generator too.
    roots = [task, getattr(task, "generator", None) and task.generator.pipeline.vae]
    for root, prefix in zip(roots, ("", "vae."), strict=True):
        if root is not None and name.startswith(prefix):
            found = dict(getattr(root, f"named_{kind}")()).get(name.removeprefix(prefix))
            if found is not None:
                return found
    raise KeyError(name)


def _reward(task_class: type, splits: dict[str, str]) -> tuple[L.LightningModule, Any]:
    return task_class(optimizer=_adamw(1e-3)), ShardDataModule(train=splits["train"], batch_size=4, shuffle=False)


def _pretrain(root: Path) -> tuple[L.LightningModule, Any]:
    data = ShardDataModule(train=str(root / "train"), batch_size=8, shuffle=False)
    return CaptionPretrainTask(optimizer=_adamw(1e-3)), data


def _generator_pretrain() -> tuple[L.LightningModule, Any]:
    # Manual optimization: the VAE phase runs its own backward, clipping and step.
    return GeneratorPretrainTask(size=SMALL, vae_steps=10, eval_every=0), TextImageDataModule(batch_size=4)


def _rl(prompts: str) -> tuple[L.LightningModule, Any]:
    task = GeneratorRLTask(reward="shapes-color", optimizer=_adamw(1e-3), plot=True, export=False, **FAST)
    return task, _data(prompts)


SETUPS: dict[str, Callable[[pytest.FixtureRequest], tuple[L.LightningModule, Any]]] = {
    "generative-reward": lambda request: _reward(GenerativeRewardTask, request.getfixturevalue("shards")),
    "regressive-reward": lambda request: _reward(RegressiveRewardTask, request.getfixturevalue("shards")),
    "caption-pretrain": lambda request: _pretrain(request.getfixturevalue("caption_data")),
    "generator-pretrain": lambda request: _generator_pretrain(),
    "generator-rl": lambda request: _rl(request.getfixturevalue("prompts_jsonl")),
}

RL_PARAMETER = "denoiser.proj_out.weight"
LOSS = r"Non-finite loss at step 2: 1 of 1 values are NaN or inf\. Training stopped before this update"


def _gradient(parameter: str) -> str:
    return rf"Non-finite gradient norm at step 2: 1 of \d+ parameters have a NaN or inf gradient: {parameter}\."


CASES = [
    # (setup, quantity, what is injected, the message expected)
    *[(name, "loss", Inject(module=VLM_LAYER), LOSS) for name in ("generative-reward", "regressive-reward")],
    *[
        (name, "gradient", Inject(parameter=f"{VLM_LAYER}.weight"), _gradient(f"{VLM_LAYER}.weight"))
        for name in ("generative-reward", "regressive-reward", "caption-pretrain")
    ],
    ("caption-pretrain", "loss", Inject(module=VLM_LAYER), LOSS),
    ("generator-pretrain", "loss", Inject(module="vae.decoder.conv_out"), LOSS),
    (
        "generator-pretrain",
        "gradient",
        Inject(parameter="vae.decoder.conv_out.bias"),
        _gradient("vae.decoder.conv_out.bias"),
    ),
    (
        "generator-rl",
        "reward",
        Inject(module="vae.decoder.conv_out"),
        r"Non-finite reward at step 2: 2 of 2 values are NaN",
    ),
    ("generator-rl", "loss", Inject(loss=True), LOSS),
    ("generator-rl", "gradient", Inject(parameter=RL_PARAMETER), _gradient(RL_PARAMETER)),
]


def _finite_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert floats and all(torch.isfinite(v).all() for v in floats.values())
    return floats


@pytest.mark.parametrize(("setup", "quantity", "inject", "message"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_nan_stops_the_run_before_the_update_and_keeps_the_checkpoints(
    setup: str, quantity: str, inject: Inject, message: str, tmp_path: Path, request: pytest.FixtureRequest
):
    task, data = SETUPS[setup](request)
    assert any(isinstance(c, NonFiniteGuard) for c in task.configure_callbacks())  # attached by the task itself
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=STEP + 2, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
        callbacks=[checkpoints, inject], enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=1.0 if task.automatic_optimization else None,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=message):
        trainer.fit(task, datamodule=data)
    assert trainer.global_step == STEP  # stopped inside the step: its update was never applied

    now = task.state_dict()
    for name in ("last.ckpt", "last-good.ckpt"):
        checkpoint = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert checkpoint["global_step"] == STEP  # last.ckpt: written after step 2, before the NaN
        saved = _finite_weights(checkpoint["state_dict"])
        assert all(torch.equal(now[k], v) for k, v in saved.items())  # the weights of the last good step
    # It loads back as a task (the RL task rebuilds its generator, then takes the trained denoiser).
    reloaded = type(task).load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = _finite_weights(reloaded.state_dict())
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    if setup == "generator-rl":
        assert (tmp_path / "rl_curves.png").is_file()  # the task's on_non_finite hook ran


def test_weights_already_non_finite_are_not_saved_as_last_good(shards, tmp_path: Path):  # noqa: F811 (the fixture)
    class PoisonWeight(L.Callback):  # as an optimizer state overflowing on finite gradients would
        def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, *_: object) -> None:
            if trainer.global_step == STEP:
                _find(task, f"{VLM_LAYER}.weight", "parameters").data[0, 0] = NAN

    task, data = _reward(GenerativeRewardTask, shards)
    trainer = L.Trainer(
        max_steps=STEP + 2, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
        callbacks=[PoisonWeight()], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"Non-finite loss at step 2: .*already non-finite, so no checkpoint"):
        trainer.fit(task, datamodule=data)
    assert not (tmp_path / "checkpoints").exists()


def test_a_nan_on_one_ddp_rank_stops_every_rank_at_that_step(shards, tmp_path: Path):  # noqa: F811 (the fixture)
    script = ROOT / "tests" / "distributed" / "nonfinite_ddp.py"
    proc = run_group(
        [sys.executable, str(script), shards["train"], str(tmp_path)], cwd=ROOT, timeout=600, what="DDP guard run"
    )
    assert (tmp_path / "rank0.txt").is_file(), proc.stdout[-4000:]
    # Rank 0's own loss was finite: it stopped on the decision reduced over both ranks, saving the weights first.
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("Non-finite loss at step 1: 1 of 2 values are NaN or inf (all ranks). Training stopped")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last-good.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    _finite_weights(checkpoint["state_dict"])


def test_a_ddp_rank_whose_whole_batch_was_skipped_still_joins_the_step(shards, tmp_path: Path):  # noqa: F811
    script = ROOT / "tests" / "distributed" / "skipped_batch_ddp.py"
    proc = run_group(
        [sys.executable, str(script), shards["train"], str(tmp_path)], cwd=ROOT, timeout=600, what="DDP skipped batch"
    )
    ranks = [(tmp_path / f"rank{r}.txt") for r in (0, 1)]
    assert all(path.is_file() for path in ranks), proc.stdout[-4000:]
    steps_and_sums = [path.read_text().split() for path in ranks]
    assert steps_and_sums[0] == steps_and_sums[1] and steps_and_sums[0][0] == "3"  # in step, the same weights


def test_a_trainer_keeps_its_one_guard_across_fit_and_test(tmp_path):
    # Lightning asks configure_callbacks again for test-after-fit: a second guard would replace the first with a
    # notice; a guard the user configured stays the one used.
    task = RegressiveRewardTask()
    fresh = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    task.trainer = fresh
    assert [type(c) for c in task.configure_callbacks()] == [NonFiniteGuard]
    mine = NonFiniteGuard()
    guarded = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[mine])
    task.trainer = guarded
    assert task.configure_callbacks() == []
    assert [c for c in guarded.callbacks if isinstance(c, NonFiniteGuard)] == [mine]
