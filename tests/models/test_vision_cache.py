"""The frozen vision tower's feature cache: same features, fewer encodings, only where it is right."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rewarddance.data.schema import Sample
from rewarddance.errors import UsageError
from rewarddance.models import load_backbone, prepare_for_training
from rewarddance.models.lora import LoraSettings
from rewarddance.models.vision_cache import install_vision_cache
from rewarddance.tasks import GenerativeRewardTask


def _frozen_qwen2_vl():
    backbone = load_backbone("tiny-qwen2-vl")
    model = prepare_for_training(backbone.model, freeze_vision=True)
    return backbone, model


def test_cached_features_equal_the_towers_and_each_image_is_encoded_once(prompts, visuals) -> None:
    backbone, model = _frozen_qwen2_vl()
    inputs = backbone.encode(prompts, visuals)
    visual = model.model.visual
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    expected = visual(pixels, grid_thw=grid)

    cache = install_vision_cache(model, max_mb=1)
    first = visual(pixels, grid_thw=grid)
    again = visual(pixels, grid_thw=grid)
    torch.testing.assert_close(first.last_hidden_state, expected.last_hidden_state)
    torch.testing.assert_close(first.pooler_output, expected.pooler_output)
    assert torch.equal(again.pooler_output, first.pooler_output)
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 3  # three images, each encoded once

    # The merger stays trainable on cached features; the frozen tower gets no gradient.
    model(**inputs).logits.sum().backward()
    grads = {name for name, p in visual.named_parameters() if p.grad is not None}
    assert grads and all(name.startswith("merger.") for name in grads)

    cache.enabled = False  # the tower's own forward again, nothing counted
    torch.testing.assert_close(visual(pixels, grid_thw=grid).pooler_output, expected.pooler_output)
    assert cache.stats()["misses"] == 3


def test_the_least_recently_used_image_goes_first_beyond_the_budget(prompts, visuals) -> None:
    backbone, model = _frozen_qwen2_vl()
    inputs = backbone.encode(prompts, visuals)
    grid = inputs["image_grid_thw"]
    images = list(zip(inputs["pixel_values"].split(grid.prod(-1).tolist()), grid))  # A, B, C
    cache = install_vision_cache(model, max_mb=1)
    visual = model.model.visual

    def encode(*which: int) -> None:
        visual(torch.cat([images[i][0] for i in which]), grid_thw=torch.stack([images[i][1] for i in which]))

    encode(0, 1, 2)
    a, b, c = cache.features
    cache.max_bytes = cache.bytes - 1  # one byte short of all three
    cache.features.clear()
    cache.bytes = 0
    encode(0, 1, 2)  # A goes when C comes
    assert list(cache.features) == [b, c] and cache.bytes <= cache.max_bytes
    encode(1)  # B used: now C is the least recent
    encode(0)  # A again: C goes, not B
    assert list(cache.features) == [b, a]
    assert (cache.hits, cache.misses) == (1, 7)


def test_other_families_and_a_trainable_tower_are_refused() -> None:
    internvl = load_backbone("tiny-internvl").model
    with pytest.raises(ValueError, match="supports model_type qwen2_vl, not 'internvl'"):
        install_vision_cache(prepare_for_training(internvl, freeze_vision=True), max_mb=1)
    trainable = prepare_for_training(load_backbone("tiny-qwen2-vl").model)
    with pytest.raises(ValueError, match="frozen vision tower"):
        install_vision_cache(trainable, max_mb=1)
    with pytest.raises(UsageError, match="only with freeze_vision: true"):
        GenerativeRewardTask(vision_cache_mb=100)
    with pytest.raises(UsageError, match=r"vision_cache_mb: the vision-feature cache supports .* set it to 0"):
        GenerativeRewardTask(backbone="tiny-internvl", freeze_vision=True, vision_cache_mb=100).configure_model()


def _pair(key: str, label: str) -> Sample:
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    return Sample(key=key, kind="pair", prompt="a red circle", first=[red], second=[blue], label=label)  # type: ignore[arg-type]


def test_the_reward_task_trains_through_the_cache_with_lora() -> None:
    task = GenerativeRewardTask(freeze_vision=True, vision_cache_mb=100, lora=LoraSettings())
    task.configure_model()
    batch = task.collate([_pair("a", "first"), _pair("b", "second")])
    for _ in range(2):
        loss = task.loss_terms(batch)["pair"]
        loss.backward()
    # Two pairs of the same two images, both orders, twice: two encodings, the rest served.
    stats = task.vision_cache.stats()
    assert (stats["hits"], stats["misses"], stats["held"]) == (14, 2, 2)
    assert torch.isfinite(loss)
