"""A trained video reward model as the reward of image-to-video RL: each prompt's condition image (its metadata's
``condition_image``) reaches the model, before the clips, in GRPO's rewards (through the real CLI and the shipped
config), in the differentiable (ReFL) path and in the pairwise model's best-of-N references; the export records
whether training showed condition images, and scoring refuses the other case by name. Tiny reward models are
trained here (one step each) on ``data shapes --video true --condition true`` clips."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor

from rewarddance.cli import main
from rewarddance.data.prompts import load_prompts
from rewarddance.errors import UsageError
from rewarddance.judge.reward import RewardModelReward
from rewarddance.judge.reward_model import EXPORT_CONFIG, RewardModel
from rewarddance.models.adapters import load_condition_image
from rewarddance.models.pixels import to_pil_images
from rewarddance.tasks import GenerativeRewardTask, GeneratorRLTask
from tests.tasks.test_video_reward_training import fit_video_reward, shapes_clips

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "rl" / "video_i2v_grpo_rm_tiny.yaml"
TOL = {"atol": 1e-5, "rtol": 1e-4}  # the differentiable path against score() (tests/models/test_pixels.py)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny video reward models, one training step each: pairwise and pointwise on clips with a condition image,
    pointwise on the same kind of clips without."""
    root = tmp_path_factory.mktemp("i2v-reward-models")
    conditioned = shapes_clips(root / "conditioned")
    plain = shapes_clips(root / "plain", condition=False)
    out = {}
    for name, data, paradigm in (
        ("pairwise", conditioned, "pairwise"),
        ("pointwise", conditioned, "pointwise"),
        ("plain", plain, "pointwise"),
    ):
        fit_video_reward(data, root / f"logs-{name}", 1, paradigm=paradigm, export_dir=root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def prompts() -> list[dict[str, Any]]:
    return load_prompts("shapes-i2v:train", per_tag=1)  # two prompts (motion, motion_two), each with its frame


def _clips(n: int, seed: int, frames: int = 3) -> Tensor:
    return torch.rand(n, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _conditions(metadata: Sequence[Mapping[str, Any]]) -> list[Image.Image]:
    return [load_condition_image(m["condition_image"], "test") for m in metadata]


def _videos(clips: Tensor) -> list[list[Image.Image]]:
    return [to_pil_images(clip) for clip in clips]


def test_the_export_records_whether_training_showed_condition_images(exports: dict[str, Path]) -> None:
    for name, expected in (("pairwise", "always"), ("pointwise", "always"), ("plain", "never")):
        assert json.loads((exports[name] / EXPORT_CONFIG).read_text())["conditions"] == expected
        assert RewardModel.from_pretrained(exports[name]).conditions == expected


def test_the_record_survives_a_resume() -> None:
    trained = GenerativeRewardTask(paradigm="pairwise")
    trained.trained_conditions = {True}
    checkpoint: dict[str, Any] = {}
    trained.on_save_checkpoint(checkpoint)
    resumed = GenerativeRewardTask(paradigm="pairwise")
    resumed.on_load_checkpoint(checkpoint)  # no state_dict: the record only
    assert resumed.trained_conditions == {True}


def test_pointwise_reward_shows_the_condition_and_keeps_gradients(exports: dict[str, Path], prompts) -> None:
    reward = RewardModelReward(str(exports["pointwise"]))
    reward.setup()
    texts, metadata = [p["prompt"] for p in prompts], [p["metadata"] for p in prompts]
    clips = _clips(2, 0).requires_grad_()
    rewards = reward(clips, texts, metadata)  # the differentiable path ReFL backpropagates
    rewards.sum().backward()
    assert clips.grad is not None and clips.grad.abs().sum() > 0
    model = RewardModel.from_pretrained(exports["pointwise"])
    conditions = _conditions(metadata)
    torch.testing.assert_close(rewards.detach(), model.score(texts, _videos(clips), conditions=conditions), **TOL)
    # Another condition image, everything else fixed: another reward (each prompt gets the other's frame).
    swapped = [{**m, "condition_image": o["condition_image"]} for m, o in zip(metadata, metadata[::-1])]
    with torch.no_grad():
        other = reward(clips, texts, swapped)
    assert (other - rewards.detach()).abs().max() > 1e-4, (other, rewards)
    torch.testing.assert_close(other, model.score(texts, _videos(clips), conditions=conditions[::-1]), **TOL)


def test_a_model_refuses_the_conditions_it_was_not_trained_with(exports: dict[str, Path], prompts) -> None:
    texts, metadata = [p["prompt"] for p in prompts], [p["metadata"] for p in prompts]
    clips = _clips(2, 1)
    conditioned = RewardModelReward(str(exports["pointwise"]))
    conditioned.setup()
    without = [{k: v for k, v in m.items() if k != "condition_image"} for m in metadata]
    with pytest.raises(UsageError, match="conditions: always") as refused:
        conditioned(clips, texts, [metadata[0], without[1]])
    assert repr(texts[1]) in str(refused.value) and "'condition_image'" in str(refused.value)
    with pytest.raises(UsageError, match="conditions: always"):
        conditioned.model.score(texts, _videos(clips))
    plain = RewardModelReward(str(exports["plain"]))
    plain.setup()
    with pytest.raises(UsageError, match="conditions: never") as refused:
        plain(clips, texts, metadata)
    assert repr(texts[0]) in str(refused.value)
    assert torch.isfinite(plain(clips, texts, without)).all()  # as trained: no condition image


def test_best_of_n_references_are_judged_with_the_condition(exports: dict[str, Path], prompts) -> None:
    candidates = _clips(3, 2)
    reward = RewardModelReward(str(exports["pairwise"]), best_of_n=3, top_k=1, both_orders=False)
    reward.setup(lambda prompt, n, seed: candidates[:n])
    text, metadata = prompts[0]["prompt"], prompts[0]["metadata"]
    condition, other = _conditions([metadata, prompts[1]["metadata"]])
    chosen = reward.references(text, condition=condition)
    # One order per pair: wins[j, 0] = P(j better than 0) = the shared-prefix best-of-N score with 0 as reference,
    # the condition image in the prefix; equal to scoring each pair from scratch.
    model = RewardModel.from_pretrained(exports["pairwise"])
    videos = _videos(candidates)
    shared = model.score_candidates(text, videos[1:], videos[0], condition=condition)
    torch.testing.assert_close(chosen.wins[1:, 0], shared, **TOL)
    scratch = model.score([text] * 2, videos[1:], [videos[0]] * 2, conditions=[condition] * 2)
    torch.testing.assert_close(shared, scratch, **TOL)
    with pytest.raises(UsageError, match="conditions: always"):
        model.score_candidates(text, videos[1:], videos[0])
    # Another condition image: another cache entry, other win probabilities; the prompt alone finds the last one.
    again = reward.references(text, condition=other)
    assert len(reward.cache) == 2 and (again.wins - chosen.wins).abs().max() > 1e-4
    assert reward.references(text) is again


class RecordingReward(RewardModelReward):
    """The reward model reward, keeping what each call judged and returned (to check it again from outside)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[Tensor, list[str], list[Mapping[str, Any]], Tensor]] = []

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> Tensor:
        rewards = super().__call__(images, prompts, metadata)
        self.calls.append((images.detach().cpu(), list(prompts), list(metadata), rewards.detach().cpu()))
        return rewards


REFL = ["--model.init_args.refl.t_min=2", "--model.init_args.refl.t_max=3", "--model.init_args.refl.anchor_weight=0.5"]


@pytest.mark.parametrize("algorithm", ["grpo", "refl"])
def test_i2v_rl_runs_on_a_pairwise_reward_model_that_sees_the_condition(
    exports: dict[str, Path], tmp_path: Path, algorithm: str
) -> None:
    """Two steps of the shipped config (ReFL with the anchor loss on the references too)."""
    path = exports["pairwise"]
    spec = {"kind": f"{__name__}.RecordingReward", "path": str(path), "best_of_n": 2, "top_k": 1}
    cli = main(
        [
            "fit",
            "--config",
            str(CONFIG),
            f"--model.init_args.reward={json.dumps(spec)}",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.init_args.grpo.train_steps=1",
            "--model.init_args.export=false",
            "--model.init_args.eval_every=0",
            "--data.init_args.per_tag=1",
            f"--model.init_args.algorithm={algorithm}",
            *(REFL if algorithm == "refl" else []),
        ]
    )
    task = cli.model
    assert isinstance(task, GeneratorRLTask) and task.trainer.global_step == 2
    reward = task.reward
    assert isinstance(reward, RecordingReward) and len(reward.calls) == 2
    model = RewardModel.from_pretrained(path)
    for clips, texts, metadata, rewards in reward.calls:  # GRPO: each rollout's; ReFL: each step's
        conditions = _conditions(metadata)
        # Each prompt's references were chosen with its condition image (cached per prompt and image).
        references = [reward.cache.get(reward.reference_key(t, c)) for t, c in zip(texts, conditions)]
        assert all(r is not None for r in references)
        refs = [to_pil_images(r.references[0].float()) for r in references if r is not None]
        expected = model.score(texts, _videos(clips), refs, conditions=conditions)
        torch.testing.assert_close(rewards, expected, **TOL)
        blank = [Image.new("RGB", c.size) for c in conditions]
        assert (model.score(texts, _videos(clips), refs, conditions=blank) - rewards).abs().max() > 1e-4
