"""Reasons-first reward models wherever no gradient is needed (GRPO, best-of-N, search over paths, ``score``), with
their rationales returned beside the rewards; ReFL refuses them and says why. Tiny real models built here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from rewarddance.cli import main
from rewarddance.data.prompts import PromptDataModule
from rewarddance.errors import UsageError
from rewarddance.inference import Verifier, generate
from rewarddance.judge.reward import RewardModelReward
from rewarddance.judge.reward_model import RewardModel
from rewarddance.models.generators import load_generator
from rewarddance.models.pixels import to_pil_images
from rewarddance.rl.settings import GRPOSettings
from rewarddance.shapes import geneval_prompts, write_geneval_jsonl
from rewarddance.shapes.build import build_split
from rewarddance.tasks import GenerativeRewardTask, GeneratorRLTask
from rewarddance.tasks.generator_pretrain import shapes_scheduler

PROMPT = "a red circle"
META = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": PROMPT}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, str]:
    """Untrained tiny reasons-first reward models (pointwise and pairwise), exported."""
    root = tmp_path_factory.mktemp("reasons-first")
    out = {}
    for paradigm in ("pointwise", "pairwise"):
        task = GenerativeRewardTask(paradigm=paradigm, rationale_format="reasons_first", max_new_tokens=3)
        task.configure_model()
        out[paradigm] = str(task.export_to(root / paradigm))
    return out


def _images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_rl_reward_reads_like_score_keeps_rationales_and_refuses_gradients(exports):
    reward = RewardModelReward(exports["pointwise"])
    # Known before the weights load (read from the export's record), so a config fails fast.
    assert reward.reasons_first and not reward.differentiable and "reasons-first" in repr(reward)
    reward.setup()
    images = _images(2)
    rewards = reward(images, [PROMPT, "two squares"], [META, {}])
    model = RewardModel.from_pretrained(exports["pointwise"])
    torch.testing.assert_close(rewards, model.score([PROMPT, "two squares"], to_pil_images(images)))
    assert reward.last_rationales == model.last_rationales and len(reward.last_rationales) == 2
    with pytest.raises(UsageError, match="no gradient"):
        reward(images.clone().requires_grad_(), [PROMPT, PROMPT], [META, META])


def test_pairwise_rl_reward_chooses_references_and_explains_each_comparison(exports):
    def sampler(prompt: str, n: int, seed: int) -> torch.Tensor:
        return _images(n, seed)

    reward = RewardModelReward(exports["pairwise"], best_of_n=3, top_k=2)
    reward.setup(sampler)
    reward.prepare([PROMPT], [META])
    rewards = reward(_images(2, 9), [PROMPT, PROMPT], [META, META])
    assert rewards.shape == (2,) and ((rewards > 0) & (rewards < 1)).all()
    assert len(reward.last_rationales) == 2
    assert all(r.splitlines()[0].startswith("reference 1:") and "\nreference 2:" in r for r in reward.last_rationales)


def test_grpo_trains_on_a_reasons_first_reward_and_refl_refuses_it(exports, tmp_path: Path):
    spec = {"kind": "reward_model", "path": exports["pointwise"]}
    fast = {"num_inference_steps": 4, "eval_every": None}
    with pytest.raises(UsageError, match="not differentiable") as refused:
        GeneratorRLTask(reward=spec, **fast).configure_model()
    assert "reasons-first" in str(refused.value) and "no gradient" in str(refused.value)
    prompts = write_geneval_jsonl(tmp_path / "train.jsonl", geneval_prompts(1, split="train", tags=("colors",)))
    task = GeneratorRLTask(reward=spec, algorithm="grpo", grpo=GRPOSettings(group_size=2, train_steps=1), **fast)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name=""), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(task, datamodule=PromptDataModule(train=str(prompts), batch_size=1, shuffle=False))
    assert 0 < float(trainer.callback_metrics["train/reward"]) < 1
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert len(task.reward.last_rationales) == 2  # one per sample of the group


@pytest.fixture(scope="module")
def generator():
    generator = load_generator("tiny-sd15", width=32, latent_channels=4, vae_levels=3, image_size=64)
    generator.pipeline.scheduler = shapes_scheduler()  # a first-order scheduler: search re-noises with it
    return generator


def test_best_of_n_and_search_return_the_rationale_of_each_image(exports, generator):
    verifier = Verifier(exports["pointwise"])
    kwargs = {"num_inference_steps": 4, "guidance_scale": 2.0, "seed": 1, "verifier": verifier}
    best = generate(generator, PROMPT, META, mode="best_of_n", n=3, num_images=2, **kwargs)
    searched = generate(
        generator, PROMPT, META, mode="search", n=2, num_images=2, branch_steps=[2], renoise_steps=1, **kwargs
    )
    for result in (best, searched):
        assert result.rationales is not None and len(result.rationales) == 2
        # Judged again, the returned images get the scores and rationales the generation reported.
        torch.testing.assert_close(verifier(result.images, PROMPT, META), result.scores, atol=1e-4, rtol=1e-4)
        assert verifier.last_rationales == result.rationales
    pairwise = Verifier(exports["pairwise"])
    scores = pairwise(best.images, PROMPT, META)
    assert scores.shape == (2,) and [r.split(":")[0] for r in pairwise.last_rationales] == [
        "vs candidate 1",
        "vs candidate 0",
    ]


def test_score_writes_the_rationale_beside_the_reward(exports, tmp_path, capsys):
    shards = tmp_path / "shards"
    build_split(shards, "test-id", samples=4, seed=0, progress=False)
    out = tmp_path / "scores.jsonl"
    main(["score", "--model", exports["pointwise"], "--input", str(shards), "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and all(isinstance(r["rationale"], str) for r in records)
    pairs = [r for r in records if "reward_first" in r]
    assert pairs and all(isinstance(r["rationale_first"], str) for r in pairs)
    # The rationale is the one RewardModel.score generated for that item.
    model = RewardModel.from_pretrained(exports["pointwise"])
    from rewarddance.judge.examples import iter_samples

    first = next(iter_samples(str(shards), 1))
    image = (first.second or first.image)[0]
    reward = model.score([first.prompt], [image], criteria=first.criteria)
    assert records[0]["rationale"] == model.last_rationales[0]
    assert records[0]["reward"] == pytest.approx(reward.item(), abs=1e-5)
