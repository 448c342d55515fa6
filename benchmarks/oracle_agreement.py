"""How often does the shapes-world pixel oracle agree with the ground truth? (target: >= 99%)

    python benchmarks/oracle_agreement.py [--scenes 2000] [--videos 300] [--seed 0] [--noise 4]

Renders random scenes that satisfy or violate a GenEval-style prompt (half each) with noise,
position/angle jitter and background variation on, in the default style (in-distribution
prompts) and the alt style (test-ood prompts), judges each render from pixels, and prints the
agreement overall, per tag, per style, for satisfying vs violating scenes and per violation
type, then the same for video clips, and the oracle's time per image / clip. ~30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import time

from rewarddance.shapes.agreement import measure_agreement
from rewarddance.shapes.render import RenderOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000, help="still images to judge")
    parser.add_argument("--videos", type=int, default=300, help="clips to judge (0 to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canvas", type=int, default=64)
    parser.add_argument("--noise", type=float, default=4.0, help="largest pixel-noise std (dataset default 4)")
    parser.add_argument("--failures", type=int, default=10, help="disagreements to print")
    args = parser.parse_args()
    options = RenderOptions(noise=args.noise)
    for label, n, video in (("images", args.scenes, False), ("video clips", args.videos, True)):
        if n <= 0:
            continue
        start = time.perf_counter()
        report = measure_agreement(n, seed=args.seed, video=video, canvas=args.canvas, options=options)
        elapsed = time.perf_counter() - start
        print(f"\n== {label}: {n} at {args.canvas} px, noise <= {args.noise} ==")
        print(report.table())
        print(f"oracle: {report.ms_per_item:.2f} ms per {'clip' if video else 'image'}; total {elapsed:.1f} s")
        for f in report.failures[: args.failures]:
            print(f"  disagreement: {f}")


if __name__ == "__main__":
    main()
