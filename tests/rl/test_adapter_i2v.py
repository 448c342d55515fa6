"""The Wan 2.1 image-to-video adapter reproduces ``WanImageToVideoPipeline`` step by step (shared image and one
image per prompt), GRPO's deterministic steps match the pipeline's Euler sampling, and condition images are read
from PIL images, data URLs and files with clear errors."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from rewarddance.errors import BadFileError, UsageError
from rewarddance.models.adapters import WanI2VAdapter, adapter_for, load_condition_image
from rewarddance.models.generators import Generator, load_generator
from rewarddance.rl.grpo import sample_trajectory
from tests.rl.helpers import PROMPTS, SIDE

STEPS, FRAMES = 3, 5


def _image(seed: int, side: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))


def _pipeline(model: Generator, image: Image.Image, prompts: list[str], **call: Any) -> tuple[Any, list[Any]]:
    """The pipeline's output and its latents after each step."""
    captured: list[torch.Tensor] = []

    def record(pipe: Any, i: int, t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        captured.append(tensors["latents"].clone())
        return tensors

    model.pipeline.set_progress_bar_config(disable=True)
    kwargs = {"height": SIDE, "width": SIDE, "num_frames": FRAMES, "num_inference_steps": STEPS, **call}
    with torch.no_grad():
        out = model.pipeline(image=image, prompt=prompts, max_sequence_length=32, callback_on_step_end=record, **kwargs)
    return out.frames, captured


def _prepare(generator: Generator, images: list[Any] | None, prompts: list[str] = PROMPTS) -> Any:
    adapter = adapter_for(generator)
    context = adapter.prepare(
        prompts, height=SIDE, width=SIDE, num_frames=FRAMES, num_inference_steps=STEPS, condition_images=images
    )
    return adapter, context


def test_shared_image_reproduces_pipeline_latents_and_pixels(tiny: Callable[[str], Generator]) -> None:
    generator = tiny("wan-i2v")
    image = _image(0)
    final, per_step = _pipeline(
        generator, image, PROMPTS, output_type="latent", generator=torch.Generator().manual_seed(3)
    )
    adapter, context = _prepare(generator, [image, image])
    assert isinstance(adapter, WanI2VAdapter)
    assert context.embeds["condition"].shape[1] == generator.denoiser.config.in_channels - final.shape[1]
    noise = adapter.initial_latents(context, 3)
    assert torch.equal(adapter.denoise(noise, context, 0, context.num_steps), final)
    for step in range(1, context.num_steps):
        assert torch.equal(adapter.denoise(noise, context, 0, step), per_step[step - 1])
    pixels, _ = _pipeline(generator, image, PROMPTS, output_type="pt", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        decoded = adapter.decode(final, context)
    assert decoded.shape == pixels.shape == (2, FRAMES, 3, SIDE, SIDE)
    torch.testing.assert_close(decoded, pixels.float(), atol=1e-5, rtol=0)


def test_one_image_per_prompt_matches_the_pipeline_run_per_prompt(tiny: Callable[[str], Generator]) -> None:
    generator = tiny("wan-i2v")
    images = [_image(1), _image(2)]
    adapter, context = _prepare(generator, images)
    noise = adapter.initial_latents(context, 4)
    batch = adapter.denoise(noise, context, 0, context.num_steps)
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        alone, _ = _pipeline(generator, image, [prompt], output_type="latent", latents=noise[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    # Different images condition differently (the condition is not ignored).
    assert not torch.allclose(context.embeds["condition"][0], context.embeds["condition"][1])
    assert not torch.allclose(context.embeds["image_embeds"][0], context.embeds["image_embeds"][1])


def test_grpo_deterministic_steps_match_the_pipeline_euler_sampler() -> None:
    # GRPO rolls out its own Flow-GRPO SDE; with no SDE step (eta 0) it is the Euler ODE, i.e. the pipeline with
    # FlowMatchEulerDiscreteScheduler, from the same noise.
    generator = load_generator("tiny-wan-i2v")
    generator.pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    image = _image(5)
    final, _ = _pipeline(generator, image, PROMPTS, output_type="latent", generator=torch.Generator().manual_seed(6))
    adapter, context = _prepare(generator, [image, image])
    trajectory = sample_trajectory(adapter, context, adapter.initial_latents(context, 6), sde_steps=())
    torch.testing.assert_close(trajectory.final, final, atol=1e-5, rtol=1e-5)
    # And an SDE rollout gives log-probs a recompute reproduces (the GRPO ratio is 1 before any update).
    from rewarddance.rl.grpo import recompute_step

    sde = sample_trajectory(adapter, context, adapter.initial_latents(context, 6), sde_steps=(0, 1), generator=0)
    with torch.no_grad():
        again = recompute_step(adapter, context, sde, 1).log_prob
    torch.testing.assert_close(again, sde.log_probs[:, 1])


def test_registered_conditions_and_errors(tiny: Callable[[str], Generator], tmp_path: Path) -> None:
    generator = tiny("wan-i2v")
    image = _image(7)
    adapter, given = _prepare(generator, [image, image])
    with pytest.raises(UsageError, match="no condition image"):
        adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_frames=FRAMES, num_inference_steps=STEPS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    path = tmp_path / "first.png"
    image.save(path)
    adapter.register_conditions(PROMPTS, [url, str(path)])
    looked_up = adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_frames=FRAMES, num_inference_steps=STEPS)
    assert torch.equal(looked_up.embeds["condition"], given.embeds["condition"])
    assert torch.equal(looked_up.embeds["image_embeds"], given.embeds["image_embeds"])
    with pytest.raises(UsageError, match="data URL"):
        load_condition_image("data:text/plain;base64,aGk=", "sample 3")
    with pytest.raises(BadFileError, match="not found"):
        load_condition_image(str(tmp_path / "missing.png"), "sample 3")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(BadFileError, match=r"bad\.png"):
        load_condition_image(str(tmp_path / "bad.png"), "sample 3")
    with pytest.raises(UsageError, match="sample 3"):
        load_condition_image(3, "sample 3")
    with pytest.raises(ValueError, match="condition images"):
        adapter.register_conditions(PROMPTS, [url])
