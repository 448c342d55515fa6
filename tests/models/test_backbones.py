"""The backbone registry on every family's tiny variant: build, forward, save/load, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, ProcessorMixin

from rewarddance.models import (
    BACKBONES,
    IMAGE_ONLY_PROCESSORS,
    TINY_PRESETS,
    BackboneSpec,
    ensure_processor,
    load_backbone,
    register_backbone,
)

FAMILIES = sorted(BACKBONES)
EXPECTED_FAMILIES = {"qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl"}


def test_registry_has_the_families_with_hub_ids() -> None:
    assert set(BACKBONES) >= EXPECTED_FAMILIES
    for spec in BACKBONES.values():
        assert spec.default_size in spec.hub_ids
        assert all("/" in hub_id for hub_id in spec.hub_ids.values())
        assert IMAGE_ONLY_PROCESSORS[spec.model_type] is spec.processor_class
    assert BACKBONES["internvl"].hub_ids["1B"] == "OpenGVLab/InternVL3-1B-hf"


def test_register_backbone_refuses_duplicates_and_tiny_prefix() -> None:
    spec = BACKBONES["qwen2-vl"]
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(spec)
    with pytest.raises(ValueError, match="tiny-"):
        register_backbone(BackboneSpec(**{**spec.__dict__, "name": "tiny-x"}))
    register_backbone(spec, overwrite=True)  # same object back: a no-op
    assert BACKBONES["qwen2-vl"] is spec


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_forward_on_a_left_padded_batch(family: str, prompts, visuals) -> None:
    backbone = load_backbone(f"tiny-{family}")
    assert backbone.family == family
    assert isinstance(backbone.processor, ProcessorMixin)
    tokenizer = backbone.tokenizer
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_ids_to_tokens([backbone.yes_token_id, backbone.no_token_id]) == ["yes", "no"]
    n_params = sum(p.numel() for p in backbone.model.parameters())
    assert 0.5e6 < n_params < 2e6

    # 64 px, patch 8, 2x2 merge: 16 image tokens (+ <img> and </img> for InternVL).
    assert backbone.image_tokens(64, 64) == 16 + (2 if family == "internvl" else 0)

    batch = backbone.encode(prompts, visuals)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()  # sample 0 is left-padded
    extra = 2 if family == "internvl" else 0
    placeholders = sum(backbone.image_tokens(*image.size) - extra for sample in visuals for image in sample)
    assert (batch["input_ids"] == backbone.image_token_id).sum() == placeholders
    if family.startswith("qwen"):
        assert "mm_token_type_ids" in batch
    with torch.no_grad():
        logits = backbone.model(**batch).logits
        reward = backbone.reward(batch)
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    assert reward.shape == (2,) and ((reward > 0) & (reward < 1)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_then_load_from_folder_is_exact(family: str, tmp_path: Path, prompts, visuals) -> None:
    original = load_backbone(f"tiny-{family}")
    original.save_pretrained(tmp_path)

    reloaded = load_backbone(str(tmp_path))
    assert reloaded.family == family
    assert type(reloaded.processor) is type(original.processor)
    assert (reloaded.yes_token_id, reloaded.no_token_id) == (original.yes_token_id, original.no_token_id)

    batch = original.encode(prompts, visuals)
    batch_reloaded = reloaded.encode(prompts, visuals)
    assert batch.keys() == batch_reloaded.keys()
    for key in batch:
        assert torch.equal(batch[key], batch_reloaded[key]), key
    with torch.no_grad():
        assert torch.equal(original.model(**batch).logits, reloaded.model(**batch).logits)

    # AutoProcessor finds the registered image-only class by the name save_pretrained wrote.
    auto = ensure_processor(AutoProcessor.from_pretrained(tmp_path), str(tmp_path))
    assert type(auto) is type(original.processor)
    if family == "internvl":
        # Family arguments survive the round trip instead of reverting to 256 tokens and tiling.
        assert auto.image_seq_length == 16 and auto.crop_to_patches is False


@pytest.mark.parametrize(
    ("family", "upstream_class"), [("qwen2-vl", "Qwen2VLProcessor"), ("internvl", "InternVLProcessor")]
)
def test_hub_format_folder_loads_without_a_video_processor(
    family: str, upstream_class: str, tmp_path: Path, prompts, visuals
) -> None:
    # A hub checkpoint names the upstream processor and ships a video processor config; building
    # that processor needs torchvision. load_backbone uses the image-only class instead.
    load_backbone(f"tiny-{family}").save_pretrained(tmp_path)
    config_path = tmp_path / "processor_config.json"
    processor_config = json.loads(config_path.read_text())
    processor_config["processor_class"] = upstream_class
    config_path.write_text(json.dumps(processor_config))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"processor_class": upstream_class}))

    backbone = load_backbone(tmp_path)
    assert type(backbone.processor) is BACKBONES[family].processor_class
    with torch.no_grad():
        assert backbone.reward(backbone.encode(prompts, visuals)).shape == (2,)


def test_processor_kwargs_reach_the_image_processor(tmp_path: Path) -> None:
    load_backbone("tiny-qwen2-vl").save_pretrained(tmp_path)
    pixels = 128 * 128
    backbone = load_backbone(tmp_path, processor_kwargs={"size": {"shortest_edge": pixels, "longest_edge": pixels}})
    assert backbone.image_tokens(64, 64) == 64  # upscaled to 128 px: 16x16 patches / 4


def test_tiny_sizes_presets_and_overrides() -> None:
    tiny = load_backbone("tiny-qwen2-vl")
    small = load_backbone("tiny-qwen2-vl", size="small")
    n_tiny = sum(p.numel() for p in tiny.model.parameters())
    n_small = sum(p.numel() for p in small.model.parameters())
    assert n_small > 4 * n_tiny
    assert small.tiny_size == TINY_PRESETS["small"]

    custom = load_backbone("tiny-qwen2-vl", hidden_size=64, num_layers=2, vision_depth=1, image_size=32)
    assert custom.model.config.text_config.hidden_size == 64
    assert custom.image_tokens(32, 32) == 4

    with pytest.raises(ValueError, match="Unknown tiny size fields"):
        load_backbone("tiny-qwen2-vl", hidden=64)
    with pytest.raises(ValueError, match="Unknown tiny size"):
        load_backbone("tiny-qwen2-vl", size="huge")
    with pytest.raises(ValueError, match=r"head_dim must be even|divide evenly"):
        load_backbone("tiny-qwen2-vl", hidden_size=60, num_heads=4)


def test_hub_names_are_validated_before_any_download() -> None:
    with pytest.raises(ValueError, match="only apply to tiny"):
        load_backbone("qwen2-vl", hidden_size=64)
    with pytest.raises(ValueError, match="no size"):
        load_backbone("internvl", size="999B")


def test_tiny_weights_follow_the_seed_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_backbone("tiny-internvl", seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    b = load_backbone("tiny-internvl", seed=1)
    c = load_backbone("tiny-internvl", seed=2)
    wa, wb, wc = (m.model.model.language_model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_weights_give_float32_rewards_close_to_float32(family: str, prompts, visuals) -> None:
    reference = load_backbone(f"tiny-{family}")
    backbone = load_backbone(f"tiny-{family}", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in backbone.model.parameters())
    batch = backbone.encode(prompts, visuals)  # float32 pixels: the model casts them
    with torch.no_grad():
        reward = backbone.reward(batch)
        expected = reference.reward(batch)
    assert reward.dtype == torch.float32  # yes/no log-softmax is done in float32
    torch.testing.assert_close(reward, expected, atol=0.02, rtol=0)


def test_multi_token_answer_word_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'tiny-qwen3-vl'.*encodes 'yesterday please' as \d+ tokens"):
        load_backbone("tiny-qwen3-vl", yes_word="yesterday please")


def test_bare_tokenizer_from_autoprocessor_is_a_clear_error(tmp_path: Path) -> None:
    backbone = load_backbone("tiny-qwen2-vl")
    backbone.save_pretrained(tmp_path)
    # A processor class name AutoProcessor cannot resolve (e.g. a typo, or an unregistered class)
    # and no config to fall back on: it silently returns a tokenizer.
    tokenizer_only = tmp_path / "tokenizer_only"
    tokenizer_only.mkdir()
    shutil.copy(tmp_path / "tokenizer.json", tokenizer_only / "tokenizer.json")
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tokenizer_config["processor_class"] = "NotARegisteredProcessor"
    (tokenizer_only / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    loaded = AutoProcessor.from_pretrained(tokenizer_only)
    assert not isinstance(loaded, ProcessorMixin)
    with pytest.raises(TypeError, match="bare tokenizer"):
        ensure_processor(loaded, str(tokenizer_only))


def test_unknown_architecture_is_a_clear_error(tmp_path: Path) -> None:
    from transformers import LlavaConfig

    LlavaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llava' model; registered families"):
        load_backbone(tmp_path)
