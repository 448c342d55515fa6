"""Where a quickstart training step's time goes: forward, backward, optimizer, waiting for the next batch.

    python benchmarks/step_profile.py [--steps 900] [--start 600]

Fits ``configs/quickstart.yaml`` in this process (``benchmarks/inprocess_fit.py``: no validation, test, checkpoint
or export) and times each phase of every step from ``--start`` on (after the first epoch, so the vision cache is
warm) with Lightning's hooks. Prints the mean milliseconds a step per phase. The machine's speed drifts with its
host's load (docs/quickstart.md), so compare two settings only within one run, never across runs.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import lightning as L
from inprocess_fit import find_callback, fit_quickstart


class StepPhases(L.Callback):
    """Wall time between consecutive hooks of each training step from ``start`` on, summed per phase."""

    def __init__(self, start: int = 600) -> None:
        self.start, self.steps, self.last = start, 0, None
        self.seconds: dict[str, float] = defaultdict(float)

    def _mark(self, trainer: L.Trainer, phase: str) -> None:
        now = time.perf_counter()
        if trainer.global_step >= self.start and self.last is not None:
            self.seconds[phase] += now - self.last
        self.last = now

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._mark(trainer, "next batch + step end")  # the DataLoader's wait and the previous step's end hooks

    def on_before_backward(self, trainer: L.Trainer, *_: Any) -> None:
        self._mark(trainer, "forward")

    def on_after_backward(self, trainer: L.Trainer, *_: Any) -> None:
        self._mark(trainer, "backward")

    def on_before_optimizer_step(self, trainer: L.Trainer, *_: Any) -> None:
        self._mark(trainer, "gradient clipping")

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._mark(trainer, "optimizer")
        if trainer.global_step > self.start:
            self.steps += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=900, help="steps to fit")
    parser.add_argument("--start", type=int, default=600, help="first timed step (the cache fills in epoch 1)")
    args = parser.parse_args()
    if args.start >= args.steps:
        parser.error("--start must be below --steps")
    cli = fit_quickstart(StepPhases, {"start": args.start}, args.steps)
    phases = find_callback(cli, StepPhases)
    per_step = {name: 1000 * seconds / phases.steps for name, seconds in phases.seconds.items()}
    print(f"steps {args.start}-{args.steps}, ms a step (one thread, the config's 2 data workers):")
    for name, ms in per_step.items():
        print(f"  {name:22s} {ms:7.1f}")
    print(f"  {'total':22s} {sum(per_step.values()):7.1f}")


if __name__ == "__main__":
    main()
