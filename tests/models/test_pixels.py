"""The differentiable pixel path equals every tiny family's processor, and rewards through it equal RewardModel.score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from rewarddance.judge.differentiable import differentiable_rewards
from rewarddance.judge.prompting import Query
from rewarddance.judge.reward_model import RewardModel
from rewarddance.models import Backbone, load_backbone
from rewarddance.models.pixels import pil_resize, pixel_inputs_from_tensor, to_pil_images
from rewarddance.shapes.captions import random_scene
from rewarddance.shapes.pairs import World
from rewarddance.tasks import GenerativeRewardTask

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl"]
EXACT = 1e-5
"""Tensor path vs processor, after normalisation: both compute the same uint8 levels, so only float32 rounding differs."""
SMOOTH = 0.05
"""quantize=False skips Pillow's rounding to uint8: about one level (1/255/std ~ 0.015) off, per pass."""
PROMPTS = ["a red circle", "two blue squares", "a green triangle above a red circle"]

_BACKBONES: dict[str, Backbone] = {}


def _backbone(family: str) -> Backbone:
    if family not in _BACKBONES:  # building is cheap, but four families x several tests adds up
        _BACKBONES[family] = load_backbone(f"tiny-{family}")
    return _BACKBONES[family]


def _renders(canvas: int, n: int = 2, seed: int = 0) -> list[Image.Image]:
    """Shapes-world renders (anti-aliased edges, noise, gradients): what the reward model sees."""
    rng = np.random.default_rng(seed)
    world = World(canvas=canvas)
    return [world.render(random_scene(rng, world), rng)[0] for _ in range(n)]


def _tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 255


