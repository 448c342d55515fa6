"""The generator registry: every tiny family builds, samples, and round-trips through a folder."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from rewarddance.models.generators import (
    DTYPE_KWARG,
    GENERATORS,
    TINY_PREFIX,
    Generator,
    GeneratorSpec,
    load_generator,
    register_generator,
    resolve_generator,
    sample,
)
from rewarddance.models.tiny_generators import TinyGeneratorSize, build_tiny_sd15
from rewarddance.models.tokenizer import train_tiny_clip_tokenizer, train_tiny_t5_tokenizer

FAMILIES = ["sd15", "sdxl", "sd3", "flux", "wan-t2v", "wan-i2v"]
needs_ftfy = pytest.mark.skipif(
    find_spec("ftfy") is None,
    reason="diffusers' WanImageToVideoPipeline calls ftfy.fix_text unconditionally; install ftfy",
)
SAMPLED = [pytest.param(f, marks=needs_ftfy) if f == "wan-i2v" else f for f in FAMILIES]
PROMPTS = ["a red circle", "two blue squares to the left of a green star"]
SIDE = 32
FRAMES = 5  # 4k + 1: one latent frame for the first, one per further 4 frames
EXPECTED = {
    # family: (kind, task, text encoders)
    "sd15": ("unet", "t2i", 1),
    "sdxl": ("unet", "t2i", 2),
    "sd3": ("flow", "t2i", 3),
    "flux": ("flow", "t2i", 2),
    "wan-t2v": ("video", "t2v", 1),
    "wan-i2v": ("video", "i2v", 1),
}


@pytest.fixture(scope="module")
def tiny() -> dict[str, Generator]:
    """One tiny generator per family, built once for the module (~0.05 s each)."""
    torch.set_num_threads(1)
    return {family: load_generator(TINY_PREFIX + family) for family in FAMILIES}


def _condition_image() -> Image.Image:
    # Not the sampled size on purpose: the I2V pipeline resizes it.
    image = Image.new("RGB", (40, 24), "white")
    image.paste((255, 0, 0), (8, 4, 24, 20))
    return image


def _sample(generator: Generator, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    video = generator.kind == "video"
    defaults: dict[str, Any] = {
        "height": SIDE,
        "width": SIDE,
        "num_inference_steps": 4,
        "guidance_scale": 3.0,
        "seed": seed,
        "num_frames": FRAMES if video else None,
        "images": _condition_image() if generator.task == "i2v" else None,
    }
    return sample(generator, PROMPTS, **{**defaults, **kwargs})


# --------------------------------------------------------------------------------------------
# Every tiny family
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_generator_has_family_handles(tiny: dict[str, Generator], family: str) -> None:
    generator = tiny[family]
    kind, task, encoders = EXPECTED[family]
    assert (generator.family, generator.kind, generator.task) == (family, kind, task)
    assert generator.name_or_path == TINY_PREFIX + family
    assert generator.tiny_size == TinyGeneratorSize()
    assert generator.spec is GENERATORS[family]
    assert generator.denoiser is (generator.pipeline.unet if kind == "unet" else generator.pipeline.transformer)
    assert generator.vae is generator.pipeline.vae
    assert generator.scheduler is generator.pipeline.scheduler
    assert len(generator.text_encoders) == len(generator.tokenizers) == encoders
    assert (generator.image_encoder is not None) == (task == "i2v")
    assert not generator.denoiser.training
    assert generator.dtype == torch.float32
    assert generator.to("cpu") is generator and generator.device == torch.device("cpu")


@pytest.mark.parametrize("family", SAMPLED)
def test_tiny_generator_samples_in_unit_range_reproducibly(tiny: dict[str, Generator], family: str) -> None:
    generator = tiny[family]
    first = _sample(generator)
    shape = (len(PROMPTS), FRAMES, 3, SIDE, SIDE) if generator.kind == "video" else (len(PROMPTS), 3, SIDE, SIDE)
    assert first.shape == shape
    assert first.dtype == torch.float32
    assert 0.0 <= first.min() <= first.max() <= 1.0
    assert torch.equal(first, _sample(generator))  # the seed fixes the noise
    assert not torch.equal(first, _sample(generator, seed=1))


@pytest.mark.parametrize("family", SAMPLED)
def test_saved_tiny_generator_reloads_with_identical_samples(
    tiny: dict[str, Generator], family: str, tmp_path: Path
) -> None:
    generator = tiny[family]
    generator.save_pretrained(tmp_path)
    reloaded = load_generator(str(tmp_path))  # the same from_pretrained call a hub id takes
    assert (reloaded.family, reloaded.kind, reloaded.task) == (family, generator.kind, generator.task)
    assert reloaded.name_or_path == str(tmp_path)
    assert reloaded.tiny_size is None
    assert type(reloaded.pipeline) is type(generator.pipeline)
    assert [type(t) for t in reloaded.tokenizers] == [type(t) for t in generator.tokenizers]
    assert torch.equal(_sample(reloaded), _sample(generator))


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="Unknown generator 'sd-42'") as error:
        load_generator("sd-42")
    for name in [*FAMILIES, *(TINY_PREFIX + f for f in FAMILIES)]:
        assert repr(name) in str(error.value)


def test_unreachable_hub_id_lists_known_names() -> None:
    # HF_HUB_OFFLINE=1 (tests/conftest.py): an unregistered hub id cannot be resolved.
    with pytest.raises(ValueError, match="Known generator names") as error:
        resolve_generator("nobody/no-such-pipeline")
    assert "'tiny-sd3'" in str(error.value)


@pytest.mark.parametrize(
    ("name", "size", "family", "hub_id"),
    [
        ("sd15", None, "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        ("sdxl", None, "sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("sd3", None, "sd3", "stabilityai/stable-diffusion-3.5-medium"),
        ("sd3", "large", "sd3", "stabilityai/stable-diffusion-3.5-large"),
        ("flux", None, "flux", "black-forest-labs/FLUX.1-dev"),
        ("wan-t2v", None, "wan-t2v", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
        ("wan-i2v", None, "wan-i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),
        ("black-forest-labs/FLUX.1-dev", None, "flux", "black-forest-labs/FLUX.1-dev"),
        ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", None, "wan-i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),
    ],
)
def test_hub_names_resolve_offline(name: str, size: str | None, family: str, hub_id: str) -> None:
    spec, target = resolve_generator(name, size=size)
    assert (spec.name, target) == (family, hub_id)


def test_hub_name_loads_through_family_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for the download: proves a hub name takes the same call as a folder, with the
    # family's load arguments (no safety checker) and the dtype.
    calls: list[tuple[str, dict[str, Any]]] = []
    tiny_pipeline = build_tiny_sd15(TinyGeneratorSize())

    def fake_from_pretrained(target: str, **kwargs: Any) -> Any:
        calls.append((target, kwargs))
        return tiny_pipeline

    pipeline_class = GENERATORS["sd15"].pipeline_class
    monkeypatch.setattr(pipeline_class, "from_pretrained", fake_from_pretrained)
    generator = load_generator("sd15", dtype="bfloat16", revision="main")
    assert calls == [
        (
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            {
                "safety_checker": None,
                "requires_safety_checker": False,
                DTYPE_KWARG: torch.bfloat16,
                "revision": "main",
            },
        )
    ]
    assert generator.family == "sd15"
    assert generator.name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_folder_of_unregistered_pipeline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ValueError, match=r"KandinskyV22Pipeline.*registered families"):
        load_generator(tmp_path)


def test_size_and_override_errors() -> None:
    with pytest.raises(ValueError, match="has no size 'xl'"):
        resolve_generator("sd3", size="xl")
    with pytest.raises(ValueError, match="only applies to family names"):
        resolve_generator("black-forest-labs/FLUX.1-dev", size="dev")
    with pytest.raises(ValueError, match="does not apply to tiny"):
        resolve_generator("tiny-flux", size="dev")
    with pytest.raises(ValueError, match="Unknown tiny size fields"):
        load_generator("tiny-sd3", depth=3)
    with pytest.raises(ValueError, match="only apply to tiny generators"):
        load_generator("sd3", width=64)
    with pytest.raises(ValueError, match="even integer"):
        TinyGeneratorSize(width=30, num_heads=2)


def test_register_generator_validates() -> None:
    spec = GENERATORS["sd15"]
    with pytest.raises(ValueError, match="already registered"):
        register_generator(spec)
    with pytest.raises(ValueError, match="reserved for tiny"):
        register_generator(GeneratorSpec(**{**spec.__dict__, "name": "tiny-x"}))
    with pytest.raises(ValueError, match="default_size"):
        register_generator(GeneratorSpec(**{**spec.__dict__, "name": "sd15-copy", "default_size": "2.0"}))
    assert "sd15-copy" not in GENERATORS


# --------------------------------------------------------------------------------------------
# Tiny sizes, dtype, seeds
# --------------------------------------------------------------------------------------------


def test_tiny_overrides_resize_and_seed_controls_weights() -> None:
    rng_state = torch.random.get_rng_state()
    small = load_generator("tiny-sd3", width=16, num_layers=2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG is untouched
    assert small.tiny_size == TinyGeneratorSize(width=16, num_layers=2)
    assert small.denoiser.config.num_layers == 2
    assert small.denoiser.config.num_attention_heads * small.denoiser.config.attention_head_dim == 16
    same = load_generator("tiny-sd3", width=16, num_layers=2, seed=1)
    other = load_generator("tiny-sd3", width=16, num_layers=2, seed=2)
    first, second, third = (next(g.denoiser.parameters()) for g in (small, same, other))
    assert torch.equal(first, second) and not torch.equal(first, third)


def test_tiny_dtype() -> None:
    generator = load_generator("tiny-flux", dtype="bfloat16")
    assert generator.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for encoder in generator.text_encoders for p in encoder.parameters())
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_generator("tiny-flux", dtype="float42")


def test_t5_prompts_are_padded_to_the_tokenizer_length(tiny: dict[str, Generator]) -> None:
    # Tiny T5 tokenizers store model_max_length=32; sample() pads to min(pipeline default, that).
    seen: list[int] = []
    encoder = tiny["flux"].pipeline.text_encoder_2
    handle = encoder.register_forward_hook(lambda module, args, kwargs: seen.append(args[0].shape[1]))
    try:
        _sample(tiny["flux"], num_inference_steps=1)
        _sample(tiny["flux"], num_inference_steps=1, max_sequence_length=48)
    finally:
        handle.remove()
    assert seen == [32, 48]


# --------------------------------------------------------------------------------------------
# sample() arguments
# --------------------------------------------------------------------------------------------


def test_sample_argument_errors(tiny: dict[str, Generator]) -> None:
    with pytest.raises(ValueError, match="pass num_frames"):
        sample(tiny["wan-t2v"], PROMPTS, height=SIDE, width=SIDE)
    with pytest.raises(ValueError, match="num_frames does not apply"):
        sample(tiny["sd3"], PROMPTS, height=SIDE, width=SIDE, num_frames=5)
    with pytest.raises(ValueError, match="takes no conditioning images"):
        sample(tiny["sd3"], PROMPTS, height=SIDE, width=SIDE, images=_condition_image())
    with pytest.raises(ValueError, match="pass images"):
        sample(tiny["wan-i2v"], PROMPTS, height=SIDE, width=SIDE, num_frames=FRAMES)
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        _sample(tiny["wan-i2v"], images=[_condition_image()] * 3)


@needs_ftfy
def test_i2v_samples_one_image_per_prompt(tiny: dict[str, Generator]) -> None:
    blank = torch.zeros(3, SIDE, SIDE)  # tensors in [0, 1] are accepted too
    videos = _sample(tiny["wan-i2v"], images=[_condition_image(), blank], num_inference_steps=2)
    assert videos.shape == (2, FRAMES, 3, SIDE, SIDE)
    assert not torch.equal(videos[0], videos[1])


def test_sample_single_prompt_and_pil_output(tiny: dict[str, Generator]) -> None:
    images = sample(tiny["sd15"], "a red circle", height=SIDE, width=SIDE, num_inference_steps=2, output_type="pil")
    assert len(images) == 1 and isinstance(images[0], Image.Image) and images[0].size == (SIDE, SIDE)
    videos = sample(
        tiny["wan-t2v"], ["a"], height=SIDE, width=SIDE, num_frames=FRAMES, num_inference_steps=2, output_type="pil"
    )
    assert len(videos) == 1 and len(videos[0]) == FRAMES and isinstance(videos[0][0], Image.Image)


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def test_tiny_clip_tokenizer_is_the_same_on_every_build() -> None:
    # The BPE trainer numbers characters in hash order and breaks merge ties at random; the ids must not follow.
    first, second = train_tiny_clip_tokenizer(), train_tiny_clip_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert first("a red circle left of two squares!").input_ids == second("a red circle left of two squares!").input_ids


def test_tiny_clip_tokenizer_behaves_like_clip() -> None:
    tokenizer = train_tiny_clip_tokenizer()
    ids = tokenizer("A Red circle", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids
    # Lower-cased, and shapes words are single tokens: prompts stay short.
    assert tokenizer.tokenize("A Red circle") == ["a</w>", "red</w>", "circle</w>"]
    # Unseen words still encode (byte-level, no unk, which is eos in CLIP); "</w>" decodes to a space.
    ids = tokenizer("zebra!").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zebra !"


def test_tiny_t5_tokenizer_has_t5_ids() -> None:
    tokenizer = train_tiny_t5_tokenizer(model_max_length=16)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red circle").input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.model_max_length == 16
