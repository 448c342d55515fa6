"""The quickstart's reward-model accuracy against its targets, per seed, beside a from-scratch baseline.

    python benchmarks/quickstart.py [--seeds 0 1 2] [--steps N] [--jobs 2] [--no-baseline] [--keep DIR]

Runs ``python -m rewarddance fit --config configs/quickstart.yaml`` as a user would (the config's
thread count, the bundled pretrained backbone, the bundled shapes shards, the config's step budget
or ``--steps``) once per seed: seed S sets both ``seed_everything`` and the data order
(``data.init_args.seed``). Beside the first seed it runs the same recipe from a randomly initialised
backbone of the same architecture (the baseline: what pretraining buys). ``--jobs`` runs go at a time
(one thread each; 2 fits a 2-core CPU). Prints held-out pairwise accuracy in-domain (test-id) and
out-of-domain (test-ood, held-out colour-shape/relation combinations in another rendering style) per
seed, their mean and spread, the steps/s and wall time of each fit, and each seed against the targets:
>= 85% in-domain and >= 75% out-of-domain (chance: 50%). The budget is in steps, so the accuracies do
not depend on the machine's load; the wall times do.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = re.compile(r"(\S+) pairwise accuracy ([0-9.]+)")
FIT = re.compile(r"\[rewarddance\] fit: (\d+) steps in (\d+) s \(([0-9.]+) steps/s.*, (\d+) s CPU")
TARGETS = {"test-id": 0.85, "test-ood": 0.75}


@dataclass
class Run:
    name: str
    seed: int
    backbone: str | None
    root: Path
    config: str = "configs/quickstart.yaml"
    fragments: list[str] = field(default_factory=list)
    """Further ``--config`` files, applied right after ``config`` (before this run's own overrides)."""
    strict: bool = True
    """A failed fit ends the script (True) or is kept in :attr:`error` (False: a table shows it)."""
    proc: subprocess.Popen | None = None
    accuracy: dict[str, float] | None = None
    error: str | None = None
    steps: int = 0
    wall_s: float = 0.0
    steps_per_s: float = 0.0
    cpu_s: float = 0.0
    total_s: float = 0.0
    """Wall time of the whole command: start-up, fit and the tests after it."""
    started: float = 0.0

    def start(self, steps: int | None) -> None:
        fragments = [arg for path in self.fragments for arg in ("--config", path)]
        cmd = [
            sys.executable, "-m", "rewarddance", "fit", "--config", self.config, *fragments,
            "--seed_everything", str(self.seed), "--data.init_args.seed", str(self.seed),
            "--trainer.default_root_dir", str(self.root), "--trainer.logger.init_args.save_dir", str(self.root),
            "--model.init_args.export_dir", str(self.root / "export"), "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        if steps is not None:
            cmd += ["--trainer.max_steps", str(steps)]
        if self.backbone:
            cmd += ["--model.init_args.backbone", self.backbone]
        # Output to a file, not a pipe: a pipe nobody reads while another run is awaited would block this one.
        self.root.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        with open(self.root / "output.log", "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)

    def finish(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        self.total_s = time.perf_counter() - self.started
        stdout = (self.root / "output.log").read_text()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("[rewarddance] ") and "pairwise accuracy" in ln]
        if self.proc.returncode != 0 or not lines or not FIT.findall(stdout):
            why = f"exit status {self.proc.returncode}" if self.proc.returncode else "no accuracy or fit line"
            if self.strict:
                sys.exit(f"{self.name} failed ({why}):\n{stdout[-5000:]}")
            self.error = f"{why}: {stdout[-3000:]}"
            print(f"{self.name}: FAILED ({why}); log: {self.root / 'output.log'}", flush=True)
            return
        line = lines[-1]
        self.accuracy = {name: float(acc) for name, acc in ACCURACY.findall(line)}
        steps, wall, speed, cpu = FIT.findall(stdout)[-1]
        self.steps, self.wall_s, self.steps_per_s, self.cpu_s = int(steps), float(wall), float(speed), float(cpu)
        print(f"{self.name}: {line.removeprefix('[rewarddance] ')}; {steps} steps in {wall} s", flush=True)


def run_all(runs: list[Run], steps: int | None, jobs: int) -> None:
    """Run ``runs`` with at most ``jobs`` at a time, in order."""
    active: list[Run] = []
    for run in runs:
        if len(active) == jobs:
            active.pop(0).finish()
        run.start(steps)
        active.append(run)
    for run in active:
        run.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (model init and data order)")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's trainer.max_steps)")
    parser.add_argument("--jobs", type=int, default=2, help="fits at a time (one thread each)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the from-scratch baseline run")
    parser.add_argument("--keep", type=Path, help="keep the runs (checkpoints, exports, logs) in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        runs = [Run(f"quickstart seed {s}", s, None, root / f"quickstart-seed{s}") for s in args.seeds]
        if not args.no_baseline:
            seed = args.seeds[0]
            runs.insert(1, Run(f"baseline seed {seed}", seed, "tiny-qwen2-vl", root / f"baseline-seed{seed}"))
        run_all(runs, args.steps, args.jobs)

    print("\nchance = 0.50; baseline = the same recipe from a random init (tiny-qwen2-vl)")
    print(f"{'run':<24} {'test-id':>8} {'test-ood':>9} {'steps':>6} {'steps/s':>8} {'wall s':>7} {'CPU s':>6}")
    for run in runs:
        acc = run.accuracy or {}
        print(
            f"{run.name:<24} {acc.get('test-id', float('nan')):>8.3f} {acc.get('test-ood', float('nan')):>9.3f} "
            f"{run.steps:>6} {run.steps_per_s:>8.2f} {run.wall_s:>7.0f} {run.cpu_s:>6.0f}"
        )
    ours = [run for run in runs if run.backbone is None]
    for name, target in TARGETS.items():
        values = [(run.accuracy or {}).get(name, 0.0) for run in ours]
        spread = f", sd {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        missed = [run.seed for run, value in zip(ours, values) if value < target]
        verdict = f"missed by seed(s) {missed}" if missed else "met by every seed"
        print(
            f"{name}: mean {statistics.mean(values):.3f}, min {min(values):.3f}, max {max(values):.3f}{spread} "
            f"over {len(values)} seed(s); target >= {target}: {verdict}"
        )


if __name__ == "__main__":
    main()
