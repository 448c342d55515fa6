"""The scoring API: export folders load through load_backbone and score like the task that wrote them."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel
from rewarddance.models import LoraSettings
from rewarddance.tasks import GenerativeRewardTask, RegressiveRewardTask

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a red circle"]


def _images(*colours: str) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), c) for c in colours]


def _export(task, tmp_path):
    task.configure_model()
    return task.export_to(tmp_path / "export")


def test_pairwise_export_scores_like_the_task_in_batches(tmp_path):
    task = GenerativeRewardTask()
    model = RewardModel.from_pretrained(_export(task, tmp_path))
    images, references = _images("red", "blue", "green"), _images("white", "black", "gray")
    rewards = model.score(PROMPTS, images, references=references, batch_size=2)
    assert rewards.shape == (3,) and rewards.dtype == torch.float32
    expected = task.score_queries(model.queries(PROMPTS, images, references))
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-4)
    one_batch = model.score(PROMPTS, images, references=references, batch_size=8)
    torch.testing.assert_close(rewards, one_batch, atol=1e-5, rtol=1e-4)  # left padding: batching does not matter


def test_lora_is_merged_into_the_export(tmp_path):
    task = GenerativeRewardTask(lora=LoraSettings(r=4, dropout=0.0))
    task.configure_model()
    for name, param in task.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # a non-trivial adapter
    model = RewardModel.from_pretrained(task.export_to(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / EXPORT_CONFIG).read_text())["lora"] == "merged"
    images, references = _images("red", "blue", "green"), _images("white", "black", "gray")
    rewards = model.score(PROMPTS, images, references=references)
    torch.testing.assert_close(
        rewards, task.score_queries(model.queries(PROMPTS, images, references)), atol=1e-4, rtol=1e-3
    )


def test_pointwise_and_regressive_exports(tmp_path):
    images = _images("red", "blue", "green")
    pointwise = GenerativeRewardTask(paradigm="pointwise", normalization="vocab")
    model = RewardModel.from_pretrained(_export(pointwise, tmp_path / "p"))
    torch.testing.assert_close(model.score(PROMPTS, images), pointwise.score_queries(model.queries(PROMPTS, images)))
    regressive = RegressiveRewardTask()
    regressive.configure_model()
    torch.nn.init.normal_(regressive.head.linear.weight)  # type: ignore[union-attr]
    model = RewardModel.from_pretrained(regressive.export_to(tmp_path / "r" / "export"))
    assert model.kind == "regressive"
    rewards = model.score(PROMPTS, images)
    assert rewards.abs().sum() > 0
    torch.testing.assert_close(rewards, regressive.score_queries(model.queries(PROMPTS, images)), atol=1e-5, rtol=1e-4)


def test_reasons_first_model_generates_rationales(tmp_path):
    task = GenerativeRewardTask(paradigm="pointwise", rationale_format="reasons_first", max_new_tokens=3)
    model = RewardModel.from_pretrained(_export(task, tmp_path))
    rewards = model.score(PROMPTS[:2], _images("red", "blue"))
    assert rewards.shape == (2,) and model.last_rationales is not None and len(model.last_rationales) == 2


def test_video_is_scored_from_frames(tmp_path):
    task = GenerativeRewardTask(paradigm="pointwise", num_frames=2)
    model = RewardModel.from_pretrained(_export(task, tmp_path))
    clip = _images("red", "red", "blue", "blue", "red")
    (query,) = model.queries(["a ball moving left"], [clip])
    assert len(query.visuals[0]) == 2
    assert model.score(["a ball moving left"], [clip]).shape == (1,)


def test_long_prompts_are_truncated_and_reported(tmp_path):
    task = GenerativeRewardTask(paradigm="pointwise", max_length=120)
    model = RewardModel.from_pretrained(_export(task, tmp_path))
    model.score(["a red circle " * 60, "a red circle"], _images("red", "red"))
    assert model.last_report.truncated == 1


def test_bad_calls_and_bad_folders(tmp_path):
    pairwise = RewardModel.from_pretrained(_export(GenerativeRewardTask(), tmp_path / "a"))
    with pytest.raises(ValueError, match="pass references"):
        pairwise.score(PROMPTS[:1], _images("red"))
    pointwise_folder = _export(GenerativeRewardTask(paradigm="pointwise"), tmp_path / "b")
    with pytest.raises(ValueError, match="takes no references"):
        RewardModel.from_pretrained(pointwise_folder).score(PROMPTS[:1], _images("red"), references=_images("red"))
    (pointwise_folder / EXPORT_CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="not a rewarddance reward model"):
        RewardModel.from_pretrained(pointwise_folder)
    folder = tmp_path / "a" / "export"
    record = json.loads((folder / EXPORT_CONFIG).read_text())
    (folder / EXPORT_CONFIG).write_text(json.dumps({**record, "family": "internvl"}))
    with pytest.raises(ValueError, match="mixes files of different backbones"):
        RewardModel.from_pretrained(folder)


def test_best_of_n_with_a_shared_prefix_scores_like_score(tmp_path):
    task = GenerativeRewardTask(paradigm="pairwise")
    model = RewardModel.from_pretrained(_export(task, tmp_path))
    candidates = [Image.effect_noise((64, 64), 20 + 9 * i).convert("RGB") for i in range(5)]
    reference = Image.new("RGB", (64, 64), "red")
    # Count what the real image processor is given, through a wrapper on the instance the processor calls.
    image_processor = model.backbone.processor.image_processor
    processed: list[Image.Image] = []
    preprocess = image_processor.preprocess

    def counting_preprocess(images, *args, **kwargs):
        processed.extend(images if isinstance(images, list) else [images])
        return preprocess(images, *args, **kwargs)

    image_processor.preprocess = counting_preprocess
    shared = model.score_candidates("a red circle", candidates, reference)
    del image_processor.preprocess
    # The reference (and the prompt's text) is processed once per call, each candidate once.
    assert sum(im.tobytes() == reference.tobytes() for im in processed) == 1
    assert len(processed) == 1 + len(candidates)
    one_by_one = model.score(["a red circle"] * 5, candidates, references=[reference] * 5, batch_size=1)
    torch.testing.assert_close(shared, one_by_one, atol=1e-5, rtol=1e-4)
    assert shared.std() > 0
    # A candidate of another shape encodes to another length: scored from scratch, with the same result.
    mixed = [*candidates[:2], candidates[2].resize((128, 64))]
    expected = model.score(["a red circle"] * 3, mixed, references=[reference] * 3, batch_size=1)
    torch.testing.assert_close(model.score_candidates("a red circle", mixed, reference), expected, atol=1e-5, rtol=1e-4)


def test_best_of_n_reports_a_truncated_prompt_like_score(tmp_path):
    model = RewardModel.from_pretrained(_export(GenerativeRewardTask(paradigm="pairwise"), tmp_path))
    model.config["max_length"] = 400
    candidates = [Image.effect_noise((64, 64), 20 + 9 * i).convert("RGB") for i in range(3)]
    reference, prompt = Image.new("RGB", (64, 64), "red"), "a red circle " * 400
    shared = model.score_candidates(prompt, candidates, reference)
    shared_report = model.last_report
    one_by_one = model.score([prompt] * 3, candidates, references=[reference] * 3, batch_size=1)
    torch.testing.assert_close(shared, one_by_one, atol=1e-5, rtol=1e-4)
    assert shared_report.truncated == 3 and shared_report == model.last_report
