"""ShardDataModule with a real Lightning Trainer: epochs, workers, task collate, named test sets."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser

from rewarddance.data.datamodule import ShardDataModule
from rewarddance.data.schema import Sample

try:  # tests/ is a package here; the fallback keeps the file runnable if it stops being one
    from .streamkit import good_record, with_meta, write_dataset, write_records
except ImportError:
    from streamkit import good_record, with_meta, write_dataset, write_records  # type: ignore[no-redef]

torch.set_num_threads(1)


class KeyBatch:
    """What the task's collate returns: proves batches are built by the module's ``collate``."""

    def __init__(self, samples: list[Sample]) -> None:
        self.keys = [s.key for s in samples]
        self.padding = [s.padding for s in samples]
        self.num_refs = [len(s.references) for s in samples]


class Recorder(L.LightningModule):
    """Records sample keys per epoch / eval set; its loss touches a parameter so fit() runs."""

    needs_references = False

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_keys: dict[int, list[str]] = {}
        self.eval_keys: dict[str, list[str]] = {}
        self.predicted: list[list[str]] = []
        self.num_refs: set[int] = set()

    def collate(self, samples: list[Sample]) -> KeyBatch:
        return KeyBatch(samples)

    def training_step(self, batch: KeyBatch, batch_idx: int) -> torch.Tensor:
        self.train_keys.setdefault(self.current_epoch, []).extend(batch.keys)
        self.num_refs.update(batch.num_refs)
        return (self.w**2).sum()

    def _eval(self, stage: str, batch: KeyBatch, dataloader_idx: int) -> None:
        name = self.trainer.datamodule.set_name(stage, dataloader_idx)
        keys = [k for k, pad in zip(batch.keys, batch.padding) if not pad]
        self.eval_keys.setdefault(name, []).extend(keys)
        self.log(f"{name}/count", float(len(keys)), reduce_fx="sum", add_dataloader_idx=False, batch_size=1)

    def validation_step(self, batch: KeyBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval("validate", batch, dataloader_idx)

    def test_step(self, batch: KeyBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval("test", batch, dataloader_idx)

    def predict_step(self, batch: KeyBatch, batch_idx: int, dataloader_idx: int = 0) -> list[str]:
        self.predicted.append(batch.keys)
        return batch.keys

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dm")
    return {
        "root": root,
        "train": write_dataset(root / "train", [7, 5, 9], prefix="train", refs=1),
        "id": write_dataset(root / "test-id", [4, 3], prefix="id"),
        "ood": write_dataset(root / "test-ood", [5], prefix="ood"),
    }


def test_fit_two_epochs_with_workers_sees_every_sample_once_in_a_new_order(data):
    root = data["root"]
    dm = ShardDataModule(
        train=str(root / "train"), val=str(root / "test-id"), batch_size=4, num_workers=2, shuffle_buffer=6, seed=1
    )
    module = Recorder()
    t = trainer(max_epochs=2, num_sanity_val_steps=0)
    t.fit(module, datamodule=dm)
    e0, e1 = module.train_keys[0], module.train_keys[1]
    assert sorted(e0) == sorted(e1) == sorted(data["train"])  # exactly once per epoch
    assert e0 != e1  # a new order every epoch
    assert t.num_training_batches == len(dm.loader("train")) == 6  # a known length: progress bars have a total
    assert module.num_refs == {0}  # the module said needs_references = False
    assert dm.reports["train"]["samples"] == 21 and dm.reports["train"]["epoch"] == 1
    assert sorted(module.eval_keys["val"]) == sorted(data["id"] * 2)  # validated after each epoch


def test_resampled_epochs_have_exactly_epoch_length(data):
    dm = ShardDataModule(
        train=str(data["root"] / "train"), batch_size=4, num_workers=2, resampled=True, epoch_length=10, seed=2
    )
    module = Recorder()
    t = trainer(max_epochs=2)
    t.fit(module, datamodule=dm)
    assert t.num_training_batches == 3
    assert [len(module.train_keys[e]) for e in (0, 1)] == [10, 10]
    assert module.train_keys[0] != module.train_keys[1]
    assert set(module.train_keys[0]) <= set(data["train"])


def test_named_test_sets_give_one_dataloader_each(data):
    root = data["root"]
    dm = ShardDataModule(test={"test-id": str(root / "test-id"), "test-ood": str(root / "test-ood")}, batch_size=2)
    module = Recorder()
    results = trainer().test(module, datamodule=dm)
    assert dm.set_names["test"] == ["test-id", "test-ood"]
    assert sorted(module.eval_keys["test-id"]) == sorted(data["id"])
    assert sorted(module.eval_keys["test-ood"]) == sorted(data["ood"])
    assert results[0]["test-id/count"] == 7 and results[1]["test-ood/count"] == 5


def test_predict_and_plain_sample_batches(data):
    dm = ShardDataModule(predict=str(data["root"] / "test-ood"), batch_size=2, num_workers=2)
    module = Recorder()
    predictions = trainer().predict(module, datamodule=dm)
    assert sorted(k for batch in predictions for k in batch) == sorted(data["ood"])
    # Without a module collate or collate_fn, a batch is a list of Sample; with collate_fn, its output.
    dm = ShardDataModule(train=str(data["root"] / "test-ood"), batch_size=2)
    dm.setup("fit")
    assert all(isinstance(s, Sample) for batch in dm.train_dataloader() for s in batch)
    dm = ShardDataModule(train=str(data["root"] / "test-ood"), batch_size=2, collate_fn=len)
    dm.setup("fit")
    assert sorted(dm.train_dataloader()) == [1, 2, 2]


def test_skipped_samples_are_reported_at_epoch_end(tmp_path, caplog):
    records = [good_record(f"r{i}", i) for i in range(8)]
    records[5] = with_meta(records[5], label="both")
    write_records(tmp_path, [records[:4], records[4:]])
    dm = ShardDataModule(train=str(tmp_path), batch_size=3, num_workers=2, on_error="skip")
    module = Recorder()
    with caplog.at_level(logging.WARNING, logger="rewarddance.data.stream"):
        trainer(max_epochs=1).fit(module, datamodule=dm)
    assert dm.reports["train"]["skipped"] == {"label": 1}
    assert "train epoch 0 rank 0" in caplog.text and "label=1" in caplog.text
    assert len(module.train_keys[0]) == 8 and "r5" not in module.train_keys[0]


def test_skip_counts_close_each_stage_summed_over_epochs_and_workers(tmp_path, caplog):
    train = [good_record(f"t{i}", i) for i in range(10)]
    for i in (2, 7):
        train[i] = with_meta(train[i], label="both")
    val = [good_record(f"v{i}", i) for i in range(6)]
    val[4] = {k: v for k, v in val[4].items() if k != "first.png"}  # an image member missing
    write_records(tmp_path / "train", [train[:5], train[5:]])
    write_records(tmp_path / "val", [val])
    dm = ShardDataModule(
        train=str(tmp_path / "train"), val=str(tmp_path / "val"), batch_size=2, num_workers=2, on_error="skip"
    )
    with caplog.at_level(logging.INFO, logger="rewarddance.data"):
        trainer(max_epochs=2, num_sanity_val_steps=0).fit(Recorder(), datamodule=dm)
    # Two bad training samples in each of 2 epochs (counted in the workers); one bad validation sample each epoch.
    assert dm.summary == {"train": {"label": 4}, "validate/val": {"first": 2}}
    closing = caplog.records[-1]
    assert closing.levelno == logging.WARNING
    assert closing.getMessage() == (
        "on_error=skip, fit rank 0: skipped 6 bad samples (train: label=4; validate/val: first=2)"
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rewarddance.data"):
        trainer().validate(Recorder(), datamodule=dm)
    assert dm.summary == {"validate/val": {"first": 1}}  # each stage closes with its own counts
    assert caplog.records[-1].getMessage().startswith("on_error=skip, validate rank 0: skipped 1 bad samples")


def test_config_parses_like_lightning_cli_builds_it():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ShardDataModule, "data")
    cfg = parser.parse_args(
        [
            "--data.train=data/shapes/train",
            '--data.test={"test-id": "data/shapes/test", "test-ood": ["a.tar", "b.tar"]}',
            "--data.on_error=skip",
            "--data.even_out=drop",
        ]
    )
    assert cfg.data.test == {"test-id": "data/shapes/test", "test-ood": ["a.tar", "b.tar"]}
    assert cfg.data.on_error == "skip" and cfg.data.even_out == "drop" and cfg.data.shuffle_buffer == 1000
    with pytest.raises(Exception, match="on_error"):
        parser.parse_args(["--data.on_error=ignore"])


def test_resuming_from_a_checkpoint_continues_the_epoch_sequence(data, tmp_path):
    root = data["root"]

    def dm() -> ShardDataModule:
        return ShardDataModule(train=str(root / "train"), batch_size=4, num_workers=2, shuffle_buffer=6, seed=4)

    straight = Recorder()
    trainer(max_epochs=2).fit(straight, datamodule=dm())
    first = Recorder()
    t = trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path)
    t.fit(first, datamodule=dm())
    ckpt = t.checkpoint_callback.best_model_path
    resumed = Recorder()
    trainer(max_epochs=2).fit(resumed, datamodule=dm(), ckpt_path=ckpt)
    assert first.train_keys[0] == straight.train_keys[0]
    assert resumed.train_keys[1] == straight.train_keys[1]  # epoch 1's order, not epoch 0's again
