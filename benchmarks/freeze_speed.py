"""The quickstart's step time with the lower language-model layers frozen, settings interleaved in one run.

    python benchmarks/freeze_speed.py [--steps 1100] [--block 25] [--start 500]

Fits ``configs/quickstart.yaml`` in this process (no validation, test, checkpoint or export) and switches, every
``--block`` training steps, which parameters train: the config's (vision tower frozen), then also the projector,
then also the token embeddings (tied to the output head) and layer 0, then layers 0 and 1. With nothing trainable
below a layer, autograd stops there, so each setting saves backward work. Each step is timed from its batch's start
to the next one's, from ``--start`` on (the first epoch fills the vision cache). Prints the mean
milliseconds a step per setting. Speed only: what freezing costs in accuracy needs full fits
(``model.init_args.freeze``; docs/quickstart.md has both).
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict

import lightning as L
from inprocess_fit import find_callback, fit_quickstart

SETTINGS = {
    "config": [],
    "+ projector": [r"visual\.merger\."],
    "+ embeddings, layer 0": [r"visual\.merger\.", r"embed_tokens", r"layers\.0\."],
    "+ embeddings, layers 0-1": [r"visual\.merger\.", r"embed_tokens", r"layers\.[01]\."],
}


class AlternateFrozen(L.Callback):
    """Every ``block`` steps switch to the next setting of :data:`SETTINGS`; time each step from ``start`` on."""

    def __init__(self, block: int, start: int) -> None:
        self.block, self.start = block, start
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps: dict[str, int] = defaultdict(int)
        self.setting: str | None = None
        self.last: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, *_: object) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if self.setting is not None and self.last is not None and step > self.start:
            self.seconds[self.setting] += now - self.last  # the previous step, under the setting it ran with
            self.steps[self.setting] += 1
        setting = list(SETTINGS)[(step // self.block) % len(SETTINGS)]
        if setting != self.setting:
            patterns = [re.compile(p) for p in SETTINGS[setting]]
            for name, param in task.model.named_parameters():
                if ".visual." in name and ".merger." not in name:
                    continue  # the config's frozen vision tower stays frozen
                param.requires_grad_(not any(p.search(name) for p in patterns))
            self.setting = setting
        self.last = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1100, help="training steps")
    parser.add_argument("--block", type=int, default=25, help="steps per setting before switching")
    parser.add_argument("--start", type=int, default=500, help="first timed step (after the cache's first epoch)")
    args = parser.parse_args()
    cli = fit_quickstart(AlternateFrozen, {"block": args.block, "start": args.start}, args.steps)
    timer = find_callback(cli, AlternateFrozen)
    print(f"\nms a step (one thread, steps {args.start}-{args.steps}, blocks of {args.block} alternated):")
    for setting in SETTINGS:
        steps = timer.steps[setting]
        print(f"  {setting:26s} {1000 * timer.seconds[setting] / max(steps, 1):6.1f} over {steps} steps")


if __name__ == "__main__":
    main()
