"""CaptionPretrainTask: sequence building, a few real CLI steps with export, and the bundled backbones."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rewarddance.cli import main
from rewarddance.data.captions import CAPTION, all_sequences, question_type, sample_sequences
from rewarddance.models import load_backbone
from rewarddance.models.backbones import LOCAL_BACKBONES
from rewarddance.shapes import World, build_split, random_scene
from rewarddance.tasks.pretrain import ask

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pretrain" / "shapes_vlm_tiny.yaml"


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few caption samples per split (train, val, test-ood), rendered in well under a second."""
    root = tmp_path_factory.mktemp("captions")
    for split, n, seed in (("train", 24, 0), ("val", 8, 1), ("test-ood", 8, 3)):
        build_split(root / split, split=split, samples=n, seed=seed, kinds=("caption",), progress=False)
    return root


def _samples(root: Path, split: str) -> list:
    from rewarddance.data.stream import ShardStream, resolve_shards

    stream = ShardStream(resolve_shards(root / split), batch_size=64, load_references=False)
    return [s for batch in stream for s in batch]


def test_question_types() -> None:
    assert question_type("What color is the circle?") == "color"
    assert question_type("What shape is the red shape?") == "shape"
    assert question_type("How many blue shapes are there?") == "count"
    assert question_type("Is there a red circle?") == "exists"
    assert question_type("Where is the red circle?") == "where"
    assert question_type("Is the red circle left of the blue square?") == "position"
    assert question_type("Is the red circle above the blue square?") == "position"


def test_sequences_are_separate_tasks(caption_data: Path) -> None:
    samples = _samples(caption_data, "train")
    full = all_sequences(samples)
    assert len(full) == sum(1 + len(s.qa) for s in samples)
    rng = random.Random(0)
    seen: dict[str, int] = {}
    for _ in range(50):
        seqs = sample_sequences(samples[:8], rng, caption_fraction=0.25, mixing="batch")
        assert len(seqs) == 8
        # Batch mixing: all captions or all questions, never both in one batch.
        assert len({t == CAPTION for t in seqs.types}) == 1
        for prompt, answer, kind in zip(seqs.prompts, seqs.answers, seqs.types):
            assert prompt.count("<image>") == 1
            if kind != CAPTION:
                # One question per sequence, and never the caption next to it (the model learns to copy the caption).
                assert prompt.count("?") == 1 and ":" not in answer
            seen[kind] = seen.get(kind, 0) + 1
    assert {"caption", "color", "count", "shape", "position"} <= set(seen)


def test_fit_three_steps_and_export(caption_data: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    cli = main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_steps",
            "3",
            "--trainer.max_time",
            "null",
            "--trainer.val_check_interval",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),  # LightningCLI saves config.yaml there, not in the working directory
            "--data.init_args.train",
            str(caption_data / "train"),
            "--data.init_args.val",
            json.dumps({"val": str(caption_data / "val"), "test-ood": str(caption_data / "test-ood")}),
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.eval_batch_size",
            "4",
            "--model.init_args.export_dir",
            str(export),
            "--model.init_args.export_eval_samples",
            "4",
            "--model.init_args.scheduler.init_args.total_steps",
            "3",
            "--model.init_args.scheduler.init_args.warmup_steps",
            "1",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 3
    assert math.isfinite(float(metrics["train/loss"]))
    for name in ("val", "test-ood"):
        assert math.isfinite(float(metrics[f"{name}/loss"]))
        assert 0.0 <= float(metrics[f"{name}/token_acc"]) <= 1.0
        assert f"{name}/acc_caption" in metrics and f"{name}/acc_question" in metrics

    record = json.loads((export / "training_record.json").read_text())
    assert record["global_step"] == 3 and record["parameters"] > 0
    assert set(record["final_metrics"]) == {"val", "test-ood"}
    assert (export / "TRAINING_RECORD.md").is_file()
    assert not list(export.glob("*.ckpt"))  # no optimizer state in the bundle

    backbone = load_backbone(export)
    assert next(backbone.model.parameters()).dtype == torch.float32  # float16 on disk, float32 loaded
    trained = cli.model.model.state_dict()
    for key, value in backbone.model.state_dict().items():
        torch.testing.assert_close(value, trained[key].half().float())


def _fresh_one_object_scenes(n: int, seed: int) -> tuple[list, list[str], list[str]]:
    """Renders never seen in training (another seed stream), one object each, with its colour."""
    rng = np.random.default_rng(seed)
    world = World(split="test-id")
    images, questions, answers = [], [], []
    for _ in range(n):
        scene = random_scene(rng, world, objects=1)
        (obj,) = scene.objects
        images.append(world.render(scene, rng)[0])
        questions.append(f"What color is the {obj.shape}?")
        answers.append(obj.color)
    return images, questions, answers


@pytest.mark.parametrize("name", sorted(LOCAL_BACKBONES))
def test_bundled_backbone_sees_colours(name: str) -> None:
    folder = LOCAL_BACKBONES[name]
    assert (folder / "config.json").is_file(), (
        f"{folder} is missing: run configs/pretrain/{name.replace('-', '_')}.yaml"
    )
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    assert size_mb < 10.5, f"{name} bundle is {size_mb:.1f} MB"
    backbone = load_backbone(name)
    images, questions, answers = _fresh_one_object_scenes(24, seed=20261126)
    correct = ask(backbone, images, questions, answers)
    # Pretraining measured ~0.99 on colour; chance over ten colours is 0.1.
    assert sum(correct) / len(correct) >= 0.8, list(zip(answers, correct))
    # And a wrong colour is not accepted: the check can fail.
    wrong = [("red" if a != "red" else "blue") for a in answers]
    assert sum(ask(backbone, images, questions, wrong)) <= 2
