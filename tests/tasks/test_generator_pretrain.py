"""GeneratorPretrainTask: VAE phase then denoiser phase, the latent scale, EMA, export and reload, the CLI config."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from rewarddance.cli import main
from rewarddance.models.generators import load_generator
from rewarddance.shapes.text_image import TextImageDataModule
from rewarddance.tasks import GeneratorPretrainTask

ROOT = Path(__file__).parents[2]
SMALL = {"width": 32, "text_width": 32, "vae_width": 8}
"""Smaller than the bundled generator's defaults, same architecture (64 px, 16x16x4 latents)."""


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def _fit(task: GeneratorPretrainTask, steps: int, root: Path) -> None:
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(task, datamodule=TextImageDataModule(batch_size=4))


def test_vae_phase_trains_only_the_vae(tmp_path: Path):
    task = GeneratorPretrainTask(size=SMALL, vae_steps=3, eval_every=0)
    task.configure_model()
    vae, unet, text = _params(task.vae), _params(task.unet), _params(task.text_encoder)
    _fit(task, 2, tmp_path)
    assert _changed(vae, task.vae)
    assert not _changed(unet, task.unet) and not _changed(text, task.text_encoder)
    assert task.vae.config.scaling_factor == 0.18215  # not measured until the phase ends


class _Snapshot(L.Callback):
    """Copies of the weights when the VAE phase has just ended (after the last VAE step)."""

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if trainer.global_step == task.hparams.vae_steps:
            self.vae, self.unet, self.text = _params(task.vae), _params(task.unet), _params(task.text_encoder)
            self.ema = _params(task.ema_unet)


def test_denoiser_phase_freezes_the_scaled_vae_and_keeps_an_ema(tmp_path: Path):
    task = GeneratorPretrainTask(size=SMALL, vae_steps=2, eval_every=0, ema_decay=0.5)
    snapshot = _Snapshot()
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[snapshot],
    )  # fmt: skip
    trainer.fit(task, datamodule=TextImageDataModule(batch_size=4))
    # Unit-variance latents: 1 / RMS of the VAE means over the phase.
    scale = task.vae.config.scaling_factor
    assert scale == pytest.approx(1 / (sum(task._latent_sq) / len(task._latent_sq)) ** 0.5)
    assert task.history[0]["vae/oracle_originals"] == 1.0  # the oracle accepts every training render
    assert not _changed(snapshot.vae, task.vae) and not any(p.requires_grad for p in task.vae.parameters())
    assert _changed(snapshot.unet, task.unet) and _changed(snapshot.text, task.text_encoder)
    assert _changed(snapshot.ema, task.ema_unet)
    # The EMA trails the live weights: it moved, but not all the way.
    assert any(not torch.equal(e, p) for e, p in zip(task.ema_unet.parameters(), task.unet.parameters(), strict=True))


def test_fit_config_exports_a_pipeline_that_loads_like_a_hub_one(tmp_path: Path):
    export = tmp_path / "shapes-t2i"
    main(["fit", "--config", str(ROOT / "configs/pretrain/shapes_t2i.yaml"),
          "--trainer.max_steps", "4", "--trainer.max_time", "null", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path),
          "--model.init_args.size", json.dumps(SMALL), "--model.init_args.vae_steps", "2",
          "--model.init_args.eval_every", "1", "--model.init_args.eval_per_tag", "1",
          "--model.init_args.final_eval_per_tag", "1", "--model.init_args.num_inference_steps", "2",
          "--model.init_args.export_dir", str(export), "--data.init_args.batch_size", "4"])  # fmt: skip
    record = json.loads((export / "training_record.json").read_text())
    assert record["global_step"] == 4 and record["vae_steps"] == 2
    assert [h["step"] for h in record["history"] if "oracle/geneval" in h] == [3.0, 4.0, 4.0]  # every step, then final
    generator = load_generator(export)
    assert generator.family == "sd15"
    components = (generator.denoiser, generator.vae, *generator.text_encoders)
    assert all(p.dtype == torch.float32 for m in components for p in m.parameters())  # float16 on disk
    # The sampling settings it was evaluated with travel with it (not the pipeline's guidance 7.5).
    assert generator.sampling_defaults == {"guidance_scale": 2.0, "num_inference_steps": 2}
    scheduler = generator.pipeline.scheduler.config
    assert scheduler.prediction_type == "v_prediction" and scheduler.rescale_betas_zero_snr
    assert generator.vae.config.scaling_factor == pytest.approx(record["history"][0]["vae/latent_scale"])
