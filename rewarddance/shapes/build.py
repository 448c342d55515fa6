"""Write splits of the shapes world to shards: ``python -m rewarddance data shapes ...``.

Sample ``i`` of a split is drawn from its own generator, seeded by ``(seed, split, video, i)``,
so a build is bit-for-bit reproducible, two splits with the same seed differ, and any sample
can be regenerated alone. Kinds and tags are assigned round-robin (sample ``i`` has kind
``kinds[i % len(kinds)]``), which balances them exactly.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from rewarddance.data.schema import Sample
from rewarddance.data.writer import SampleWriter
from rewarddance.shapes.captions import make_caption
from rewarddance.shapes.pairs import World, make_pair, make_point
from rewarddance.shapes.render import RenderOptions
from rewarddance.shapes.splits import SPLIT_IDS, SPLITS, Split

Kind = Literal["pair", "point", "caption"]
StyleChoice = Literal["auto", "default", "alt"]
ImageExt = Literal["png", "webp", "jpg"]


def sample_rng(seed: int, split: str, index: int, video: bool = False) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: independent of every other sample's."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], int(video), index]))


def build_split(
    out_dir: str | os.PathLike,
    split: Split = "train",
    samples: int = 1000,
    seed: int = 0,
    kinds: Sequence[Kind] = ("pair", "point"),
    video: bool = False,
    condition: bool = False,
    canvas: int = 64,
    references: int = 1,
    quality_fraction: float = 0.2,
    tie_fraction: float = 0.1,
    minimal_fraction: float = 0.5,
    max_questions: int = 12,
    noise: float = 4.0,
    style: StyleChoice = "auto",
    frames: int = 8,
    fps: float = 4.0,
    shard_size: int = 1000,
    image_ext: ImageExt = "png",
    compress: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Render one split of the shapes world into ``out_dir`` (shards plus ``manifest.json``).

    Args:
        out_dir: Folder for this split's shards (one folder per split, e.g. ``data/shapes/train``).
        split: ``train``, ``val``, ``test-id`` (same distribution, other seeds) or ``test-ood``
            (held-out colour-shape and relation combinations, ``alt`` rendering style).
        samples: Number of samples to write.
        seed: Random seed; the same seed and arguments give bit-identical shards.
        kinds: Sample kinds, assigned round-robin: ``pair`` (preference pairs), ``point``
            (yes/no), ``caption`` (captions and visual questions for VLM pretraining).
        video: Clips of moving shapes (motion prompts) instead of still images.
        condition: Video only: a condition image per sample (``condition.<ext>``), the first frame of a clip
            that satisfies the prompt, for image-to-video reward models (see :class:`~.pairs.World`).
        canvas: Image side in pixels.
        references: Extra correct renders of the prompt attached to each pair (pointwise and
            caption samples get none).
        quality_fraction: Share of pairs and points about visual quality (degraded copies).
        tie_fraction: Share of pairs that are ties.
        minimal_fraction: Share of alignment pairs whose rejected image edits the chosen scene.
        max_questions: Most visual questions per caption sample.
        noise: Largest pixel-noise standard deviation (0-255 scale).
        style: Rendering style; ``auto`` is ``alt`` for test-ood and ``default`` otherwise.
        frames: Frames per clip (video only).
        fps: Frames per second stored with clips (video only).
        shard_size: Samples per shard.
        image_ext: Image encoding in the shards (png is lossless).
        compress: Write gzip-compressed ``.tar.gz`` shards (about 3x smaller for noise-free renders).
        verify: Judge every candidate with the pixel oracle and redraw samples where it
            disagrees with the ground truth (the count is reported as ``oracle_rejected``).
        progress: Show a progress bar.

    Returns:
        A summary dict: ``split``, ``out``, ``total``, ``counts`` (per kind, label, answer, tag,
        pair type, violation), ``oracle_rejected``, ``files`` (shard paths) and ``manifest``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not kinds or any(k not in ("pair", "point", "caption") for k in kinds):
        raise ValueError(f"kinds must be a non-empty list of pair/point/caption, got {kinds!r}")
    options = RenderOptions(noise=noise)
    world = World(
        split=split,
        video=video,
        canvas=canvas,
        frames=frames,
        fps=fps,
        style=None if style == "auto" else style,
        options=options,
        condition=condition,
    )
    info = {
        "source": "shapes",
        "generator": "rewarddance.shapes.build_split",
        "split": split,
        "seed": seed,
        "video": video,
        "style": world.style,
        "options": {
            "kinds": list(kinds),
            "canvas": canvas,
            "references": references,
            "quality_fraction": quality_fraction,
            "tie_fraction": tie_fraction,
            "minimal_fraction": minimal_fraction,
            "max_questions": max_questions,
            "noise": noise,
            **({"frames": frames, "fps": fps} if video else {}),
            **({"condition": True} if condition else {}),
        },
    }
    counts: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    tags = world.tags
    writer = SampleWriter(
        out_dir, prefix="shard", max_count=shard_size, image_ext=image_ext, info=info, compress=compress
    )
    with writer:
        for i in tqdm(range(samples), desc=f"shapes {split}", unit="sample", disable=not progress):
            kind = kinds[i % len(kinds)]
            tag = tags[(i // len(kinds)) % len(tags)]
            rng = sample_rng(seed, split, i, video)
            key = f"{split}-{'video-' if video else ''}{i:07d}"
            sample: Sample
            if kind == "pair":
                sample = make_pair(
                    rng,
                    key=key,
                    world=world,
                    tag=tag,
                    references=references,
                    quality_fraction=quality_fraction,
                    tie_fraction=tie_fraction,
                    minimal_fraction=minimal_fraction,
                    verify=verify,
                    stats=stats,
                )
            elif kind == "point":
                sample = make_point(
                    rng,
                    key=key,
                    world=world,
                    tag=tag,
                    quality_fraction=quality_fraction,
                    verify=verify,
                    stats=stats,
                )
            else:
                sample = make_caption(rng, key=key, world=world, max_questions=max_questions)
            writer.write(sample)
            _count(counts, sample)
        writer.info["categories"] = {k[4:]: v for k, v in sorted(counts.items()) if k.startswith("tag=")}
        files = [str(p) for p in writer.shard_paths]
    manifest = Path(out_dir) / "manifest.json"
    return {
        "split": split,
        "out": str(out_dir),
        "total": samples,
        "counts": dict(sorted(counts.items())),
        "oracle_rejected": stats["oracle_rejected"],
        "files": files,
        "manifest": str(manifest),
    }


def build_caption_split(
    out_dir: str | os.PathLike,
    split: Split = "train",
    samples: int = 1000,
    seed: int = 0,
    video: bool = False,
    canvas: int = 64,
    max_questions: int = 12,
    noise: float = 4.0,
    shard_size: int = 1000,
    image_ext: ImageExt = "png",
    progress: bool = True,
) -> dict[str, Any]:
    """Render caption samples only (captions plus visual questions), for pretraining tiny VLMs.

    Args:
        out_dir: Folder for this split's shards.
        split: train / val / test-id / test-ood.
        samples: Number of samples to write.
        seed: Random seed; the same seed gives bit-identical shards.
        video: Clips of moving shapes instead of still images.
        canvas: Image side in pixels.
        max_questions: Most visual questions per sample.
        noise: Largest pixel-noise standard deviation (0-255 scale).
        shard_size: Samples per shard.
        image_ext: Image encoding in the shards.
        progress: Show a progress bar.
    """
    return build_split(
        out_dir,
        split=split,
        samples=samples,
        seed=seed,
        kinds=("caption",),
        video=video,
        canvas=canvas,
        max_questions=max_questions,
        noise=noise,
        shard_size=shard_size,
        image_ext=image_ext,
        progress=progress,
    )


def _count(counts: Counter[str], sample: Sample) -> None:
    counts[f"kind={sample.kind}"] += 1
    if sample.category:
        counts[f"tag={sample.category}"] += 1
    if sample.label:
        counts[f"label={sample.label}"] += 1
    if sample.answer:
        counts[f"answer={sample.answer}"] += 1
    for name in ("pair_type", "point_type", "violation", "degradation"):
        value = sample.meta.get(name)
        if value:
            counts[f"{name}={value}"] += 1
