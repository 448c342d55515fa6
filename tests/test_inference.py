"""Inference-time scaling (plain, best-of-N, search over paths), the pairwise round-robin verifier, and the
``generate`` / ``evaluate`` commands, on a tiny SD-1.5-style pipeline with the shapes generator's scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewarddance.cli import main
from rewarddance.inference import Verifier, generate
from rewarddance.judge.reward_model import RewardModel
from rewarddance.models.generators import load_generator, sample
from rewarddance.rl.reference import pairwise_win_matrix, win_counts
from rewarddance.tasks import GenerativeRewardTask
from rewarddance.tasks.generator_pretrain import shapes_scheduler

PROMPT = "a red circle"
META = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": PROMPT}
SIZE = {"width": 32, "latent_channels": 4, "vae_levels": 3, "image_size": 64}
STEPS = 4


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved tiny SD-1.5-style pipeline with the zero-terminal-SNR DDIM scheduler of the shapes generator."""
    generator = load_generator("tiny-sd15", **SIZE)
    generator.pipeline.scheduler = shapes_scheduler()
    folder = tmp_path_factory.mktemp("generator") / "sd15"
    generator.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pairwise_rm(tmp_path_factory: pytest.TempPathFactory) -> str:
    task = GenerativeRewardTask(paradigm="pairwise")
    task.configure_model()
    return str(task.export_to(tmp_path_factory.mktemp("rm") / "export"))


def test_plain_generation_is_the_pipelines_sampling(generator_dir: str):
    generator = load_generator(generator_dir)
    result = generate(
        generator, PROMPT, mode="plain", num_images=3, num_inference_steps=STEPS, guidance_scale=2.0, seed=5
    )
    expected = sample(
        generator, [PROMPT] * 3, height=64, width=64, num_inference_steps=STEPS, guidance_scale=2.0, seed=5
    )
    torch.testing.assert_close(result.images, expected, atol=1e-5, rtol=0)
    assert result.scores is None and result.nfe == 3 * STEPS * 2  # classifier-free guidance: two passes per step


def test_best_of_n_keeps_the_top_scored_plain_samples(generator_dir: str):
    generator = load_generator(generator_dir)
    verifier = Verifier("shapes-color")
    kwargs = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "seed": 1}
    pool = generate(generator, PROMPT, META, mode="plain", num_images=6, **kwargs)
    scores = verifier(pool.images, PROMPT, META)
    best = generate(generator, PROMPT, META, mode="best_of_n", n=6, num_images=2, verifier=verifier, **kwargs)
    order = torch.sort(scores, descending=True, stable=True).indices[:2]
    torch.testing.assert_close(best.images, pool.images[order])
    torch.testing.assert_close(best.scores, scores[order])
    assert best.nfe == pool.nfe


def test_search_without_branching_is_best_of_n_and_branching_costs_more(generator_dir: str):
    generator = load_generator(generator_dir)
    verifier = Verifier("shapes-color")
    kwargs = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "seed": 2, "n": 3, "verifier": verifier}
    best = generate(generator, PROMPT, META, mode="best_of_n", **kwargs)
    flat = generate(generator, PROMPT, META, mode="search", branch_steps=[], **kwargs)
    torch.testing.assert_close(flat.images, best.images)
    assert flat.nfe == best.nfe
    searched = generate(
        generator, PROMPT, META, mode="search", branch_steps=[2], num_branches=2, renoise_steps=1, **kwargs
    )
    # 3 paths x 2 steps; then 3 parents + 6 re-noised copies run 2 (parents) / 3 (copies) steps; no mid-schedule
    # prediction since the only round ends at the last step. x2 for guidance.
    assert searched.nfe == 2 * (3 * 2 + 3 * 2 + 6 * 3)
    assert searched.images.shape == (1, 3, 64, 64) and searched.scores.shape == (1,)


def test_pairwise_verifier_is_a_both_orders_round_robin(pairwise_rm: str, generator_dir: str):
    images = generate(
        load_generator(generator_dir), PROMPT, mode="plain", num_images=4, num_inference_steps=STEPS
    ).images
    verifier = Verifier(pairwise_rm)
    assert verifier.pairwise
    scores = verifier(images, PROMPT)
    # The same tournament through the RL reference code and plain RewardModel.score (no shared prefix).
    model = RewardModel.from_pretrained(pairwise_rm)
    from rewarddance.models.pixels import to_pil_images

    def judge(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return model.score([PROMPT] * len(first), to_pil_images(second), to_pil_images(first))

    wins = pairwise_win_matrix(images, judge, both_orders=True)
    torch.testing.assert_close(scores, win_counts(wins, soft=True) / 3, atol=1e-4, rtol=0)
    assert float(scores.sum()) == pytest.approx(2.0, abs=1e-5)  # every pair splits one win: N / 2 in total
    assert verifier.judgments == 12  # 4 x 3 ordered pairs


def test_generate_needs_a_verifier_for_scaling_modes(generator_dir: str):
    with pytest.raises(ValueError, match="needs a verifier"):
        generate(load_generator(generator_dir), PROMPT, mode="best_of_n")


def test_generate_and_evaluate_commands(generator_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "images"
    main(["generate", "--generator", generator_dir, "--prompts", "shapes:test-id", "--per_tag", "1", "--limit", "2",
          "--mode", "best_of_n", "--n", "2", "--reward", "shapes-color", "--steps", str(STEPS), "--out", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all((out / r["file_name"]).is_file() for r in rows)
    assert all("verifier_score" in r and r["metadata"]["include"] for r in rows)
    assert "wrote 2 images for 2 prompts" in capsys.readouterr().out

    report_file = tmp_path / "report.json"
    cli = main(["evaluate", "--generator", generator_dir, "--per_tag", "1", "--samples_per_prompt", "1",
                "--steps", str(STEPS), "--out", str(report_file)])  # fmt: skip
    report = cli.result
    assert report["images"] == 6 and 0.0 <= report["geneval"] <= 1.0
    assert report["nfe_per_image"] == STEPS * 2
    assert json.loads(report_file.read_text())["geneval"] == report["geneval"]
    assert "[rewarddance] plain: geneval" in capsys.readouterr().out
