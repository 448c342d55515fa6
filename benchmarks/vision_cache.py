"""The quickstart's training speed with and without the vision-feature cache, interleaved in one run.

    python benchmarks/vision_cache.py [--warm 500] [--steps 600] [--block 50]

Fits ``configs/quickstart.yaml`` (frozen vision tower) in this process with its ``vision_cache_mb`` (no
validation, no test, no checkpoint or export). The first ``--warm`` steps fill the cache (500: one
epoch of the bundled pairs); then the cache is switched off and on every ``--block`` steps, so both
settings see the same model, data pipeline and, on a shared machine, the same load, block by block.
Prints per block the steps/s and the main process's CPU seconds per step, then per setting the mean,
min and max, and the warm-up epoch's own figures (every image encoded once, alone).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
from inprocess_fit import find_callback, fit_quickstart


class AlternateCache(L.Callback):
    """After ``warm`` steps, every ``block`` steps: record the block's speed and toggle the cache."""

    def __init__(self, warm: int, block: int) -> None:
        self.warm, self.block = warm, block
        self.blocks: list[tuple[str, float, float]] = []  # (setting, steps/s, CPU s per step)
        self.warm_up: tuple[float, float] | None = None
        self._wall = self._cpu = 0.0
        self._setting = "on"
        self._last = -1

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch: object, idx: int) -> None:
        step = trainer.global_step  # optimizer steps: a batch of only skipped samples repeats it, hence _last
        boundary = step == 1 or (step >= self.warm and (step - self.warm) % self.block == 0)
        if not boundary or step == self._last:
            return
        self._last = step
        wall, cpu = time.perf_counter(), time.process_time()
        if step == self.warm:  # from step 1: step 0 includes start-up
            steps = self.warm - 1
            self.warm_up = (steps / (wall - self._wall), (cpu - self._cpu) / steps)
            print(f"warm-up, cache filling: {self.warm_up[0]:.2f} steps/s, {self.warm_up[1] * 1000:.1f} ms CPU/step")
        elif step > self.warm:
            self.blocks.append((self._setting, self.block / (wall - self._wall), (cpu - self._cpu) / self.block))
            _, speed, per_step = self.blocks[-1]
            print(
                f"block {len(self.blocks)}: cache {self._setting} {speed:.2f} steps/s, {per_step * 1000:.1f} ms CPU/step"
            )
        if step >= self.warm:
            self._setting = "off" if len(self.blocks) % 2 == 0 else "on"
            task.vision_cache.enabled = self._setting == "on"
        self._wall, self._cpu = time.perf_counter(), time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=500, help="steps with the cache on before the comparison")
    parser.add_argument("--steps", type=int, default=600, help="steps compared after warm-up (a multiple of 2 blocks)")
    parser.add_argument("--block", type=int, default=50, help="steps per block")
    parser.add_argument("--max_mb", type=float, default=512, help="the cache's size in MB")
    args = parser.parse_args()
    cli = fit_quickstart(
        AlternateCache, {"warm": args.warm, "block": args.block}, args.warm + args.steps + 1,
        "--model.init_args.vision_cache_mb", str(args.max_mb),
    )  # fmt: skip
    timer = find_callback(cli, AlternateCache)
    print(f"\n{len(timer.blocks)} blocks of {args.block} steps after {args.warm} warm-up steps:")
    means = {}
    for setting in ("off", "on"):
        rows = [(speed, cpu) for name, speed, cpu in timer.blocks if name == setting]
        if not rows:
            continue
        speeds, cpus = [r[0] for r in rows], [r[1] * 1000 for r in rows]
        means[setting] = statistics.mean(cpus)
        print(
            f"cache {setting}: {statistics.mean(speeds):.2f} steps/s (min {min(speeds):.2f}, max {max(speeds):.2f}), "
            f"{means[setting]:.1f} ms CPU/step (min {min(cpus):.1f}, max {max(cpus):.1f}) over {len(rows)} blocks"
        )
    if len(means) == 2:
        print(f"CPU per step with the cache: {means['on'] / means['off']:.3f}x")
    print(f"cache: {cli.model.vision_cache.stats()}")


if __name__ == "__main__":
    main()
