"""Summaries of a shard folder: what ``python -m rewarddance data inspect`` prints."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from rewarddance.data.schema import Sample, decode_sample
from rewarddance.data.stream import iter_tar_samples, resolve_shards


@dataclass
class ShardSummary:
    """Counts over every sample of a shard set; visuals are not decoded except for ``example``."""

    shards: list[str]
    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    with_references: int = 0
    with_rationale: int = 0
    videos: int = 0
    example: Sample | None = None

    def report(self) -> str:
        def fmt(counter: Counter[str]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "-"

        lines = [
            f"shards: {len(self.shards)}   samples: {self.total}",
            f"kinds: {fmt(self.kinds)}",
            f"pair labels: {fmt(self.labels)}   (ties: {self.labels.get('tie', 0)})",
            f"point answers: {fmt(self.answers)}",
            f"categories: {fmt(self.categories)}",
            f"sources: {fmt(self.sources)}",
            f"with references: {self.with_references}   with rationale: {self.with_rationale}   videos: {self.videos}",
        ]
        if self.example is not None:
            ex = self.example
            visuals = ", ".join(
                f"{role}: {len(clip)} x {clip[0].size[0]}x{clip[0].size[1]}" for role, clip in ex.roles().items()
            )
            fields = {
                k: v
                for k, v in vars(ex).items()
                if k not in ("first", "second", "image", "references", "padding") and v not in (None, [], {})
            }
            lines += ["example sample:", f"  visuals: {visuals}"]
            lines += [f"  {k}: {v}" for k, v in fields.items()]
        return "\n".join(lines)


def summarize(source: str | os.PathLike, progress: bool = True) -> ShardSummary:
    """Count kinds, labels, ties, categories and sources over all samples of ``source``."""
    shards = [info.url for info in resolve_shards(source)]
    summary = ShardSummary(shards=shards)
    raws = (raw for url in shards for raw in iter_tar_samples(url))
    for raw in tqdm(raws, desc="inspect", unit="sample", disable=not progress, leave=False):
        sample = decode_sample(raw, load_visuals=summary.example is None)
        if summary.example is None:
            summary.example = sample
        summary.total += 1
        summary.kinds[sample.kind] += 1
        if sample.label:
            summary.labels[sample.label] += 1
        if sample.answer:
            summary.answers[sample.answer] += 1
        summary.categories[sample.category or "none"] += 1
        summary.sources[sample.source] += 1
        summary.with_references += bool(sample.references)
        summary.with_rationale += sample.rationale is not None
        summary.videos += sample.is_video
    return summary
