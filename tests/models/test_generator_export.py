"""A saved generator samples with a plain ``DiffusionPipeline.from_pretrained(folder)``, no dtype argument."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from rewarddance.models.generators import load_generator


def _call(pipeline: DiffusionPipeline) -> torch.Tensor:
    return pipeline(
        ["a red circle"], height=32, width=32, num_inference_steps=2, guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip


def test_half_precision_generator_saves_a_folder_plain_diffusers_samples(tmp_path: Path) -> None:
    # The generator pretraining export stores float16; before the fix the text encoder came back
    # float16 beside a float32 UNet and sampling failed with "Half and Float".
    generator = load_generator("tiny-sd15").to(dtype=torch.float16)
    generator.save_pretrained(tmp_path)
    assert generator.pipeline.text_encoder.dtype == torch.float16  # the live pipeline keeps its dtypes

    plain = DiffusionPipeline.from_pretrained(tmp_path)
    dtypes = {name: c.dtype for name, c in plain.components.items() if isinstance(c, torch.nn.Module)}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    images = _call(plain)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    # rewarddance's own loading of the folder builds the same pipeline.
    torch.testing.assert_close(images, _call(load_generator(tmp_path).pipeline), atol=0, rtol=0)


def test_rl_export_with_low_precision_frozen_parts_samples_in_plain_diffusers(tmp_path: Path) -> None:
    from rewarddance.tasks import GeneratorRLTask  # the RL export goes through the same save

    task = GeneratorRLTask(reward="shapes-color", frozen_dtype="bfloat16", num_inference_steps=2, eval_every=None)
    task.configure_model()
    task.on_fit_start()  # where the frozen VAE and text encoders are cast to bfloat16
    assert task.components().text_encoders[0].dtype == torch.bfloat16
    folder = task.export(tmp_path / "export")
    plain = DiffusionPipeline.from_pretrained(folder)
    dtypes = {name: c.dtype for name, c in plain.components.items() if isinstance(c, torch.nn.Module)}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    assert torch.isfinite(_call(plain)).all()


BUNDLED = sorted(p for p in (Path(__file__).parents[2] / "data" / "generators").iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_generators_sample_in_plain_diffusers_with_their_recorded_defaults(folder: Path) -> None:
    assert [p.name for p in BUNDLED] == ["shapes-t2i", "shapes-t2i-early"]  # a new folder gets documented here too
    plain = DiffusionPipeline.from_pretrained(folder)
    assert torch.isfinite(_call(plain)).all()
    defaults = json.loads((folder / "rewarddance_sampling.json").read_text())
    assert defaults == {"guidance_scale": 2.0, "num_inference_steps": 20}
    assert load_generator(folder).sampling_defaults == defaults
    record = json.loads((folder / "training_record.json").read_text())
    assert record["global_step"] > record["vae_steps"] > 0
