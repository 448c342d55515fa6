"""GenEval-style scoring with the oracle, and the on-the-fly prompt-render stream generators pretrain on."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from rewarddance.callbacks.evaluation import format_report, geneval_report, geneval_summary
from rewarddance.shapes import evaluate, sample_scene
from rewarddance.shapes.prompts import geneval_prompts
from rewarddance.shapes.render import render
from rewarddance.shapes.splits import prompt_has_heldout
from rewarddance.shapes.text_image import TextImageDataModule, TextImageStream


def test_geneval_summary_averages_tags_not_samples():
    # colors 1/2, counting 1/1: overall (0.5 + 1) / 2 = 0.75, while the sample mean would be 2/3.
    summary = geneval_summary(["colors", "colors", "counting"], [True, False, True])
    assert summary == {"colors": 0.5, "counting": 1.0, "overall": 0.75}


def test_geneval_report_on_correct_and_empty_images():
    metas = geneval_prompts(2, split="val", tags=("colors", "counting"))
    rng = np.random.default_rng(0)
    correct = [render(sample_scene(m, rng, split="val"), rng) for m in metas]
    blank = Image.new("RGB", (64, 64), (130, 130, 130))
    # colors: both right; counting: one right, one blank -> tag scores 1.0 and 0.5, overall 0.75.
    images = [correct[0], correct[1], correct[2], blank]
    report = geneval_report(images, metas)
    assert report["tag/colors"] == 1.0 and report["tag/counting"] == 0.5
    assert report["geneval"] == 0.75 and report["correct"] == 0.75 and report["images"] == 4
    # The blank image misses its count and shapes entirely; the colour prompt has no count problem.
    assert report["parts/count"] < 1.0 and report["parts/colors"] == 1.0
    assert "geneval 0.750" in format_report(report)
    with pytest.raises(ValueError, match="2 images but 4"):
        geneval_report(images[:2], metas)


def test_text_image_stream_renders_scenes_the_oracle_accepts():
    items = list(itertools.islice(iter(TextImageStream(seed=3)), 24))
    assert {i["metadata"]["tag"] for i in items} >= {"colors", "counting", "position"}
    for item in items:
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
        image = Image.fromarray(item["image"].permute(1, 2, 0).numpy())
        assert evaluate(image, item["metadata"])[0], item["prompt"]
        assert item["prompt"] == item["metadata"]["prompt"]
        assert not prompt_has_heldout(item["metadata"])  # train split: no held-out combination is asked for
    again = list(itertools.islice(iter(TextImageStream(seed=3)), 3))
    other = list(itertools.islice(iter(TextImageStream(seed=4)), 3))
    assert [i["prompt"] for i in again] == [i["prompt"] for i in items[:3]]
    assert [i["prompt"] for i in other] != [i["prompt"] for i in items[:3]]


def test_text_image_datamodule_batches():
    batch = next(iter(TextImageDataModule(batch_size=5, tags=("single_object",)).train_dataloader()))
    assert batch["images"].shape == (5, 3, 64, 64)
    assert len(batch["prompts"]) == len(batch["metadata"]) == 5
    assert all(m["tag"] == "single_object" for m in batch["metadata"])
    with pytest.raises(ValueError, match="unknown tags"):
        TextImageStream(tags=("faces",))
