"""Measure how often the pixel oracle agrees with the ground truth on the world's own renders.

Agreement is "oracle verdict == ground-truth verdict" on a random mix of scenes that satisfy
their prompt and scenes that violate it in one controlled way, rendered with the dataset's
appearance randomisation (noise, jitter, background variation) in both styles. The default
style draws in-distribution prompts, the ``alt`` style the held-out (test-ood) ones.
``benchmarks/oracle_agreement.py`` prints the report; the tests check a smaller sample.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewarddance.shapes.pairs import World
from rewarddance.shapes.render import RenderOptions
from rewarddance.shapes.scene import STYLES


@dataclass
class AgreementReport:
    """Agreement tallies by group (``overall``, ``tag=...``, ``style=...``, ``truth=...``, ``violation=...``)."""

    tallies: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    oracle_seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, groups: list[str], agree: bool) -> None:
        for g in ["overall", *groups]:
            self.tallies[g][0] += int(agree)
            self.tallies[g][1] += 1

    def rate(self, group: str = "overall") -> float:
        agree, total = self.tallies[group]
        return agree / total if total else float("nan")

    @property
    def ms_per_item(self) -> float:
        return 1000 * self.oracle_seconds / max(self.tallies["overall"][1], 1)

    def table(self) -> str:
        lines = [f"{'group':32s} {'agree':>8s} {'n':>6s}"]
        for g in sorted(self.tallies, key=lambda k: (k != "overall", k)):
            agree, total = self.tallies[g]
            lines.append(f"{g:32s} {agree / total:8.2%} {total:6d}")
        return "\n".join(lines)


def measure_agreement(
    samples: int = 2000,
    *,
    seed: int = 0,
    video: bool = False,
    canvas: int = 64,
    options: RenderOptions | None = None,
) -> AgreementReport:
    """Render ``samples`` scenes (or clips), half satisfying and half violating their prompt,
    alternating tags and styles, and tally oracle-vs-truth agreement."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242, int(video)]))
    report = AgreementReport()
    worlds = {
        style: World(
            split="test-ood" if style == "alt" else "train",
            video=video,
            canvas=canvas,
            options=options or RenderOptions(),
        )
        for style in STYLES
    }
    tags = worlds["default"].tags
    for i in range(samples):
        tag = tags[i % len(tags)]
        style = STYLES[(i // len(tags)) % len(STYLES)]
        world = worlds[style]
        meta = world.prompt(tag, rng)
        if rng.random() < 0.5:
            scene, violation = world.scene(meta, rng), None
        else:
            scene, violation = world.violating(meta, rng)
        clip = world.render(scene, rng)
        truth = world.truth(scene, meta)
        start = time.perf_counter()
        found = world.oracle(clip, meta)
        report.oracle_seconds += time.perf_counter() - start
        agree = found.correct == truth.correct
        groups = [f"tag={tag}", f"style={style}", f"truth={'satisfied' if truth.correct else 'violated'}"]
        if violation:
            groups.append(f"violation={violation}")
        report.add(groups, agree)
        if not agree:
            report.failures.append(
                {
                    "prompt": meta["prompt"],
                    "style": style,
                    "violation": violation,
                    "truth": truth.reason,
                    "oracle": found.reason,
                }
            )
    return report
