"""Oracle score against inference compute: plain sampling, best-of-N and search over paths, with confidence intervals.

    python benchmarks/inference_scaling.py [--generator data/generators/shapes-t2i] [--per-tag 12]

(12 per tag gives 54 prompts: some tags of the held-out split have fewer; the header prints the counts per tag,
each row its wall time.)

Each row samples the held-out ``shapes:test-id`` prompts (same seeds in every row) and judges one image per
prompt with the pixel oracle, GenEval-style. Compute is denoiser evaluations per image (NFE: sample-steps,
doubled by classifier-free guidance, plus search's clean-image predictions for the verifier). The verifier is
the bundled pairwise reward model in a both-orders round robin (``rewarddance.inference.Verifier``); its
judgments per image are printed too, since they are compute as well.

Every row's gain over plain sampling comes with a 95% confidence interval: a paired bootstrap over prompts
(resampled within each tag, so each tag keeps its weight in the GenEval score; the same prompts for both rows of a
pair), which is what a new draw of held-out prompts would move. A gain whose interval contains 0 is within noise.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from rewarddance.callbacks.evaluation import geneval_summary
from rewarddance.commands.generate import Sampling, sample_prompts
from rewarddance.data.prompts import load_prompts
from rewarddance.models.pixels import to_pil_images
from rewarddance.shapes.oracle import judge_image


def judge(generator: str, items: list[dict[str, Any]], sampling: Sampling) -> dict:
    """Sample one image per prompt, judge it: per prompt verdict and parts mean, NFE and judgments per image."""
    results, judgments = sample_prompts(generator, items, 1, sampling)
    correct, parts, nfe = [], [], 0
    for item, result in results:
        (image,) = to_pil_images(result.images)
        verdict = judge_image(image, item["metadata"])
        correct.append(float(verdict.correct))
        parts.append(verdict.parts()["mean"])
        nfe += result.nfe
    return {"correct": np.array(correct), "parts": np.array(parts), "nfe": nfe / len(items), "judgments": judgments}


def scores(row: dict, tags: np.ndarray, index: np.ndarray | slice = slice(None)) -> tuple[float, float]:
    """GenEval overall (mean over tags of per-tag accuracy) and the parts mean over images, on ``index``."""
    return geneval_summary(list(tags[index]), list(row["correct"][index]))["overall"], float(row["parts"][index].mean())


def paired_intervals(row: dict, plain: dict, tags: np.ndarray, draws: int, seed: int = 0) -> np.ndarray:
    """95% bootstrap intervals of (geneval, parts mean) gains of ``row`` over ``plain``: ``[[lo, hi], [lo, hi]]``."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(tags == tag) for tag in np.unique(tags)]
    gains = []
    for _ in range(draws):
        index = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        gains.append(np.subtract(scores(row, tags, index), scores(plain, tags, index)))
    return np.percentile(np.array(gains), [2.5, 97.5], axis=0).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="data/generators/shapes-t2i")
    parser.add_argument("--reward", default="data/reward_models/shapes-rm-pairwise")
    parser.add_argument("--per-tag", type=int, default=12, help="held-out prompts per GenEval tag")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    items = [
        i for i in load_prompts("shapes:test-id", per_tag=args.per_tag) if (i.get("metadata") or {}).get("include")
    ]
    tags = np.array([i["metadata"]["tag"] for i in items])
    if min(np.unique(tags, return_counts=True)[1]) < 2:
        parser.error("--per-tag must give at least 2 prompts per tag: one prompt per tag leaves nothing to resample")
    half, late = args.steps // 2, (3 * args.steps) // 4
    runs = [
        ("plain", {"mode": "plain"}),
        ("best-of-4", {"mode": "best_of_n", "n": 4}),
        ("best-of-8", {"mode": "best_of_n", "n": 8}),
        ("search 4 paths x 2, 2 rounds", {"mode": "search", "n": 4, "branch_steps": [half, late]}),
    ]
    per_tag = ", ".join(f"{tag} {count}" for tag, count in zip(*np.unique(tags, return_counts=True)))
    rows = []
    for name, extra in runs:
        started = time.perf_counter()
        reward = args.reward if extra["mode"] != "plain" else None
        sampling = Sampling(reward=reward, steps=args.steps, guidance_scale=args.guidance, size=64, seed=777, **extra)
        rows.append((name, judge(args.generator, items, sampling), time.perf_counter() - started))
    print(
        f"\n{args.generator}: {len(items)} held-out prompts (shapes:test-id, {per_tag}), 1 image each, "
        f"{args.steps} steps, guidance {args.guidance}; verifier {args.reward}; gains over plain with 95% paired "
        f"bootstrap intervals over prompts ({args.draws} draws)"
    )
    print(
        f"{'method':<30} {'NFE/image':>9} {'RM judg.':>8} {'geneval':>8} {'gain [95% CI]':>23} "
        f"{'parts mean':>10} {'gain [95% CI]':>23} {'wall s':>7}"
    )
    plain = rows[0][1]
    for name, row, wall in rows:
        geneval, parts = scores(row, tags)
        cells = ["", ""]
        if row is not plain:
            gains = np.subtract((geneval, parts), scores(plain, tags))
            for k, ((lo, hi), gain) in enumerate(zip(paired_intervals(row, plain, tags, args.draws), gains)):
                noise = "" if lo > 0 or hi < 0 else "~"  # ~: the interval contains 0
                cells[k] = f"{gain:+.3f} [{lo:+.3f}, {hi:+.3f}]{noise}"
        print(
            f"{name:<30} {row['nfe']:>9.0f} {row['judgments'] / len(items):>8.0f} {geneval:>8.3f} {cells[0]:>23} "
            f"{parts:>10.3f} {cells[1]:>23} {wall:>7.0f}"
        )
    print("~: the interval contains 0 (the gain is within noise at this number of prompts)")


if __name__ == "__main__":
    main()
