"""Oracle score against inference compute: plain sampling, best-of-N and search over paths.

    python benchmarks/inference_scaling.py [--generator data/generators/shapes-t2i] [--per-tag 8]

Each row samples the held-out ``shapes:test-id`` prompts (same seeds in every row) and judges one image per
prompt with the pixel oracle, GenEval-style. Compute is denoiser evaluations per image (NFE: sample-steps,
doubled by classifier-free guidance, plus search's clean-image predictions for the verifier). The verifier is
the bundled pairwise reward model in a both-orders round robin (``rewarddance.inference.Verifier``); its
judgments per image are printed too, since they are compute as well.
"""

from __future__ import annotations

import argparse
import time

import torch

from rewarddance.commands.generate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="data/generators/shapes-t2i")
    parser.add_argument("--reward", default="data/reward_models/shapes-rm-pairwise")
    parser.add_argument("--per-tag", type=int, default=8, help="held-out prompts per GenEval tag")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = {"prompts": "shapes:test-id", "per_tag": args.per_tag, "samples_per_prompt": 1, "steps": args.steps,
              "guidance_scale": args.guidance, "seed": 777}  # fmt: skip
    half, late = args.steps // 2, (3 * args.steps) // 4
    runs = [
        ("plain", {"mode": "plain"}),
        ("best-of-2", {"mode": "best_of_n", "n": 2}),
        ("best-of-4", {"mode": "best_of_n", "n": 4}),
        ("best-of-8", {"mode": "best_of_n", "n": 8}),
        ("search 2 paths x 2, 1 round", {"mode": "search", "n": 2, "num_branches": 2, "branch_steps": [half]}),
        ("search 2 paths x 2, 2 rounds", {"mode": "search", "n": 2, "num_branches": 2, "branch_steps": [half, late]}),
        ("search 4 paths x 2, 2 rounds", {"mode": "search", "n": 4, "num_branches": 2, "branch_steps": [half, late]}),
    ]
    rows = []
    for name, settings in runs:
        started = time.perf_counter()
        reward = args.reward if settings["mode"] != "plain" else None
        report = evaluate(args.generator, reward=reward, **common, **settings)
        rows.append((name, report, time.perf_counter() - started))
    print(f"\n{args.generator}: {int(rows[0][1]['images'])} held-out prompts (shapes:test-id), 1 image each, "
          f"{args.steps} steps, guidance {args.guidance}; verifier {args.reward}")  # fmt: skip
    print(f"{'method':<30} {'NFE/image':>9} {'RM judgments':>12} {'geneval':>8} {'parts mean':>10} {'wall s':>7}")
    for name, r, wall in rows:
        print(
            f"{name:<30} {r['nfe_per_image']:>9.0f} {r['judgments_per_image']:>12.0f} {r['geneval']:>8.3f} "
            f"{r['parts/mean']:>10.3f} {wall:>7.0f}"
        )


if __name__ == "__main__":
    main()
