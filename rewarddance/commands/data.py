"""``python -m rewarddance data ...``: build the shapes world, import public datasets, inspect shards."""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "val", "test-id", "test-ood"]
Kind = Literal["pair", "point", "caption"]


def shapes(
    out: str,
    samples: int = 1000,
    seed: int = 0,
    split: Split = "train",
    video: bool = False,
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
        kinds: Sample kinds, assigned round-robin (default pair and point; caption for VLM pretraining).
        references: Reference images (other correct renders of the prompt) attached to each pair.
        noise: Largest pixel-noise standard deviation (0-255 scale); 0 gives clean renders.
        canvas: Image side in pixels.
        shard_size: Samples per shard.
        compress: Write gzip-compressed .tar.gz shards.
        style: Rendering style: auto (alt for test-ood, default otherwise), default or alt. An alt-style
            train split keeps the held-out colour-shape and relation combinations out.
    """
    from rewarddance.data.shapes import build_split

    summary = build_split(
        out, split=split, samples=samples, seed=seed, video=video, kinds=tuple(kinds or ("pair", "point")),
        references=references, noise=noise, canvas=canvas, shard_size=shard_size, compress=compress,
        style=style,
    )  # fmt: skip
    files = summary["files"]
    print(f"wrote {summary['total']} {split} samples in {len(files)} shards to {out}")
    return summary


def inspect(source: str, /) -> object:
    """Print counts, label balance, ties, categories and one decoded sample of a shard set.

    Args:
        source: A shard folder (with or without manifest.json), a shard path or a brace pattern.
    """
    from rewarddance.data.inspect import summarize

    summary = summarize(source)
    print(summary.report())
    print(f"inspected {summary.total} samples in {len(summary.shards)} shards of {source}")
    return summary