def _processor_pixels(backbone: Backbone, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """What the processor gives for these images (text with one image slot each)."""
    batch = backbone.encode(["<image> Is it a circle?"] * len(images), [[im] for im in images])
    return {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}


def _max_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert ours.keys() == theirs.keys()
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape and ours["pixel_values"].dtype == torch.float32
    if "image_grid_thw" in theirs:
        assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    return (ours["pixel_values"] - theirs["pixel_values"]).abs().max().item()


# --------------------------------------------------------------------------------------------
# Pillow's resampling
# --------------------------------------------------------------------------------------------


def test_pil_resize_is_pillow_for_every_filter() -> None:
    rng = np.random.default_rng(0)
    # Up, down, mixed, and heights shrinking more than twice the width (Pillow 13 goes vertical first).
    sizes = [((64, 64), (64, 64)), ((96, 96), (64, 64)), ((48, 48), (64, 64)), ((64, 64), (80, 48))]
    sizes += [((64, 64), (48, 80)), ((70, 90), (64, 64)), ((31, 97), (20, 15)), ((100, 60), (64, 30))]
    for (w_in, h_in), (w_out, h_out) in sizes:
        image = Image.fromarray(rng.integers(0, 256, (h_in, w_in, 3), dtype=np.uint8))
        levels = torch.from_numpy(np.array(image)).permute(2, 0, 1).double()
        for resample in Image.Resampling:
            expected = torch.from_numpy(np.array(image.resize((w_out, h_out), resample))).permute(2, 0, 1).double()
            ours = pil_resize(levels, (h_out, w_out), resample)
            assert torch.equal(ours, expected), f"{w_in}x{h_in} -> {w_out}x{h_out}, {resample!r}"


def test_pil_resize_backward_is_the_filter_jacobian() -> None:
    # Mid-grey inputs: no clipping, and quantize=False has no rounding, so forward and backward agree.
    levels = (100 + 50 * torch.rand(1, 2, 9, 7, dtype=torch.float64)).requires_grad_()
    for size in [(5, 11), (12, 4)]:
        assert torch.autograd.gradcheck(lambda x, s=size: pil_resize(x, s, quantize=False), (levels,))


# --------------------------------------------------------------------------------------------
# Each tiny family: tensor path == processor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_no_resize_equals_the_processor(family: str) -> None:
    backbone = _backbone(family)
    images = _renders(64)  # the shapes world's size is the tiny models' input size
    ours = pixel_inputs_from_tensor(backbone.processor, _tensor(images))
    assert _max_difference(ours, _processor_pixels(backbone, images)) < EXACT


@pytest.mark.parametrize("family", FAMILIES)
def test_resize_equals_the_processor(family: str) -> None:
    backbone = _backbone(family)
    wide = Image.new("RGB", (80, 48), (128, 128, 128))
    wide.paste(_renders(40, 1, seed=3)[0], (20, 4))
    for images in (_renders(96), _renders(48, seed=1), [wide]):
        theirs = _processor_pixels(backbone, images)
        assert _max_difference(pixel_inputs_from_tensor(backbone.processor, _tensor(images)), theirs) < EXACT
        smooth = pixel_inputs_from_tensor(backbone.processor, _tensor(images), quantize=False)
        assert _max_difference(smooth, theirs) < SMOOTH


def test_internvl_tiling_equals_the_processor() -> None:
    processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=6)
    image = _renders(96, 1)[0].resize((100, 50))
    theirs = processor(images=[image], return_tensors="pt")
    assert theirs["num_patches"].tolist() == [3]  # two tiles and a thumbnail
    ours = pixel_inputs_from_tensor(processor, _tensor([image]))
    assert _max_difference(ours, {"pixel_values": theirs["pixel_values"]}) < EXACT


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_image_tensor(family: str) -> None:
    backbone = _backbone(family)
    for canvas in (64, 96):
        images = _tensor(_renders(canvas)).requires_grad_()
        pixel_values = pixel_inputs_from_tensor(backbone.processor, images)["pixel_values"]
        weights = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(0))
        (pixel_values * weights).sum().backward()
        assert images.grad is not None and torch.isfinite(images.grad).all()
        assert (images.grad != 0).float().mean() > 0.99  # white and saturated pixels too (straight-through)
    # Without resizing the path is rescale + normalise (+ Qwen's two temporal copies): d/dx = copies / std.
    images = _tensor(_renders(64, 1)).requires_grad_()
    pixel_inputs_from_tensor(backbone.processor, images)["pixel_values"].sum().backward()
    settings = backbone.processor.image_processor
    copies = getattr(settings, "temporal_patch_size", 1) if family.startswith("qwen") else 1
    expected = copies / torch.tensor(settings.image_std).view(1, 3, 1, 1)
    torch.testing.assert_close(images.grad, expected.expand_as(images.grad), rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_reward_is_unchanged_with_tensor_pixels(family: str, prompts, visuals) -> None:
    backbone = _backbone(family)
    batch = backbone.encode(prompts, visuals)  # one sample is 80x48: resized by the processor
    flat = [_tensor([image])[0] for sample in visuals for image in sample]
    swapped = {**batch, **pixel_inputs_from_tensor(backbone.processor, flat)}
    with torch.no_grad():
        torch.testing.assert_close(backbone.reward(swapped), backbone.reward(batch), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# differentiable_rewards == RewardModel.score, with gradients
# --------------------------------------------------------------------------------------------


def _export(tmp_path_factory: pytest.TempPathFactory, name: str, **task_kwargs) -> RewardModel:
    task = GenerativeRewardTask(**task_kwargs)
    task.configure_model()
    model = RewardModel.from_pretrained(task.export_to(tmp_path_factory.mktemp(name) / "export"))
    model.backbone.model.requires_grad_(False)  # a frozen judge, as in ReFL
    return model


@pytest.fixture(scope="module")
def pairwise_qwen(tmp_path_factory: pytest.TempPathFactory) -> RewardModel:
    return _export(tmp_path_factory, "pairwise", paradigm="pairwise")


@pytest.fixture(scope="module")
def pointwise_internvl(tmp_path_factory: pytest.TempPathFactory) -> RewardModel:
    return _export(tmp_path_factory, "pointwise", paradigm="pointwise", backbone="tiny-internvl")


def test_pairwise_rewards_equal_score_and_reach_images_and_references(pairwise_qwen: RewardModel) -> None:
    images = _tensor(_renders(64, 3, seed=4)).requires_grad_()
    references = _tensor(_renders(96, 3, seed=5)).requires_grad_()  # references are resized
    rewards = differentiable_rewards(pairwise_qwen, PROMPTS, images, references)
    expected = pairwise_qwen.score(PROMPTS, to_pil_images(images), references=to_pil_images(references))
    assert rewards.shape == (3,) and rewards.dtype == torch.float32 and rewards.requires_grad
    torch.testing.assert_close(rewards.detach(), expected, atol=1e-5, rtol=1e-4)
    rewards.sum().backward()
    for tensor in (images, references):
        assert tensor.grad is not None and (tensor.grad.flatten(1).abs().sum(1) > 0).all()


def test_pil_references_are_fixed_and_tensors_differentiable(pairwise_qwen: RewardModel) -> None:
    images = _tensor(_renders(64, 2, seed=6)).requires_grad_()
    references = _renders(64, 2, seed=7)
    rewards = differentiable_rewards(pairwise_qwen, PROMPTS[:2], images, references)
    expected = pairwise_qwen.score(PROMPTS[:2], to_pil_images(images), references=references)
    torch.testing.assert_close(rewards.detach(), expected, atol=1e-5, rtol=1e-4)
    (-rewards.log()).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_in_context_example_images_stay_in_place(pairwise_qwen: RewardModel) -> None:
    # An example's images come first in the sequence; the recorded processor images place them.
    criteria, _ = pairwise_qwen.template.criteria_text(None)
    example = Query("pairwise", "a blue square", _renders(48, 2, seed=12), criteria, answer="yes", key="example")
    model = RewardModel(pairwise_qwen.backbone, pairwise_qwen.config, examples={"pairwise": [example]})
    images, references = _tensor(_renders(64, 2, seed=13)).requires_grad_(), _tensor(_renders(64, 2, seed=14))
    rewards = differentiable_rewards(model, PROMPTS[:2], images, references)
    expected = model.score(PROMPTS[:2], to_pil_images(images), references=to_pil_images(references))
    torch.testing.assert_close(rewards.detach(), expected, atol=1e-5, rtol=1e-4)
    rewards.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_pointwise_internvl_with_resize_and_video(pointwise_internvl: RewardModel) -> None:
    images = _tensor(_renders(96, 3, seed=8)).requires_grad_()
    rewards = differentiable_rewards(pointwise_internvl, PROMPTS, images)
    torch.testing.assert_close(
        rewards.detach(), pointwise_internvl.score(PROMPTS, to_pil_images(images)), atol=1e-5, rtol=1e-4
    )
    rewards.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # Videos as frames [B, T, 3, H, W]: each frame maps back to its slot in the tensor.
    clips = _tensor(_renders(64, 4, seed=9)).view(2, 2, 3, 64, 64).requires_grad_()
    rewards = differentiable_rewards(pointwise_internvl, PROMPTS[:2], clips)
    expected = pointwise_internvl.score(PROMPTS[:2], [to_pil_images(clip) for clip in clips])
    torch.testing.assert_close(rewards.detach(), expected, atol=1e-5, rtol=1e-4)
    rewards.sum().backward()
    assert (clips.grad.flatten(2).abs().sum(2) > 0).all()  # type: ignore[union-attr]


def test_backbone_rewards_equal_the_processor_path() -> None:
    backbone = _backbone("qwen3-vl")
    prompts = ["<image> <image> Is image 2 better than image 1? Answer yes or no."] * 2
    references, images = _renders(64, 2, seed=10), _tensor(_renders(48, 2, seed=11)).requires_grad_()
    rewards = differentiable_rewards(backbone, prompts, images, references)
    visuals = [[r, c] for r, c in zip(references, to_pil_images(images))]
    with torch.no_grad():
        expected = backbone.reward(backbone.encode(prompts, visuals))
    torch.testing.assert_close(rewards.detach(), expected, atol=1e-6, rtol=1e-5)
    rewards.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_bad_inputs(pairwise_qwen: RewardModel, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="No differentiable path"):
        pixel_inputs_from_tensor(object(), torch.zeros(1, 3, 8, 8))
    processor = _backbone("qwen2-vl").processor
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pixel_inputs_from_tensor(processor, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="RGB"):
        pixel_inputs_from_tensor(processor, [torch.zeros(4, 8, 8)])
    with pytest.raises(ValueError, match="pass references"):
        differentiable_rewards(pairwise_qwen, PROMPTS[:1], torch.zeros(1, 3, 64, 64))
    reasons_first = RewardModel(pairwise_qwen.backbone, {**pairwise_qwen.config, "rationale_format": "reasons_first"})
    with pytest.raises(NotImplementedError, match="reasons-first"):
        differentiable_rewards(reasons_first, PROMPTS[:1], torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))
