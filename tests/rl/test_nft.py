"""DiffusionNFT: the loss (the plain denoising loss at beta = 1, r = 1; its direction), the optimality probability,
the settings' checks, and a fit through the real command line that exports and resumes exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rewarddance.cli import main
from rewarddance.data.prompts import PromptDataModule
from rewarddance.errors import UsageError
from rewarddance.models.adapters import DenoisingContext, GeneratorAdapter, adapter_for
from rewarddance.models.generators import Generator, load_generator
from rewarddance.rl.nft import nft_chunks, nft_loss, optimality_probability
from rewarddance.rl.refl import anchor_loss
from rewarddance.rl.settings import GeneratorLora, NFTSettings
from rewarddance.tasks import GeneratorRLTask
from tests.rl.helpers import PROMPTS, SIDE

ROOT = Path(__file__).parents[2]


def _setup(generator: Generator) -> tuple[GeneratorAdapter, DenoisingContext, torch.Tensor]:
    adapter = adapter_for(generator)
    context = adapter.prepare(PROMPTS, height=SIDE, width=SIDE, num_inference_steps=5, guidance_scale=1.0)
    x0 = adapter.initial_latents(context, 1).float()  # any clean latents of the right shape
    return adapter, context, x0


def _predict(
    adapter: GeneratorAdapter, context: DenoisingContext, x0: torch.Tensor, step: int, seed: int
) -> torch.Tensor:
    noisy = adapter.renoise(x0, context, context.num_steps, step, seed)
    return adapter.predict_x0(adapter.model_output(noisy, step, context), noisy, step, context)


# --------------------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_beta_one_and_r_one_is_the_plain_denoising_loss(tiny: Callable[[str], Generator], family: str) -> None:
    generator = tiny(family)
    adapter, context, x0 = _setup(generator)
    params = [p for p in generator.denoiser.parameters() if p.requires_grad]
    plain = anchor_loss(adapter, context, x0, 2, 9)
    x0_theta = _predict(adapter, context, x0, 2, 9)  # the same noise (seed 9)
    # x0_old drops out at beta = 1, r = 1: any tensor (here one far from the prediction) gives the same loss.
    x0_old = x0_theta.detach() + torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    loss = nft_loss(x0_theta, x0_old, x0, torch.ones(len(x0)), beta=1.0)
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=0)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    expected = torch.autograd.grad(plain, params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    for g, e in zip(grads, expected, strict=True):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-8)


def test_one_step_with_r_one_fits_the_samples_and_with_r_zero_moves_away() -> None:
    generator = load_generator("tiny-sd15")  # its own: the weights change
    adapter, context, x0 = _setup(generator)
    denoiser = generator.denoiser
    start = {k: v.detach().clone() for k, v in denoiser.state_dict().items()}

    def plain() -> float:
        with torch.no_grad():
            return float(anchor_loss(adapter, context, x0, 2, 9))

    before = plain()
    after = {}
    for r in (1.0, 0.0):
        denoiser.load_state_dict(start)
        optimizer = torch.optim.SGD(denoiser.parameters(), lr=0.05)
        optimizer.zero_grad(set_to_none=True)
        x0_theta = _predict(adapter, context, x0, 2, 9)
        nft_loss(x0_theta, x0_theta.detach(), x0, torch.full((len(x0),), r)).backward()
        optimizer.step()
        after[r] = plain()
    print(f"plain denoising loss: before {before:.6f}, after r=1 {after[1.0]:.6f}, after r=0 {after[0.0]:.6f}")
    assert after[1.0] < before < after[0.0]


def test_r_half_gives_no_gradient_and_the_loss_checks_its_arguments() -> None:
    x0_theta = torch.randn(3, 4, 2, 2, requires_grad=True)
    x0 = torch.randn(3, 4, 2, 2)
    loss = nft_loss(x0_theta, x0_theta.detach(), x0, torch.full((3,), 0.5), beta=0.3)
    (grad,) = torch.autograd.grad(loss, x0_theta)
    assert float(grad.abs().max()) < 1e-7  # the positive and negative pulls cancel (up to rounding)
    torch.testing.assert_close(loss, ((x0_theta - x0) ** 2).mean())
    with pytest.raises(ValueError, match="beta must be > 0"):
        nft_loss(x0_theta, x0_theta, x0, torch.ones(3), beta=0.0)


def test_chunks_group_samples_by_step_and_split_them() -> None:
    steps = torch.tensor([3, 1, 3, 3, 0, 1])
    chunks = nft_chunks(steps, chunk_size=2)
    assert [(s, i.tolist()) for s, i in chunks] == [(0, [4]), (1, [1, 5]), (3, [0, 2]), (3, [3])]
    assert sorted(torch.cat([i for _, i in nft_chunks(steps)]).tolist()) == list(range(6))


# --------------------------------------------------------------------------------------------- rewards to r


def test_optimality_probability_is_a_monotone_probability_and_half_for_equal_rewards() -> None:
    rewards = torch.tensor([0.1, 0.9, 0.4, 0.5, 0.7, 0.7, 0.7, 0.7])
    r = optimality_probability(rewards, 4, adv_clip_max=1.0)
    assert bool(((r >= 0) & (r <= 1)).all())
    first = r[:4]
    order = torch.argsort(rewards[:4])
    assert bool((first[order].diff() > 0).all())  # monotone in the reward within the group
    assert first.min() == 0.0 and first.max() == 1.0  # clipped at |A| >= adv_clip_max
    torch.testing.assert_close(r[4:], torch.full((4,), 0.5))  # equal rewards: no preference
    # The default scale 5 keeps small groups' r near 0.5 (|A| <= sqrt(3) for 4 samples).
    r5 = optimality_probability(rewards, 4)
    assert bool(((r5 - 0.5).abs() <= 0.5 * math.sqrt(3) / 5 + 1e-6).all())
    with pytest.raises(ValueError, match="adv_clip_max"):
        optimality_probability(rewards, 4, adv_clip_max=0.0)


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"), ({"group_size": 1}, "group_size"),
     ({"adv_clip_max": 0.0}, "adv_clip_max"), ({"chunk_size": 0}, "chunk_size"),
     ({"rollout_reuse": 0}, "rollout_reuse")],
)  # fmt: skip
def test_bad_settings_name_the_option(settings: dict[str, float], field: str) -> None:
    with pytest.raises(UsageError, match=rf"model\.init_args\.nft\.{field}"):
        GeneratorRLTask(algorithm="nft", nft=NFTSettings(**settings))


# --------------------------------------------------------------------------------------------- the task


def test_cli_fit_trains_exports_and_the_export_loads(tmp_path: Path) -> None:
    cli = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "rl" / "shapes_nft.yaml"),
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.init_args.reward=shapes-color",  # a toy reward: no best-of-16 reference sampling in a test
            "--model.init_args.height=32",
            "--model.init_args.width=32",
            "--model.init_args.num_inference_steps=4",
            "--model.init_args.eval_every=0",
            "--model.init_args.nft.group_size=2",
            "--model.init_args.nft.chunk_size=2",
            "--model.init_args.plot=false",
            "--data.init_args.val_per_tag=1",
            "--data.init_args.batch_size=2",
        ]
    )
    task = cli.model
    assert isinstance(task, GeneratorRLTask) and task.hparams.algorithm == "nft"
    assert task.trainer.global_step == 2
    metrics = task.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and float(metrics["train/loss"]) > 0
    assert 0.0 <= float(metrics["train/nft_r"]) <= 1.0
    assert math.isfinite(float(metrics["train/diversity"])) and math.isfinite(float(metrics["train/reward"]))
    assert len(task.history["train"]["reward_mean"]) == 1  # the config's rollout_reuse 8: both steps on one batch
    exported = load_generator(Path(task.trainer.log_dir) / "export")
    assert exported.family == task.generator.family
    assert not any("lora" in name for name, _ in exported.denoiser.named_parameters())


def _nft_task(rollout_reuse: int = 1) -> GeneratorRLTask:
    return GeneratorRLTask(
        algorithm="nft",
        nft=NFTSettings(group_size=2, rollout_reuse=rollout_reuse),
        lora=GeneratorLora(r=4),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0),
        num_inference_steps=3,
        eval_every=None,
        plot=False,
        export=False,
    )


def _trainer(root: Path, steps: int, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        **{"enable_checkpointing": False, **kwargs},  # type: ignore[arg-type]
        max_steps=steps, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def _prompts() -> PromptDataModule:
    return PromptDataModule(train="shapes:train", val=None, per_tag=1, batch_size=2, shuffle=False)


def _run_and_resume(
    tmp_path: Path, steps: int, rollout_reuse: int = 1
) -> tuple[GeneratorRLTask, GeneratorRLTask, L.Trainer]:
    """An uninterrupted run of ``steps`` that saves every step, and a run resumed from its step-1 checkpoint."""
    torch.manual_seed(0)
    full = _nft_task(rollout_reuse)
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=1)
    _trainer(tmp_path / "full", steps, callbacks=[save], enable_checkpointing=True).fit(full, datamodule=_prompts())
    torch.manual_seed(1)  # a different LoRA initialisation: the checkpoint's weights must replace it
    resumed = _nft_task(rollout_reuse)
    fit = _trainer(tmp_path / "resumed", steps)
    fit.fit(resumed, datamodule=_prompts(), ckpt_path=tmp_path / "ckpt" / "epoch=0-step=1.ckpt")
    return full, resumed, fit


def test_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    # Nothing carries over between NFT updates but the weights, the optimizer and the step (its draws are seeded
    # from it), so a resume from step 1 must end bitwise where the uninterrupted run ends.
    full, resumed, fit = _run_and_resume(tmp_path, 2)
    assert fit.global_step == 2
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    lora = [k for k in a if "lora" in k]
    assert lora and all(torch.equal(a[k], b[k]) for k in a)
    at_one = torch.load(tmp_path / "ckpt" / "epoch=0-step=1.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(at_one[k], a[k]) for k in lora)  # step 2 did update the weights
    assert full.history["train"] == resumed.history["train"]


class _Drifts(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.values.append(float(trainer.callback_metrics["train/nft_drift"]))


def test_rollout_reuse_samples_once_per_cycle_and_anchors_to_the_sampling_policy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = _nft_task(rollout_reuse=2)
    drifts = _Drifts()
    _trainer(tmp_path, 3, log_every_n_steps=1, callbacks=[drifts]).fit(task, datamodule=_prompts())
    # Steps 1 and 3 sample (and score) fresh batches; step 2 reuses step 1's samples with a new draw of steps/noise.
    assert len(task.history["train"]["reward_mean"]) == 2
    # The anchor of step 2 is the prediction of the weights that drew the samples, computed before step 1 moved
    # them: the trained prediction has drifted from it. A first use is anchored to itself: drift exactly 0.
    assert drifts.values[0] == 0.0 and drifts.values[1] > 0.0 and drifts.values[2] == 0.0


def test_resume_in_the_middle_of_a_reuse_cycle_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    # The checkpoint at step 1 holds the samples step 2 still trains on (plain tensors: weights_only loads it).
    full, resumed, _ = _run_and_resume(tmp_path, 3, rollout_reuse=2)
    at_one = torch.load(tmp_path / "ckpt" / "epoch=0-step=1.ckpt", weights_only=True)
    assert at_one["rewarddance_rl"]["nft_samples"]["uses"] == 1
    assert (
        "nft_samples" not in torch.load(tmp_path / "ckpt" / "epoch=0-step=2.ckpt", weights_only=True)["rewarddance_rl"]
    )
    a, b = full.state_dict(), resumed.state_dict()
    assert [k for k in a if "lora" in k] and all(torch.equal(a[k], b[k]) for k in a)
    assert full.history["train"] == resumed.history["train"]
