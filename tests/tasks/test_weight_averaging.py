"""TailAveraging on the reward task: the fit ends on the equal-weight average of the window's snapshots, checkpoints
inside the window hold the average with the trained weights beside it, and a run resumed from one of them ends
bitwise where the uninterrupted run did."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rewarddance.callbacks import TailAveraging
from rewarddance.data.datamodule import ShardDataModule
from rewarddance.errors import UsageError
from rewarddance.tasks import GenerativeRewardTask
from tests.tasks.test_generator_rl import _adamw
from tests.tasks.test_reward import shards  # noqa: F401 (a fixture)

STEPS = 6


class Snapshots(L.Callback):
    """The trained weights after every step (listed before TailAveraging, so it sees them before any swap)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, task: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.weights[trainer.global_step] = _trainable(task)


def _trainable(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.named_parameters() if v.requires_grad}


def _fit(
    splits: dict[str, str], root: Any, *callbacks: L.Callback, ckpt_path: str | None = None
) -> GenerativeRewardTask:
    torch.manual_seed(0)
    task = GenerativeRewardTask(optimizer=_adamw(1e-3), export=False)
    data = ShardDataModule(train=splits["train"], batch_size=4, shuffle=False)
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
    )
    trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    return task


def test_fit_ends_on_the_average_of_the_window(shards, tmp_path):  # noqa: F811 (the fixture)
    snapshots = Snapshots()
    averaging = TailAveraging(start_fraction=0.5, every_n_steps=2)  # window opens after step 3: steps 4 and 6
    task = _fit(shards, tmp_path, snapshots, averaging)
    assert averaging.snapshots == 2
    final = _trainable(task)
    for name, value in final.items():
        expected = (snapshots.weights[4][name] + snapshots.weights[6][name]) / 2
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    # Steps 4 and 6 differ, so the average is not the last weights.
    assert any(not torch.equal(final[k], snapshots.weights[STEPS][k]) for k in final)


def test_checkpoints_hold_the_average_and_resume_exactly(shards, tmp_path):  # noqa: F811 (the fixture)
    def checkpoints(root: Any) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="{step}")

    whole = _fit(shards, tmp_path / "whole", checkpoints(tmp_path / "whole"), TailAveraging(0.5, 1))
    # Step 2: before the window, a plain checkpoint. Step 4: the average of steps 4 (one snapshot) is the weights
    # themselves; step 5: two snapshots, the trained weights kept beside the average.
    before = torch.load(tmp_path / "whole" / "step=2.ckpt", weights_only=True)
    assert "current_model_state" not in before
    inside = torch.load(tmp_path / "whole" / "step=5.ckpt", weights_only=True)
    trained, average = inside["current_model_state"], inside["state_dict"]
    assert any(not torch.equal(trained[k], average[k]) for k in average if k in trained)

    for step in (2, 5):  # resumed before the window opened, and inside it
        resumed = _fit(
            shards,
            tmp_path / f"from{step}",
            TailAveraging(0.5, 1),
            ckpt_path=str(tmp_path / "whole" / f"step={step}.ckpt"),
        )
        for name, value in _trainable(whole).items():
            assert torch.equal(value, dict(resumed.named_parameters())[name]), (step, name)


def test_bad_settings_are_refused(shards, tmp_path):  # noqa: F811 (the fixture)
    with pytest.raises(UsageError, match="start_fraction"):
        TailAveraging(start_fraction=1.0)
    with pytest.raises(UsageError, match="every_n_steps"):
        TailAveraging(every_n_steps=0)
    task = GenerativeRewardTask(optimizer=_adamw(1e-3), export=False)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[TailAveraging()])
    with pytest.raises(UsageError, match="max_steps"):
        trainer.fit(task, datamodule=ShardDataModule(train=shards["train"], batch_size=4, shuffle=False))
