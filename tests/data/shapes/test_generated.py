"""Generated preference pairs: a generator's samples judged by the oracle, paired correct vs incorrect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rewarddance.cli import main
from rewarddance.data.stream import ShardStream
from rewarddance.shapes import geneval_prompts, judge_image, render, sample_scene, sample_violating_scene
from rewarddance.shapes.generated import GENERATED_SOURCE, pair_generated, point_generated

ROOT = Path(__file__).parents[3]


def test_pairs_put_a_correct_sample_against_an_incorrect_one_of_the_same_prompt() -> None:
    rng = np.random.default_rng(0)
    meta = next(m for m in geneval_prompts(5, split="train") if m["tag"] == "counting")
    right = [render(sample_scene(meta, rng), rng) for _ in range(2)]
    wrong = [render(sample_violating_scene(meta, rng)[0], rng) for _ in range(3)]
    images = [wrong[0], right[0], wrong[1], right[1], wrong[2]]
    samples, verdicts = pair_generated(images, meta, rng, max_pairs=4, key="k", model="gen")

    assert [v.correct for v in verdicts] == [False, True, False, True, False]
    assert len(samples) == 4 and len({s.key for s in samples}) == 4  # 4 of the 6 (correct, incorrect) combinations
    combos = set()
    for s in samples:
        chosen, rejected = (s.first, s.second) if s.label == "first" else (s.second, s.first)
        assert judge_image(chosen[0], meta).correct and not judge_image(rejected[0], meta).correct
        assert s.soft_label == (1.0 if s.label == "first" else 0.0)
        assert s.prompt == meta["prompt"] and s.category == "counting" and s.source == GENERATED_SOURCE
        assert "matches the prompt" in s.rationale
        combos.add((id(chosen[0]), id(rejected[0])))
    assert len(combos) == 4  # no combination twice
    assert {s.label for s in samples} == {"first", "second"}  # both orders occur

    all_right, verdicts = pair_generated(right, meta, rng, max_pairs=4, key="r", model="gen")
    assert all_right == [] and [v.correct for v in verdicts] == [True, True]  # nothing to prefer


def test_point_samples_carry_the_oracle_verdict_of_each_generated_image() -> None:
    rng = np.random.default_rng(1)
    meta = next(m for m in geneval_prompts(5, split="train") if m["tag"] == "two_object")
    right = render(sample_scene(meta, rng), rng)
    wrong = render(sample_violating_scene(meta, rng)[0], rng)
    _, verdicts = pair_generated([right, wrong], meta, rng, max_pairs=1, key="k", model="gen")
    points = [
        point_generated(im, v, meta, key=f"p{j}", model="gen")
        for j, (im, v) in enumerate(zip([right, wrong], verdicts))
    ]
    assert [p.answer for p in points] == ["yes", "no"]
    assert points[0].rationale == "The image matches the prompt."
    assert points[1].rationale.startswith("The image ") and "matches the prompt" not in points[1].rationale
    assert all(
        p.kind == "point" and p.image == [im] and p.category == "two_object" for p, im in zip(points, [right, wrong])
    )
    assert points[1].meta["parts"]["overall"] == 0.0


def test_data_generated_command_writes_readable_shards(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "generated"
    main(
        ["data", "generated", "--generator", str(ROOT / "data/generators/shapes-t2i"), "--out", str(out),
         "--per_tag", "2", "--samples_per_prompt", "4", "--steps", "4", "--max_pairs", "3", "--points", "true"]
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    samples = [s for batch in ShardStream(str(out), batch_size=4) for s in batch]
    assert manifest["total"] == len(samples) > 0  # a 4-step sampler gets some prompts right and some wrong
    assert manifest["generator"].endswith("shapes-t2i") and manifest["split"] == "train"
    pairs = [s for s in samples if s.kind == "pair"]
    points = [s for s in samples if s.kind == "point"]
    assert len(points) == 2 * 6 * 4 == manifest["counts"]["kind=point"]  # 2 prompts of each of the 6 tags, 4 samples
    for s in pairs:
        assert s.label in ("first", "second") and s.first[0].size == (64, 64)
        assert s.meta["pair_type"] == "generated"
    for s in points:  # every judged image once, answered as the oracle judged it
        assert s.answer in ("yes", "no") and s.image[0].size == (64, 64)
        assert (s.answer == "yes") == (s.meta["parts"]["overall"] == 1.0)
