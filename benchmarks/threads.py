"""The quickstart's training speed at 1 vs 2 torch threads, interleaved in one run.

    python benchmarks/threads.py [--steps 650] [--block 50] [--threads 1 2]

Fits ``configs/quickstart.yaml`` in this process (no validation, no test, no checkpoint or export) and switches
torch's intra-op thread count every ``--block`` training steps (1, 2, 1, 2, ...), so every setting sees the same
model, data pipeline (the config's 2 loader workers) and, on a shared machine, the same load, block by block.
The first block is warm-up and dropped. Prints steps/s per block, then per setting the mean, min and max.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from inprocess_fit import find_callback, fit_quickstart


class AlternateThreads(L.Callback):
    """Every ``block`` training batches: record the block's steps/s and switch to the next thread count."""

    def __init__(self, counts: list[int], block: int) -> None:
        self.counts, self.block = counts, block
        self.blocks: list[tuple[int, float]] = []  # (threads, steps/s)
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch: object, idx: int) -> None:
        if idx % self.block:
            return
        now = time.perf_counter()
        if idx:
            self.blocks.append((torch.get_num_threads(), self.block / (now - self._started)))
            print(f"block {idx // self.block}: {torch.get_num_threads()} thread(s) {self.blocks[-1][1]:.2f} steps/s")
        torch.set_num_threads(self.counts[(idx // self.block) % len(self.counts)])
        self._started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=650, help="training steps (a multiple of --block, plus one)")
    parser.add_argument("--block", type=int, default=50, help="steps per block")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to alternate")
    args = parser.parse_args()
    cli = fit_quickstart(AlternateThreads, {"counts": args.threads, "block": args.block}, args.steps)
    timer = find_callback(cli, AlternateThreads)

    blocks = timer.blocks[1:]  # the first block includes start-up
    print(f"\n{len(blocks)} blocks of {args.block} steps after warm-up; steps/s per thread count:")
    for count in args.threads:
        speeds = [speed for threads, speed in blocks if threads == count]
        if speeds:
            print(
                f"{count} thread(s): mean {statistics.mean(speeds):.2f}, min {min(speeds):.2f}, "
                f"max {max(speeds):.2f} over {len(speeds)} blocks"
            )


if __name__ == "__main__":
    main()
