"""How well reward models rank a generator's own samples, judged by the pixel oracle.

    python benchmarks/reward_on_samples.py [--reward RM_FOLDER ...] [--generator data/generators/shapes-t2i]
        [--prompts shapes:train] [--per-tag 4] [--n 16] [--steps N] [--guidance G]

What RL and best-of-N inherit from a reward model is its ranking of the *generator's* samples, which may differ
from its accuracy on the pairs it was trained and tested on. For each prompt this samples ``n`` images (fixed
seeds; the generator's sampling defaults unless ``--steps`` / ``--guidance`` say otherwise: RL samples at its
config's steps, e.g. 10 for configs/rl/shapes_nft.yaml), judges each with the oracle, and scores them with every
reward model given (pairwise models in a both-orders round robin, as the RL references and best-of-N are chosen).
Per model:

- pair accuracy: over all (oracle-correct, oracle-incorrect) pairs of a prompt's samples, how often the model
  scores the correct one higher (ties count half; 0.5 is chance), overall and per tag;
- the oracle accuracy of the model's top-1, top-2 and bottom-2 samples per prompt next to that of all samples
  (what best-of-N and the paper's top-k / bottom-k references get), and top-1's gain over a random sample: the
  mean over prompts of (top-1 correct - the prompt's share of correct samples), with its 95% interval (+-1.96
  standard errors over prompts).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from rewarddance.data.prompts import load_prompts
from rewarddance.inference import Verifier
from rewarddance.models.generators import load_generator, sample
from rewarddance.models.pixels import to_pil_images
from rewarddance.shapes import evaluate


def pair_accuracy(scores: torch.Tensor, correct: torch.Tensor) -> tuple[float, int]:
    """Fraction of (correct, incorrect) pairs the scores order correctly (ties half), and the pair count."""
    good, bad = scores[correct], scores[~correct]
    if good.numel() == 0 or bad.numel() == 0:
        return 0.0, 0
    diff = good[:, None] - bad[None, :]
    return float((diff > 0).float().sum() + 0.5 * (diff == 0).float().sum()), diff.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", action="append", help="reward-model folder (repeat to compare several)")
    parser.add_argument("--generator", default="data/generators/shapes-t2i")
    parser.add_argument("--prompts", default="shapes:train", help="prompt source (shapes:<split>, JSONL, shards)")
    parser.add_argument("--per-tag", type=int, default=4)
    parser.add_argument("--n", type=int, default=16, help="samples per prompt")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the generator's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rewards = args.reward or ["data/reward_models/shapes-rm-pairwise"]
    torch.set_num_threads(1)

    generator = load_generator(args.generator)
    items = load_prompts(args.prompts, per_tag=args.per_tag)
    started = time.perf_counter()
    groups = []
    for i, item in enumerate(items):
        images = sample(
            generator, [item["prompt"]] * args.n, height=args.size, width=args.size, seed=args.seed * 100_003 + i,
            num_inference_steps=args.steps, guidance_scale=args.guidance,
        )  # fmt: skip
        correct = torch.tensor([evaluate(img, item["metadata"])[0] for img in to_pil_images(images)])
        groups.append((item, images, correct))
    print(f"sampled {len(items)} prompts x {args.n} in {time.perf_counter() - started:.0f} s ({args.prompts})")

    everything = torch.cat([c for _, _, c in groups]).float().mean()
    header = (
        f"{'reward model':<44} {'pair acc':>8} {'pairs':>6} {'top-1':>6} {'top-2':>6} {'bottom-2':>8} {'all':>6}"
        f"  top-1 gain [95% CI]"
    )
    rows, per_tag_rows = [], []
    for path in rewards:
        verifier = Verifier(path)
        hits, total = 0.0, 0
        tag_hits: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        top1, top2, bottom2, gain = [], [], [], []
        for item, images, correct in groups:
            scores = verifier(images, item["prompt"], item["metadata"])
            h, n = pair_accuracy(scores, correct)
            hits, total = hits + h, total + n
            tag = item["metadata"]["tag"]
            tag_hits[tag][0] += h
            tag_hits[tag][1] += n
            order = scores.argsort(descending=True)
            top1.append(correct[order[:1]].float().mean())
            top2.append(correct[order[:2]].float().mean())
            bottom2.append(correct[order[-2:]].float().mean())
            gain.append(top1[-1] - correct.float().mean())
        mean = lambda xs: float(torch.stack(xs).mean())  # noqa: E731
        half = 1.96 * float(torch.stack(gain).std()) / len(gain) ** 0.5 if len(gain) > 1 else float("nan")
        rows.append(
            f"{path[-44:]:<44} {hits / max(total, 1):>8.3f} {total:>6d} {mean(top1):>6.3f} {mean(top2):>6.3f} "
            f"{mean(bottom2):>8.3f} {float(everything):>6.3f}  {mean(gain):+.3f} [{mean(gain) - half:+.3f}, "
            f"{mean(gain) + half:+.3f}]"
        )
        per_tag_rows.append(
            f"{path[-44:]:<44} " + "  ".join(f"{t} {h / n:.2f} ({n})" for t, (h, n) in sorted(tag_hits.items()) if n)
        )
    print(
        f"\n{args.generator}: {len(items)} prompts x {args.n} samples, oracle accuracy of all samples {everything:.3f}"
    )
    print(header)
    print("\n".join(rows))
    print("\npair accuracy per tag (pairs):")
    print("\n".join(per_tag_rows))


if __name__ == "__main__":
    main()
