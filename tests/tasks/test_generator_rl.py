"""GeneratorRLTask: ReFL and GRPO on tiny generators, best-of-N references, guard rails, the oracle, the CLI."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from rewarddance.callbacks import NonFiniteError
from rewarddance.callbacks.rl_evaluation import RewardHackingWarning
from rewarddance.cli import main
from rewarddance.data.prompts import PromptDataModule, load_prompts
from rewarddance.judge.reward import RewardModelReward
from rewarddance.models.adapters import adapter_for
from rewarddance.models.generators import load_generator
from rewarddance.rl.rewards import CallableReward, build_reward
from rewarddance.rl.settings import GeneratorLora, GRPOSettings
from rewarddance.shapes import TAGS, geneval_prompts, write_geneval_jsonl
from rewarddance.shapes.rewards import ShapesColorReward, ShapesOracleReward
from rewarddance.tasks import GenerativeRewardTask, GeneratorRLTask
from rewarddance.tasks.generator_pretrain import shapes_scheduler
from rewarddance.tasks.generator_rl import SampleCollapseWarning

ROOT = Path(__file__).parents[2]
FAST = {"num_inference_steps": 4, "eval_every": None}
"""Four sampling steps (ReFL's default window is then step 3), no oracle evaluation."""


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # tests/conftest.py sets it too (two threads on a busy 2-core machine run ~10x slower); repeated so this file
    # runs fast alone.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prompts_jsonl(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two GenEval prompts (a colour one and a counting one) in a JSONL file: every batch holds both."""
    metas = geneval_prompts(1, split="train", tags=("colors", "counting"))
    return str(write_geneval_jsonl(tmp_path_factory.mktemp("prompts") / "train.jsonl", metas))


@pytest.fixture(scope="module")
def pairwise_rm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An exported, untrained tiny pairwise reward model."""
    task = GenerativeRewardTask(paradigm="pairwise")
    task.configure_model()
    return str(task.export_to(tmp_path_factory.mktemp("rm") / "export"))


def _data(train: str, **kwargs: Any) -> PromptDataModule:
    return PromptDataModule(train=train, batch_size=2, shuffle=False, **kwargs)


def _trainer(root: Path, steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root, name=""),
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,  # clipping: the task's max_grad_norm (default 1.0)
        log_every_n_steps=1,
    )


def _adamw(lr: float) -> Any:
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = module.state_dict()
    return all(torch.equal(after[k], v) for k, v in before.items())


# --------------------------------------------------------------------------------------------- ReFL


@pytest.mark.parametrize(
    ("generator", "lora"), [("tiny-sd3", True), ("tiny-sd15", False)], ids=["sd3-lora", "sd15-full"]
)
def test_refl_trains_the_denoiser_and_nothing_else(tmp_path: Path, prompts_jsonl: str, generator: str, lora: bool):
    task = GeneratorRLTask(
        generator=generator, lora=GeneratorLora(r=4) if lora else None, optimizer=_adamw(1e-3), **FAST
    )
    task.configure_model()
    trainable = {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in task.named_parameters() if not p.requires_grad}
    frozen = [(m, _snapshot(m)) for m in task.frozen_modules()]
    assert trainable and frozen

    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(task, datamodule=_data(prompts_jsonl))

    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert 0.0 <= float(trainer.callback_metrics["train/reward"]) <= 1.0
    params = dict(task.named_parameters())
    assert any(not torch.equal(params[n], before) for n, before in trainable.items())
    if lora:
        assert all("lora_" in n for n in trainable)
        assert all(torch.equal(params[n], before) for n, before in base.items())  # the base weights stay
    for module, before in frozen:
        assert not any(p.requires_grad for p in module.parameters())
        assert _unchanged(module, before)

    # The export is a plain pipeline whose denoiser computes what the tuned one does (LoRA fused in).
    exported = load_generator(Path(trainer.log_dir) / "export")
    assert exported.family == task.generator.family
    assert (Path(trainer.log_dir) / "export" / "lora").is_dir() == lora
    assert not any("lora" in name for name, _ in exported.denoiser.named_parameters())
    adapter, context = task.adapter, task.adapter.prepare(["a red circle"], height=32, width=32, num_inference_steps=4)
    latents = adapter.initial_latents(context, 0)
    with torch.no_grad():
        tuned = adapter.model_output(latents, 1, context)
        exported_out = adapter_for(exported).model_output(
            latents, 1, adapter_for(exported).prepare(["a red circle"], height=32, width=32, num_inference_steps=4)
        )
    torch.testing.assert_close(exported_out, tuned, atol=1e-4, rtol=1e-4)


def test_pairwise_reward_model_judges_against_cached_best_of_n_references(
    tmp_path: Path, prompts_jsonl: str, pairwise_rm: str
):
    reward = {"kind": "reward_model", "path": pairwise_rm, "best_of_n": 4, "top_k": 2}
    task = GeneratorRLTask(reward=reward, optimizer=_adamw(1e-2), **FAST)  # full fine-tuning: a frozen copy
    task.configure_model()
    rm = task.reward
    assert isinstance(rm, RewardModelReward) and rm.needs_references
    rm_before = _snapshot(rm.model.backbone.model)

    _trainer(tmp_path, steps=2).fit(task, datamodule=_data(prompts_jsonl))

    prompts = [item["prompt"] for item in load_prompts(prompts_jsonl)]
    assert rm.cache.misses == 2 and rm.cache.hits >= 2 and len(rm.cache) == 2  # chosen once per prompt, then reused
    for prompt in prompts:
        selection = rm.cache.get(prompt)
        assert selection is not None and selection.wins.shape == (4, 4) and selection.references.shape == (2, 3, 32, 32)
        # Top-2 by win count...
        others = [c for i, c in enumerate(selection.counts.tolist()) if i not in selection.indices.tolist()]
        assert min(selection.counts[selection.indices].tolist()) >= max(others)
        # ...among samples of the frozen starting model: regenerated after training, the chosen ones match.
        candidates = task.sample_starting_model(prompt, 4, rm.reference_seed(prompt))
        torch.testing.assert_close(candidates[selection.indices], selection.references)
        trained = task.generate([prompt], samples_per_prompt=4, seed=rm.reference_seed(prompt))
        assert not torch.allclose(trained, candidates)  # training did move the generator
    assert _unchanged(rm.model.backbone.model, rm_before)
    assert not any(p.requires_grad for p in rm.model.backbone.model.parameters())


def test_refl_anchor_trains_on_the_latents_of_the_chosen_references(
    tmp_path: Path, prompts_jsonl: str, pairwise_rm: str
):
    reward = {"kind": "reward_model", "path": pairwise_rm, "best_of_n": 4, "top_k": 2}
    task = GeneratorRLTask(reward=reward, refl={"anchor_weight": 1.0}, optimizer=_adamw(1e-3), **FAST)
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(task, datamodule=_data(prompts_jsonl))

    anchor = float(trainer.callback_metrics["train/anchor_loss"])
    assert math.isfinite(anchor) and anchor > 0
    for prompt in [item["prompt"] for item in load_prompts(prompts_jsonl)]:
        latents = task.reference_latents([prompt])
        assert latents.shape[0] == 2  # the top-2 of the 4 candidates, trimmed
        # The kept latents are those of the chosen references: the starting model's decoder gives their images.
        with torch.no_grad(), task.starting_policy():
            context = task.adapter.prepare([prompt], **task.sampling_kwargs()).repeat_interleave(2)
            decoded = task.adapter.decode(latents, context)
        torch.testing.assert_close(decoded, task.reward.cache.get(prompt).references, atol=1e-5, rtol=1e-5)


def test_refl_anchor_needs_a_reward_with_references():
    task = GeneratorRLTask(reward="shapes-color", refl={"anchor_weight": 1.0}, **FAST)
    with pytest.raises(ValueError, match="anchor_weight"):
        task.configure_model()
    with pytest.raises(ValueError, match="anchor_steps"):
        GeneratorRLTask(refl={"anchor_weight": 1.0, "anchor_steps": [2, 9]}, **FAST)


# --------------------------------------------------------------------------------------------- GRPO


def test_grpo_first_recompute_ratio_is_exactly_one(tmp_path: Path, prompts_jsonl: str):
    grpo = GRPOSettings(group_size=3, train_steps=2, kl_coef=0.1, rollout_reuse=2)
    task = GeneratorRLTask(algorithm="grpo", grpo=grpo, lora=GeneratorLora(r=4), optimizer=_adamw(1e-2), **FAST)
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(task, datamodule=_data(prompts_jsonl))

    # Sampling and training compute the log-probs through the same functions and batch layout.
    ratio = task.first_ratio
    assert ratio is not None and ratio.shape == (6,)
    assert torch.equal(ratio, torch.ones_like(ratio))
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    # Step 2 reused step 1's rollouts with updated weights: off-policy now, and away from the starting model
    # (the KL reference runs with the adapters disabled, the ratio with them enabled again).
    assert float(metrics["train/ratio_deviation"]) > 0
    assert float(metrics["train/kl"]) > 0
    # A checkpoint between reuse cycles needs nothing more; one inside a cycle cannot hold GRPO's rollouts, so its
    # resume says loudly that it samples afresh (the uninterrupted run reused them).
    assert task.reuse_checkpoint() == {}
    task._rollout.uses = 1
    assert task.reuse_checkpoint() == {"grpo_unfinished_reuse": True}
    with pytest.warns(UserWarning, match="part-way through grpo.rollout_reuse"):
        task.restore_reuse(task.reuse_checkpoint())


def test_grpo_on_a_unet_samples_ddims_sde(tmp_path: Path, prompts_jsonl: str):
    with pytest.raises(ValueError, match="DDIM or DDPM scheduler, not PNDMScheduler"):
        GeneratorRLTask(generator="tiny-sd15", algorithm="grpo").configure_model()
    unet = load_generator("tiny-sd15")
    unet.pipeline.scheduler = shapes_scheduler()  # the bundled shapes generator's DDIM (v-prediction, zero SNR)
    unet.save_pretrained(tmp_path / "sd15-ddim")
    grpo = GRPOSettings(group_size=2, noise_level=1.0, train_steps=2)
    task = GeneratorRLTask(generator=str(tmp_path / "sd15-ddim"), algorithm="grpo", grpo=grpo, **FAST)
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(task, datamodule=_data(prompts_jsonl))
    assert torch.equal(task.first_ratio, torch.ones_like(task.first_ratio))
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert not bool(task._rollout.trajectory.stochastic[-1])  # the last DDIM step has no noise


# --------------------------------------------------------------------------------------------- guard rails


def test_non_finite_reward_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, prompts_jsonl: str):
    calls: list[int] = []

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        calls.append(1)
        score = images.mean(dim=(1, 2, 3))
        return score * float("nan") if len(calls) > 1 else score

    task = GeneratorRLTask(reward=reward, optimizer=_adamw(1e-3), **FAST)
    task.configure_model()
    start = _snapshot(task.denoiser)
    trainer = _trainer(tmp_path, steps=5)
    with pytest.raises(NonFiniteError, match=r"Non-finite reward at step 1: 2 of 2 values are NaN or inf\. Training"):
        trainer.fit(task, datamodule=_data(prompts_jsonl))

    checkpoint = torch.load(Path(trainer.log_dir) / "checkpoints" / "last-good.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    saved = {k.removeprefix("denoiser."): v for k, v in checkpoint["state_dict"].items()}
    assert _unchanged(task.denoiser, saved)  # the NaN step was not applied...
    assert not _unchanged(task.denoiser, start)  # ...but the good one before it was
    assert (Path(trainer.log_dir) / "rl_curves.png").is_file()


def test_collapse_warning_fires_once_per_collapse():
    task = GeneratorRLTask()
    healthy, flat = torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleCollapseWarning)
        assert task.check_collapse(healthy) > 0.1
    with pytest.warns(SampleCollapseWarning, match="collapsed to near-constant images"):
        assert task.check_collapse(flat) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleCollapseWarning)
        task.check_collapse(flat)  # still collapsed: no new warning
        task.check_collapse(healthy)
    with pytest.warns(SampleCollapseWarning):
        task.check_collapse(flat)


def test_constant_samples_trigger_the_collapse_warning_in_training(tmp_path: Path, prompts_jsonl: str):
    task = GeneratorRLTask(**FAST)
    task.configure_model()
    assert task.generator is not None
    conv_out = task.generator.vae.decoder.conv_out  # a decoder that outputs 0: every image is flat grey
    torch.nn.init.zeros_(conv_out.weight)
    torch.nn.init.zeros_(conv_out.bias)
    with pytest.warns(SampleCollapseWarning):
        _trainer(tmp_path, steps=1).fit(task, datamodule=_data(prompts_jsonl))


# --------------------------------------------------------------------------------------------- diagnostics


def test_oracle_evaluation_logs_per_tag_scores(tmp_path: Path, prompts_jsonl: str):
    task = GeneratorRLTask(num_inference_steps=4, eval_every=1, eval_samples_per_prompt=2)
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(task, datamodule=_data(prompts_jsonl, val="shapes:test-id", val_per_tag=1))

    assert task.history["eval"]["step"] == [0.0, 1.0, 2.0]  # before training, then every step
    metrics = task.last_eval
    per_tag = [metrics[f"oracle/{tag}"] for tag in TAGS]
    assert all(0.0 <= v <= 1.0 for v in per_tag)
    assert metrics["oracle/geneval"] == pytest.approx(sum(per_tag) / len(per_tag))
    for part in ("colors", "count", "shape", "position", "mean"):
        assert 0.0 <= metrics[f"oracle/parts/{part}"] <= 1.0
    assert 0.0 <= metrics["oracle/reward"] <= 1.0 and metrics["oracle/diversity"] > 0
    assert metrics["hacking/flag"] == 0.0
    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("oracle/geneval")]
    assert [int(r["step"]) for r in logged] == [0, 1, 2]
    assert all(r[f"oracle/{tag}"] != "" for r in logged for tag in TAGS)
    assert any(r.get("train/reward_window_std") for r in rows)


def test_a_group_normalised_reward_is_tracked_by_its_raw_scores(tmp_path: Path, prompts_jsonl: str):
    """The reward variance and the hacking check follow a combined reward's raw scores (``Reward.monitored``): its
    sum, z-scored within each prompt's group, has mean 0 whatever the images, so they could never see a rise."""
    combined = {"kind": "combined", "components": [{"reward": "shapes-color", "normalize": "zscore"}]}
    task = GeneratorRLTask(
        algorithm="nft", nft={"group_size": 2}, num_inference_steps=4, eval_every=1, eval_samples_per_prompt=2,
        reward=combined,
    )  # fmt: skip
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(task, datamodule=_data(prompts_jsonl, val="shapes:test-id", val_per_tag=1))
    assert task.history["train"]["reward_mean"][0] > 0.01  # the colour scores, not their z-scores
    assert all(value > 0.01 for value in task.history["eval"]["reward"])


def test_reward_rising_while_the_oracle_stalls_is_flagged():
    task = GeneratorRLTask(eval_every=10)  # hacking window: 50 steps
    for step, value in [(0, 0.2), (10, 0.3), (20, 0.4)]:  # both rise: fine
        task.evaluation.check_hacking(
            {"oracle/reward": value, "oracle/geneval": 0.0, "oracle/parts/mean": value}, step=step
        )
    with pytest.warns(RewardHackingWarning, match="Reward hacking suspected at step 30"):
        # The reward goes on rising, the oracle drops: its fitted trend over the window turns negative.
        metrics = task.evaluation.check_hacking(
            {"oracle/reward": 0.5, "oracle/geneval": 0.0, "oracle/parts/mean": 0.1}, step=30
        )
    assert metrics["hacking/flag"] == 1.0 and metrics["hacking/reward_gain"] == pytest.approx(0.5)
    assert task.history["eval"]["hacking"] == [0.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------------------------- rewards and data


def test_rewards_build_from_names_mappings_and_callables():
    assert isinstance(build_reward("shapes-color"), ShapesColorReward)
    assert build_reward({"kind": "shapes-color", "sigma": 0.1}).sigma == 0.1  # type: ignore[attr-defined]
    assert isinstance(build_reward(lambda images, prompts: images.mean((1, 2, 3))), CallableReward)
    imported = build_reward({"kind": "rewarddance.shapes.rewards:ShapesColorReward", "coverage": 0.1})
    assert isinstance(imported, ShapesColorReward) and imported.coverage == 0.1
    with pytest.raises(ValueError, match="Unknown reward"):
        build_reward("no-such-reward")
    with pytest.raises(FileNotFoundError, match="No reward model at"):
        build_reward({"kind": "reward_model", "path": "does/not/exist"}).setup()


def test_toy_colour_reward_prefers_the_named_colour_and_has_gradients():
    reward = ShapesColorReward()
    red, blue = torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    red[:, 0], red[:, 1:] = 215 / 255, 35 / 255
    blue[:, 2], blue[:, :2] = 215 / 255, torch.tensor([35 / 255, 85 / 255]).view(2, 1, 1)
    images = torch.cat([red, blue]).requires_grad_(True)
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    scores = reward(images, ["a red circle"] * 2, [meta, meta])
    assert scores[0] > 0.99 and scores[1] < 0.01
    grey = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    reward(grey, ["a red circle"], [meta]).sum().backward()
    assert grey.grad is not None and grey.grad.abs().sum() > 0
    video = torch.rand(2, 3, 3, 8, 8)  # [B, T, 3, H, W]
    assert reward(video, ["a circle"] * 2, [{"tag": "single_object", "include": [{"class": "circle"}]}] * 2).shape == (
        2,
    )


def test_oracle_reward_is_the_oracles_verdict_and_refl_refuses_it(tmp_path: Path, prompts_jsonl: str):
    import numpy as np

    from rewarddance.shapes import evaluate_parts, render, sample_prompt, sample_scene, sample_violating_scene

    rng = np.random.default_rng(0)
    metadata = [sample_prompt(tag, rng) for tag in ("counting", "position", "color_attr")]
    scenes = [sample_scene(m, rng) for m in metadata] + [sample_violating_scene(m, rng)[0] for m in metadata]
    pixels = [np.array(render(scene, rng)) for scene in scenes]
    images = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in pixels])
    metadata = metadata * 2
    for score in ("overall", "mean"):
        rewards = build_reward({"kind": "shapes-oracle", "score": score})(images, [""] * 6, metadata)
        expected = torch.tensor([evaluate_parts(p, m)[score] for p, m in zip(pixels, metadata)])
        torch.testing.assert_close(rewards, expected)
    overall = ShapesOracleReward("overall")(images, [""] * 6, metadata)
    assert overall.tolist() == [1, 1, 1, 0, 0, 0]  # the matching scenes, then their violations
    with pytest.raises(ValueError, match="overall"):
        ShapesOracleReward("median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not differentiable"):
        GeneratorRLTask(reward="shapes-oracle", **FAST).configure_model()
    # GRPO reads values only: the oracle drives it through the prompts' metadata.
    task = GeneratorRLTask(reward="shapes-oracle", algorithm="grpo", grpo=GRPOSettings(group_size=2), **FAST)
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(task, datamodule=_data(prompts_jsonl))
    assert 0 <= float(trainer.callback_metrics["train/reward"]) <= 1
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_prompt_sources_give_prompts_with_their_metadata(prompts_jsonl: str):
    from_jsonl = load_prompts(prompts_jsonl)
    assert [i["metadata"]["tag"] for i in from_jsonl] == ["colors", "counting"]
    generated = load_prompts("shapes:test-id", per_tag=2)
    assert len(generated) == 2 * len(TAGS) and all(i["prompt"] == i["metadata"]["prompt"] for i in generated)
    video = load_prompts("shapes-video:train", per_tag=3)
    assert {i["metadata"]["tag"] for i in video} == {"motion", "motion_two"}
    assert all("motion" in entry for i in video for entry in i["metadata"]["include"])
    module = PromptDataModule(train=str(ROOT / "data" / "shapes" / "val"), val="shapes:test-id", batch_size=3)
    batch = next(iter(module.train_dataloader()))
    assert len(batch) == 3 and all(set(i) == {"prompt", "metadata"} and i["metadata"]["include"] for i in batch)
    assert all(i["prompt"] == i["metadata"]["prompt"] for i in batch)
    val = module.val_prompts()  # up to val_per_tag = 4 distinct prompts per tag (single_object has only 3)
    assert {i["metadata"]["tag"] for i in val} == set(TAGS) and len(val) == 23


# --------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("config", ["shapes_refl.yaml", "shapes_grpo.yaml", "video_grpo_tiny.yaml"])
def test_cli_fit_runs_and_writes_the_plot(tmp_path: Path, config: str):
    cli = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "rl" / config),
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.init_args.reward=shapes-color",  # a toy reward: no best-of-16 reference sampling in a test
            "--model.init_args.height=32",
            "--model.init_args.width=32",
            "--model.init_args.num_inference_steps=4",
            "--model.init_args.refl.t_min=2",
            "--model.init_args.refl.t_max=3",
            "--model.init_args.refl.anchor_weight=0",  # the anchor trains on references, which the toy has none of
            "--model.init_args.grpo.train_steps=1",
            "--data.init_args.val_per_tag=1",
            "--data.init_args.batch_size=2",
        ]
    )
    task = cli.model
    assert isinstance(task, GeneratorRLTask) and task.trainer.global_step == 2
    assert task.plot_path is not None and task.plot_path.is_file() and task.plot_path.name == "rl_curves.png"
    assert task.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert task.history["eval"]["step"] == [0.0, 2.0]
