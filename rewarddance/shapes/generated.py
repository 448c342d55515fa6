"""Preference pairs of a generator's own samples, judged by the shapes oracle as the annotator.

Reward models that steer generators learn from judgments of *generated* images (ImageReward's and HPS's annotations,
RewardDance's preference data). The render-and-corrupt pairs of :mod:`.pairs` teach the task, but a generator's
outputs look different (soft edges, merged or half-formed objects, stray blobs), and a reward model that never saw
them ranks them poorly: the bundled one is 0.87 right on rendered test pairs and 0.54 on held-out pairs of the
shapes generator's samples (``benchmarks/reward_on_samples.py`` measures the ranking). This module samples a
generator on a split's prompts, judges every sample with the pixel oracle, and pairs a correct sample with an
incorrect one of the same prompt (order random), with the oracle's verdicts as the rationale: the same schema as the
rendered pairs, so the shards mix with them in any reward-model config. With ``points``, every judged sample is also
written as a pointwise sample ("does the image match the prompt?", the oracle's verdict as the answer): a prompt
whose samples are all wrong, which makes no pair, still teaches what is wrong with them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewarddance.data.schema import Sample
from rewarddance.data.writer import SampleWriter
from rewarddance.shapes.oracle import judge_image
from rewarddance.shapes.pairs import SOURCE
from rewarddance.shapes.prompts import TAGS, geneval_prompts
from rewarddance.shapes.rules import Judgement

GENERATED_SOURCE = f"{SOURCE}-generated"
"""``Sample.source`` of generated pairs (rendered pairs carry ``shapes``)."""

CRITERIA = "text-image alignment"
"""What the oracle judges, so the criteria of every generated pair and point."""


def pair_generated(
    images: Sequence[Any], meta: dict[str, Any], rng: np.random.Generator, *, max_pairs: int, key: str, model: str
) -> tuple[list[Sample], list[Judgement]]:
    """Judge one prompt's samples and pair correct with incorrect ones.

    Args:
        images: PIL images of one prompt.
        meta: The prompt's GenEval metadata.
        rng: Chooses the pairs and their order.
        max_pairs: Most pairs made from this prompt's samples (each (correct, incorrect) combination at most once).
        key: Key prefix of the samples.
        model: The generator's name, stored in ``Sample.models``.

    Returns:
        The pair samples and every image's judgement.
    """
    verdicts = [judge_image(image, meta) for image in images]
    good = [i for i, v in enumerate(verdicts) if v.correct]
    bad = [i for i, v in enumerate(verdicts) if not v.correct]
    combos = [(g, b) for g in good for b in bad]
    chosen = rng.permutation(len(combos))[:max_pairs] if combos else []
    samples = []
    for n, index in enumerate(chosen):
        g, b = combos[int(index)]
        good_first = bool(rng.random() < 0.5)
        first, second = (g, b) if good_first else (b, g)
        samples.append(
            Sample(
                key=f"{key}-{n}",
                kind="pair",
                prompt=meta["prompt"],
                first=[images[first]],
                second=[images[second]],
                label="first" if good_first else "second",
                soft_label=1.0 if good_first else 0.0,
                criteria=CRITERIA,
                rationale=f"{verdicts[first].sentence('Image 1')} {verdicts[second].sentence('Image 2')}",
                source=GENERATED_SOURCE,
                models=[model],
                category=meta["tag"],
                meta={
                    "geneval": meta,
                    "pair_type": "generated",
                    "parts": {"first": verdicts[first].parts(False), "second": verdicts[second].parts(False)},
                },
            )
        )
    return samples, verdicts


def point_generated(image: Any, verdict: Judgement, meta: dict[str, Any], *, key: str, model: str) -> Sample:
    """One judged sample as a pointwise sample: answer yes iff the oracle finds it correct, its finding as rationale."""
    return Sample(
        key=key,
        kind="point",
        prompt=meta["prompt"],
        image=[image],
        answer="yes" if verdict.correct else "no",
        criteria=CRITERIA,
        rationale=verdict.sentence("The image"),
        source=GENERATED_SOURCE,
        models=[model],
        category=meta["tag"],
        meta={"geneval": meta, "point_type": "generated", "parts": verdict.parts(False)},
    )


def build_generated_pairs(
    generator: str,
    out: str | Path,
    *,
    split: str = "train",
    per_tag: int = 50,
    samples_per_prompt: int = 4,
    rounds: int = 1,
    max_pairs: int = 2,
    tags: Sequence[str] = TAGS,
    points: bool = False,
    steps: int | None = None,
    guidance_scale: float | None = None,
    size: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    shard_size: int = 1000,
    compress: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``generator`` on a split's prompts, judge with the oracle, and write correct-vs-incorrect pairs.

    Args:
        generator: Generator name or folder (``data/generators/shapes-t2i``).
        out: Output folder (shards and manifest.json).
        split: Prompt split (``train`` for training data; ``test-id`` for a held-out evaluation set).
        per_tag: Distinct prompts per tag (tags with fewer distinct prompts give fewer).
        samples_per_prompt: Samples per prompt and round.
        rounds: Passes over the prompts, each with new seeds (more pairs from the same prompts).
        max_pairs: Pairs made per prompt and round.
        tags: GenEval tags to draw prompts from.
        points: Also write every judged sample as a pointwise sample (see the module's docstring).
        steps: Sampling steps; null: the generator folder's sampling defaults.
        guidance_scale: Guidance; null: the generator folder's sampling defaults.
        size: Image side in pixels.
        batch_size: Images sampled together.
        seed: Seed of the prompts' sampling noise and of the pairing.
        shard_size: Samples per shard.
        compress: Write gzip-compressed shards.
        progress: Show a progress bar.

    Returns:
        Summary: samples written (``total``), pairs and points per tag, the oracle's accuracy on the samples per tag,
        the files.
    """
    from tqdm.auto import tqdm

    from rewarddance.models.generators import load_generator, sample
    from rewarddance.models.pixels import to_pil_images

    model = load_generator(generator)
    prompts = geneval_prompts(per_tag, split=split, seed=seed, tags=tags)
    rng = np.random.default_rng(seed)
    correct: Counter[str] = Counter()
    judged: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    written_points: Counter[str] = Counter()
    jobs = [(r, i) for r in range(rounds) for i in range(len(prompts))]
    per_batch = max(1, batch_size // samples_per_prompt)
    info = {
        "generator": str(generator), "split": split, "per_tag": per_tag, "rounds": rounds, "seed": seed,
        "points": points,
    }  # fmt: skip
    with SampleWriter(out, prefix=f"generated-{split}", max_count=shard_size, info=info, compress=compress) as writer:
        for start in tqdm(range(0, len(jobs), per_batch), desc="generated pairs", disable=not progress):
            batch = jobs[start : start + per_batch]
            texts = [prompts[i]["prompt"] for _, i in batch for _ in range(samples_per_prompt)]
            with torch.no_grad():
                images = sample(
                    model, texts, height=size, width=size, num_inference_steps=steps,
                    guidance_scale=guidance_scale, seed=seed * 1_000_003 + start,
                )  # fmt: skip
            pil = to_pil_images(images)
            for n, (r, i) in enumerate(batch):
                meta = prompts[i]
                group = pil[n * samples_per_prompt : (n + 1) * samples_per_prompt]
                key = f"gen-{split}-{r:03d}-{i:05d}"
                samples, verdicts = pair_generated(group, meta, rng, max_pairs=max_pairs, key=key, model=str(generator))
                judged[meta["tag"]] += len(verdicts)
                correct[meta["tag"]] += sum(v.correct for v in verdicts)
                pairs[meta["tag"]] += len(samples)
                if points:
                    samples += [
                        point_generated(image, verdict, meta, key=f"{key}-p{j}", model=str(generator))
                        for j, (image, verdict) in enumerate(zip(group, verdicts, strict=True))
                    ]
                    written_points[meta["tag"]] += len(verdicts)
                for item in samples:
                    writer.write(item)
    return {
        "total": sum(pairs.values()) + sum(written_points.values()),
        "pairs": dict(pairs),
        "points": dict(written_points),
        "oracle_accuracy": {tag: correct[tag] / judged[tag] for tag in judged},
        "prompts": len(prompts),
        "images": sum(judged.values()),
        "files": [str(p) for p in writer.shard_paths],
    }
