"""Reward scoring throughput and memory: rewarddance vs full logits vs generate-then-parse.

    python benchmarks/scoring.py [--batch 4] [--repeats 3] [--image-size 352] [--hidden 512]

One tiny-depth Qwen2-VL (2 layers) with a realistic vocabulary (151,936 tokens, as Qwen2-VL's)
and a realistic sequence (~1k tokens: instruction, prompt and two 352 px images) scores the same
batch of pairs in three ways:

- (a) rewarddance: ``logits_to_keep=1``, P(yes) from the last position only;
- (b) a full-logits forward ([batch, length, vocab]), then the last row;
- (c) generate-then-parse: greedy ``generate`` of the answer, decoded and parsed for yes/no (how
  generative judges are commonly served). The paper's instruction asks for "yes" or "no" and the
  detailed reason, so the default answer length is 64 tokens (``--new-tokens``; a random-init model
  never stops early, so every answer has exactly that length).

Each method runs in its own subprocess; its peak memory is the peak resident memory above the
loaded model while it scores. Then best-of-N against one reference: N candidates scored (d) pair by pair from
scratch and (e) with the shared prefix (instruction + prompt + reference image) processed and run through the
model once (what ``RewardModel.score_candidates`` does), checking the rewards are identical; both arms start from
the images, so the processor's work is inside both timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import threading
import time

import psutil
import torch
from PIL import Image

PROMPT = (
    "You are judging text-to-image generation. Evaluate the two images generated from the prompt: "
    "'a red circle left of a blue square'. Criteria: text-image alignment: objects, colours, counts and "
    "positions must match the prompt. Image 1: <image> Image 2: <image> Is image 2 better than image 1? "
    "Answer yes or no."
)


def build(image_size: int, hidden: int, vocab: int):
    from transformers import AutoModelForImageTextToText

    from rewarddance.models import load_backbone

    backbone = load_backbone(
        "tiny-qwen2-vl", image_size=image_size, hidden_size=hidden, num_heads=8, num_kv_heads=4,
        intermediate_size=2 * hidden, num_layers=2,
    )  # fmt: skip
    config = backbone.model.config
    config.text_config.vocab_size = vocab  # the tiny tokenizer's ids all lie below this
    torch.manual_seed(0)
    backbone.model = AutoModelForImageTextToText.from_config(config).eval()
    return backbone


def images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    return [Image.effect_noise((size, size), 20 + 5 * ((seed + i) % 7)).convert("RGB") for i in range(n)]


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every millisecond in a thread.

    (``ru_maxrss`` cannot be used: building the model peaks higher than scoring does.)
    """

    def __enter__(self) -> PeakMemory:
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / 2**20


def run_method(method: str, args: argparse.Namespace) -> dict:
    """Time one scoring method on the batch (median of repeats); report peak RSS growth."""
    from rewarddance.judge.readout import last_token_logits, yes_no_log_probs

    torch.set_num_threads(1)
    backbone = build(args.image_size, args.hidden, args.vocab)
    model, yes, no = backbone.model, backbone.yes_token_id, backbone.no_token_id
    refs, cands = images(args.batch, args.image_size), images(args.batch, args.image_size, seed=3)
    inputs = backbone.encode([PROMPT] * args.batch, [[r, c] for r, c in zip(refs, cands)])
    tokenizer = backbone.tokenizer
    gc.collect()

    def score():
        with torch.no_grad():
            if method == "a":
                return yes_no_log_probs(last_token_logits(model, inputs), yes, no)[:, 0].exp()
            if method == "b":
                logits = model(**inputs, use_cache=False).logits  # [batch, length, vocab]
                return yes_no_log_probs(logits[:, -1, :], yes, no)[:, 0].exp()
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            return torch.tensor([1.0 if t.strip().lower().startswith("yes") else 0.0 for t in texts])

    times = []
    with PeakMemory() as memory:
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            score()
            times.append(time.perf_counter() - start)
    return {
        "method": method,
        "seconds": statistics.median(times[1:]),
        "pairs_per_s": args.batch / statistics.median(times[1:]),
        "peak_mb": memory.mb,
        "tokens": int(inputs["input_ids"].shape[1]),
    }


