"""The step-level adapters reproduce each diffusers pipeline exactly, step by step, and decode like it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from rewarddance.models.adapters import ADAPTERS, DenoisingContext, GeneratorAdapter, PipelineAdapter, adapter_for
from rewarddance.models.generators import Generator, default_max_sequence_length
from tests.rl.helpers import PROMPTS, SIDE

FAMILIES = ["sd15", "sdxl", "sd3", "flux", "wan-t2v"]
STEPS = 3


def _extra(family: str) -> dict[str, Any]:
    return {"num_frames": 5} if family == "wan-t2v" else {}


def _pipeline_run(generator: Generator, seed: int, **call: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The pipeline's own final output and its latents after each step (via callback_on_step_end)."""
    captured: list[torch.Tensor] = []

    def record(pipe: Any, i: int, t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        captured.append(tensors["latents"].clone())
        return tensors

    kwargs: dict[str, Any] = {"height": SIDE, "width": SIDE, "num_inference_steps": STEPS, **call}
    if (length := default_max_sequence_length(generator.pipeline)) is not None:
        kwargs["max_sequence_length"] = length
    generator.pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = generator.pipeline(
            prompt=PROMPTS, generator=torch.Generator().manual_seed(seed), callback_on_step_end=record, **kwargs
        )
    return (out.frames if hasattr(out, "frames") else out.images), captured


def _prepare(generator: Generator, **kwargs: Any) -> tuple[PipelineAdapter, DenoisingContext]:
    adapter = adapter_for(generator)
    context = adapter.prepare(
        PROMPTS, height=SIDE, width=SIDE, num_inference_steps=STEPS, **_extra(generator.family), **kwargs
    )
    return adapter, context


@pytest.mark.parametrize("family", FAMILIES)
def test_denoise_reproduces_pipeline_latents_at_every_step(tiny: Callable[[str], Generator], family: str) -> None:
    generator = tiny(family)
    final, per_step = _pipeline_run(generator, seed=3, output_type="latent", **_extra(family))
    adapter, context = _prepare(generator)
    noise = adapter.initial_latents(context, 3)
    assert torch.equal(adapter.denoise(noise, context, 0, context.num_steps), final)
    for step in range(1, context.num_steps):  # the latents the denoiser sees at each step
        assert torch.equal(adapter.denoise(noise, context, 0, step), per_step[step - 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_matches_pipeline_pixels(tiny: Callable[[str], Generator], family: str) -> None:
    generator = tiny(family)
    pixels, _ = _pipeline_run(generator, seed=5, output_type="pt", **_extra(family))
    adapter, context = _prepare(generator)
    latents = adapter.denoise(adapter.initial_latents(context, 5), context, 0, context.num_steps)
    with torch.no_grad():
        decoded = adapter.decode(latents, context)
    assert decoded.shape == pixels.shape  # video: [B, T, C, H, W] like generators.sample
    torch.testing.assert_close(decoded, pixels.float(), atol=1e-5, rtol=0)


def test_context_repeat_and_select(tiny: Callable[[str], Generator]) -> None:
    _, context = _prepare(tiny("sd3"))
    repeated = context.repeat_interleave(3)
    assert repeated.batch_size == 6
    embeds = repeated.embeds["encoder_hidden_states"]
    assert torch.equal(embeds[2], context.embeds["encoder_hidden_states"][0])
    assert torch.equal(embeds[3], context.embeds["encoder_hidden_states"][1])
    assert repeated.negative_embeds is not None
    assert repeated.select([3, 4]).batch_size == 2
    assert torch.equal(repeated.select([3]).embeds["pooled_projections"][0], context.embeds["pooled_projections"][1])


def test_resuming_mid_schedule_matches_one_run(tiny: Callable[[str], Generator]) -> None:
    # First-order schedulers can stop and restart (search over paths does); multistep ones refuse.
    adapter, context = _prepare(tiny("sd3"))
    noise = adapter.initial_latents(context, 0)
    halfway = adapter.denoise(noise, context, 0, 1)
    assert torch.equal(adapter.denoise(halfway, context, 1, STEPS), adapter.denoise(noise, context, 0, STEPS))
    sd15, sd15_context = _prepare(tiny("sd15"))  # PNDM (PLMS) keeps a history of outputs
    with pytest.raises(ValueError, match="multistep"):
        sd15.denoise(sd15.initial_latents(sd15_context, 0), sd15_context, 1, 2)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_renoise_to_the_same_step_is_identity(tiny: Callable[[str], Generator], family: str) -> None:
    adapter, context = _prepare(tiny(family))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adapter.renoise(latents, context, 2, 2, generator=1), latents)
    assert not torch.allclose(adapter.renoise(latents, context, 3, 1, generator=1), latents)


def test_unsupported_families_and_arguments(tiny: Callable[[str], Generator]) -> None:
    with pytest.raises(NotImplementedError, match="made-up"):
        adapter_for(Generator(pipeline=None, family="made-up", kind="video", task="i2v", name_or_path="made-up"))
    with pytest.raises(ValueError, match="condition"):
        adapter_for(tiny("sd3")).prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=2, condition_images=[])
    with pytest.raises(ValueError, match="num_frames"):
        adapter_for(tiny("sd3")).prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=2, num_frames=5)
    with pytest.raises(NotImplementedError, match="true CFG"):
        adapter_for(tiny("flux")).prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=2, negative_prompt="x")
    adapter, context = _prepare(tiny("sd3"))
    with pytest.raises(ValueError, match="outside"):
        adapter.model_output(torch.zeros(2, 4, 16, 16), STEPS, context)


def test_every_registered_adapter_has_the_protocol_signatures() -> None:
    # RL and search call adapters only through GeneratorAdapter: each method must take the protocol's parameters.
    methods = [name for name, value in vars(GeneratorAdapter).items() if callable(value) and not name.startswith("_")]
    assert {"prepare", "initial_latents", "model_output", "predict_x0", "denoise", "renoise", "decode"} <= set(methods)
    for family in ADAPTERS:
        adapter = ADAPTERS[family]
        for name in methods:
            expected = list(inspect.signature(getattr(GeneratorAdapter, name)).parameters)
            assert list(inspect.signature(getattr(adapter, name)).parameters) == expected, (family, name)
