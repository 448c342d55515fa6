"""The quickstart's reward-model accuracy against its targets, beside a from-scratch baseline.

    python benchmarks/quickstart.py [--minutes 10] [--no-baseline] [--sequential]

Runs ``python -m rewarddance fit --config configs/quickstart.yaml`` as a user would (one CPU
thread, the bundled pretrained backbone, the bundled shapes shards, ``--minutes`` of
fine-tuning) and, side by side on the other core, the same recipe from a randomly initialised
backbone of the same architecture (the baseline: what pretraining buys). Prints held-out pairwise accuracy in-domain (test-id) and
out-of-domain (test-ood, held-out colour-shape/relation combinations in another rendering style)
next to the targets: >= 85% in-domain and >= 75% out-of-domain within 10 minutes (chance: 50%).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = re.compile(r"\[rewarddance\] (.*pairwise accuracy.*)")


def start(minutes: float, backbone: str | None, root: Path) -> tuple[subprocess.Popen, float]:
    cmd = [
        sys.executable, "-m", "rewarddance", "fit", "--config", "configs/quickstart.yaml",
        "--trainer.max_time", f"00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}",
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--model.init_args.export_dir", str(root / "export"), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if backbone:
        cmd += ["--model.init_args.backbone", backbone]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, time.perf_counter()


def finish(proc: subprocess.Popen, started: float) -> tuple[dict[str, float], float]:
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"quickstart failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    line = RESULT.findall(stdout)[-1]
    accuracies = {name: float(acc) for name, acc in re.findall(r"(\S+) pairwise accuracy ([0-9.]+)", line)}
    return accuracies, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="fine-tuning budget (trainer.max_time)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the from-scratch baseline run")
    parser.add_argument("--keep", type=Path, help="keep the runs (checkpoints, exports, logs) in this folder")
    parser.add_argument(
        "--sequential", action="store_true", help="run one after the other (when the other core is busy)"
    )
    args = parser.parse_args()
    runs = {"quickstart (shapes-vlm-tiny)": None}
    if not args.no_baseline:
        runs["baseline: random init (tiny-qwen2-vl)"] = "tiny-qwen2-vl"
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        # One thread each, side by side on the two cores (or one after the other): the same compute for both.
        rows, started = [], {}
        for name, backbone in runs.items():
            started[name] = start(args.minutes, backbone, root / ("quickstart" if backbone is None else "baseline"))
            if args.sequential:
                rows.append((name, *finish(*started.pop(name))))
        rows += [(name, *finish(*proc)) for name, proc in started.items()]
    print(f"\nfine-tuning budget {args.minutes:g} min, 1 CPU thread; chance = 0.50")
    print(f"{'run':<40} {'test-id':>8} {'test-ood':>9} {'wall s':>7}")
    for name, acc, wall in rows:
        print(
            f"{name:<40} {acc.get('test-id', float('nan')):>8.3f} {acc.get('test-ood', float('nan')):>9.3f} {wall:>7.0f}"
        )
    acc = rows[0][1]
    print(
        f"targets: in-domain >= 0.85: {acc.get('test-id', 0):.3f} ({'met' if acc.get('test-id', 0) >= 0.85 else 'missed'}); "
        f"out-of-domain >= 0.75: {acc.get('test-ood', 0):.3f} ({'met' if acc.get('test-ood', 0) >= 0.75 else 'missed'})"
    )


if __name__ == "__main__":
    main()