def run_best_of_n(args: argparse.Namespace) -> dict:
    from rewarddance.judge.readout import rewards_with_shared_prefix, yes_probability
    from rewarddance.models.inputs import encode_images

    torch.set_num_threads(1)
    backbone = build(args.image_size, args.hidden, args.vocab)
    model, yes, no = backbone.model, backbone.yes_token_id, backbone.no_token_id
    reference = images(1, args.image_size)[0]
    candidates = images(args.n, args.image_size, seed=5)

    # Both arms start from the images and do all their encoding inside the timed region.
    def scratch():
        # Pair by pair from scratch, in batches of --batch like (a).
        out = []
        for i in range(0, args.n, args.batch):
            chunk = backbone.encode([PROMPT] * len(candidates[i : i + args.batch]),
                                    [[reference, c] for c in candidates[i : i + args.batch]])  # fmt: skip
            out.append(yes_probability(model, chunk, yes, no))
        return torch.cat(out)

    def shared():
        # As RewardModel.score_candidates: the question is processed once (with the first candidate), the
        # other candidates' images alone; the prefix runs once, the N suffixes as one batch.
        pair = backbone.encode([PROMPT], [[reference, candidates[0]]])
        others = encode_images(backbone.processor, candidates[1:])
        return rewards_with_shared_prefix(model, pair, others, yes, no, backbone.image_token_id)

    # The arms alternate within each repeat, so a change in machine load hits both alike.
    times: dict[str, list[float]] = {"scratch": [], "shared": []}
    rewards = {}
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            for name, fn in [("scratch", scratch), ("shared", shared)]:
                start = time.perf_counter()
                rewards[name] = fn()
                times[name].append(time.perf_counter() - start)
    return {
        "n": args.n,
        "scratch_s": statistics.median(times["scratch"][1:]),
        "shared_s": statistics.median(times["shared"][1:]),
        "max_abs_diff": (rewards["scratch"] - rewards["shared"]).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=352)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument(
        "--new-tokens", type=int, default=64,
        help="answer length for generate-then-parse: a yes/no and a short reason, as the paper's instruction asks",
    )  # fmt: skip
    parser.add_argument("--n", type=int, default=16, help="candidates for best-of-N")
    parser.add_argument("--worker", choices=["a", "b", "c", "bon"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_best_of_n(args) if args.worker == "bon" else run_method(args.worker, args)
        print(json.dumps(result))
        return

    def child(worker: str) -> dict:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", worker]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = {m: child(m) for m in ("a", "b", "c")}
    a, b, c = rows["a"], rows["b"], rows["c"]
    print(
        f"Qwen2-VL, 2 layers, hidden {args.hidden}, vocab {args.vocab:,}; {a['tokens']} tokens per pair "
        f"(two {args.image_size} px images); batch {args.batch}; 1 thread"
    )
    print(f"\n{'method':<42} {'pairs/s':>8} {'peak MB':>9} {'speed vs b':>11} {'mem vs b':>9}")
    names = {
        "a": "(a) rewarddance (logits_to_keep=1)",
        "b": "(b) full logits, last row",
        "c": f"(c) generate {args.new_tokens} tokens, parse",
    }
    for key, row in rows.items():
        print(
            f"{names[key]:<42} {row['pairs_per_s']:>8.2f} {row['peak_mb']:>9.0f} "
            f"{row['pairs_per_s'] / b['pairs_per_s']:>10.2f}x {row['peak_mb'] / max(b['peak_mb'], 1e-9):>8.2f}x"
        )
    print(
        f"targets: (a) >= 1.5x the throughput of (b): {a['pairs_per_s'] / b['pairs_per_s']:.2f}x; "
        f"peak <= 0.3x of (b): {a['peak_mb'] / max(b['peak_mb'], 1e-9):.2f}x; "
        f">= 3x (c): {a['pairs_per_s'] / c['pairs_per_s']:.2f}x"
    )
    bon = child("bon")
    ratio = bon["shared_s"] / bon["scratch_s"]
    print(
        f"\nbest-of-{bon['n']} against one reference: from scratch {bon['scratch_s']:.2f} s, "
        f"shared prefix {bon['shared_s']:.2f} s -> per-candidate cost {ratio:.2f}x (target <= 0.6x); "
        f"max |reward difference| {bon['max_abs_diff']:.1e}"
    )
    print(json.dumps({"a": a, "b": b, "c": c, "best_of_n": bon}))


if __name__ == "__main__":
    main()
