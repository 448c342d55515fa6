"""The shapes world's commands, ``python -m rewarddance data shapes`` and ``data generated``.

They are declared in the ``rewarddance.commands`` entry-point group of this project's ``pyproject.toml``, which the
command line reads to build its parser (:func:`rewarddance.commands.command_tree`): generic code never imports
them. The world itself is imported inside each command, so that ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Literal

from rewarddance.errors import UsageError
from rewarddance.outputs import atomic_output, relocated
from rewarddance.shapes.splits import Split

Kind = Literal["pair", "point", "caption"]


def shapes(
    out: str,
    samples: int = 1000,
    seed: int = 0,
    split: Split = "train",
    video: bool = False,
    condition: bool = False,
    kinds: list[Kind] | None = None,
    references: int = 1,
    noise: float = 4.0,
    canvas: int = 64,
    shard_size: int = 1000,
    compress: bool = False,
    style: Literal["auto", "default", "alt"] = "auto",
) -> dict:
    """Render a split of the shapes world (preference pairs, pointwise and caption samples) into shards.

    Args:
        out: Output folder for this split's shards and manifest.json.
        samples: Number of samples to write.
        seed: Random seed; the same seed and arguments give bit-identical shards.
        split: train / val / test-id (same distribution) or test-ood (held-out combinations, other style).
        video: Write clips of moving shapes (motion prompts) instead of still images.
        condition: With video: give every sample a condition image (condition.png: the first frame a clip
            satisfying the prompt starts from), for image-to-video reward models.
        kinds: Sample kinds, assigned round-robin (default pair and point; caption for VLM pretraining).
        references: Reference images (other correct renders of the prompt) attached to each pair.
        noise: Largest pixel-noise standard deviation (0-255 scale); 0 gives clean renders.
        canvas: Image side in pixels.
        shard_size: Samples per shard.
        compress: Write gzip-compressed .tar.gz shards.
        style: Rendering style: auto (alt for test-ood, default otherwise), default or alt. An alt-style
            train split keeps the held-out colour-shape and relation combinations out.
    """
    from rewarddance.shapes.build import build_split  # renders with numpy/PIL: loaded when the command runs

    _check_counts(samples=samples, shard_size=shard_size, canvas=canvas)
    if condition and not video:
        raise UsageError("--condition gives video samples a condition image (image-to-video): add --video")
    with atomic_output(out, folder=True) as tmp:
        summary = build_split(
            tmp, split=split, samples=samples, seed=seed, video=video, condition=condition,
            kinds=tuple(kinds or ("pair", "point")),
            references=references, noise=noise, canvas=canvas, shard_size=shard_size, compress=compress,
            style=style,
        )  # fmt: skip
    summary = relocated(summary, tmp, out)
    files = summary["files"]
    print(f"wrote {summary['total']} {split} samples in {len(files)} shards to {out}")
    return summary


def generated(
    generator: str,
    out: str,
    split: Split = "train",
    per_tag: int = 50,
    samples_per_prompt: int = 4,
    rounds: int = 1,
    max_pairs: int = 2,
    tags: list[str] | None = None,
    points: bool = False,
    steps: int | None = None,
    guidance_scale: float | None = None,
    size: int = 64,
    seed: int = 0,
    shard_size: int = 1000,
) -> dict:
    """Preference pairs of a generator's own samples on shapes prompts, judged by the pixel oracle.

    Each prompt's samples are judged; a correct one is paired with an incorrect one (order random, the oracle's
    verdicts as the rationale), in the schema of the rendered pairs, so the shards train a reward model alone or
    next to them (a list of folders in the DataModule's ``train``).

    Args:
        generator: Generator name or folder, e.g. data/generators/shapes-t2i.
        out: Output folder for the shards and manifest.json.
        split: Split whose prompts are sampled (train for training data, test-id for held-out evaluation).
        per_tag: Distinct prompts per GenEval tag (tags with fewer distinct prompts give fewer).
        samples_per_prompt: Samples per prompt and round.
        rounds: Passes over the prompts with new seeds.
        max_pairs: Pairs made per prompt and round.
        tags: GenEval tags to draw prompts from (default: all six).
        points: Also write every judged sample as a pointwise sample ("does the image match the prompt?", the
            oracle's verdict as the answer and its finding as the rationale), for pointwise reward models.
        steps: Sampling steps; null: the generator folder's defaults.
        guidance_scale: Guidance; null: the generator folder's defaults.
        size: Image side in pixels.
        seed: Seed of the sampling noise and the pairing.
        shard_size: Samples per shard.
    """
    from rewarddance.shapes.generated import build_generated_pairs  # loads diffusers: when the command runs
    from rewarddance.shapes.prompts import TAGS

    _check_counts(per_tag=per_tag, samples_per_prompt=samples_per_prompt, rounds=rounds, max_pairs=max_pairs,
                  size=size, shard_size=shard_size)  # fmt: skip
    unknown = sorted(set(tags or ()) - set(TAGS))
    if unknown:
        raise UsageError(f"--tags: unknown GenEval tags {unknown}; the tags are {list(TAGS)}")
    with atomic_output(out, folder=True) as tmp:
        summary = build_generated_pairs(
            generator, tmp, split=split, per_tag=per_tag, samples_per_prompt=samples_per_prompt, rounds=rounds,
            max_pairs=max_pairs, tags=tuple(tags or TAGS), points=points, steps=steps, guidance_scale=guidance_scale,
            size=size, seed=seed, shard_size=shard_size,
        )  # fmt: skip
    summary = relocated(summary, tmp, out)
    accuracy = ", ".join(f"{tag} {value:.2f}" for tag, value in sorted(summary["oracle_accuracy"].items()))
    points_written = sum(summary["points"].values())
    made = f"{sum(summary['pairs'].values())} pairs" + (f" and {points_written} points" if points else "")
    print(f"wrote {made} from {summary['images']} samples to {out}; oracle accuracy: {accuracy}")
    return summary


def _check_counts(**counts: int) -> None:
    """Refuse counts below 1 before anything is built (``--samples 0`` would write an empty split)."""
    for name, value in counts.items():
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
