"""``python -m rewarddance data ...``: build the shapes world, import public datasets, inspect shards."""

from __future__ import annotations

from typing import Literal


def shapes(
    out: str,
    samples: int = 1000,
    seed: int = 0,
    split: Literal["train", "val", "test-id", "test-ood"] = "train",
    video: bool = False,
) -> dict:
    """Render a split of the shapes world (pairs, pointwise and caption samples) into shards.

    Args:
        out: Output folder for this split's shards and manifest.json.
        samples: Number of samples to write.
        seed: Random seed; the same seed gives bit-identical shards.
        split: train / val / test-id (same distribution) or test-ood (held-out combinations, other style).
        video: Write clips of moving shapes instead of still images.
    """
    from rewarddance.data.shapes import build_split

    summary = build_split(out, split=split, samples=samples, seed=seed, video=video)
    print(f"wrote {summary['total']} {split} samples to {out}")
    return summary


def inspect(source: str, /) -> object:
    """Print counts, label balance, ties, categories and one decoded sample of a shard set.

    Args:
        source: A shard folder (with or without manifest.json) or a glob of .tar files.
    """
    from rewarddance.data.inspect import summarize

    summary = summarize(source)
    print(summary.report())
    print(f"inspected {summary.total} samples in {len(summary.shards)} shards of {source}")
    return summary
