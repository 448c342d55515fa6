"""The RL quickstart's oracle gain against its target: the shapes generator before and after ReFL.

    python benchmarks/rl_quickstart.py [--steps N] [--config configs/rl/shapes_refl.yaml] [-- extra fit args]

Runs ``python -m rewarddance fit --config configs/rl/shapes_refl.yaml`` as a user would (the config's thread
count, the bundled shapes generator and reward model, the config's step budget or ``--steps``), then judges the
starting generator (the baseline) and the exported tuned one on the same held-out prompts (``shapes:test-id``,
seeds fixed) with the pixel oracle, GenEval-style. Prints overall and per-tag scores, per-part scores, and the run's own diagnostics
(reward on its fixed val prompts, reward std, the reward-hacking flag). Target: overall oracle score up by at
least 0.10 absolute within the config's budget (650 ReFL steps, what 20 minutes on the 2-core CPU machine gave).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def fit(config: str, steps: int, root: Path, extra: list[str]) -> tuple[Path, float]:
    cmd = [
        sys.executable, "-m", "rewarddance", "fit", "--config", config,
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"RL run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("[rewarddance]")))
    exports = sorted(root.rglob("export/model_index.json"))
    if not exports:
        sys.exit(f"no exported generator under {root}")
    return exports[-1].parent, wall


def evaluate(generator: str, settings: dict, per_tag: int, samples: int) -> dict[str, float]:
    from rewarddance.commands.generate import evaluate as run

    return run(
        generator, prompts="shapes:test-id", per_tag=per_tag, samples_per_prompt=samples, seed=12345,
        steps=settings["num_inference_steps"], guidance_scale=settings.get("guidance_scale"), size=settings["height"],
    )  # fmt: skip


def run_metrics(root: Path) -> dict[str, list[float]]:
    """Columns of the run's metrics.csv (NaN-free values only)."""
    files = sorted(root.rglob("metrics.csv"))
    columns: dict[str, list[float]] = {}
    for row in csv.DictReader(files[-1].open()) if files else []:
        for key, value in row.items():
            if value not in ("", None):
                columns.setdefault(key, []).append(float(value))
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="RL steps (default: the config's trainer.max_steps)")
    parser.add_argument("--config", default="configs/rl/shapes_refl.yaml")
    parser.add_argument("--per-tag", type=int, default=10, help="held-out prompts per GenEval tag")
    parser.add_argument("--samples", type=int, default=4, help="images per prompt (GenEval: 4)")
    parser.add_argument("--keep", type=Path, help="keep the run (logs, checkpoints, export) in this folder")
    parser.add_argument("extra", nargs="*", help="further fit arguments (after --)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    settings = config["model"]["init_args"]
    steps = args.steps if args.steps is not None else config["trainer"]["max_steps"]
    for item in args.extra:  # --model.init_args.X=Y overrides of the sampling settings
        if item.startswith("--model.init_args.") and "=" in item:
            key, value = item[len("--model.init_args.") :].split("=", 1)
            settings[key] = yaml.safe_load(value)
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        before = evaluate(settings["generator"], settings, args.per_tag, args.samples)  # fails fast, not after RL
        tuned, wall = fit(args.config, steps, root, args.extra)
        after = evaluate(str(tuned), settings, args.per_tag, args.samples)
        metrics = run_metrics(root)
    keys = [
        "geneval",
        *sorted(k for k in before if k.startswith("tag/")),
        *[k for k in before if k.startswith("parts/")],
    ]
    print(f"\n{args.config}: {steps} steps of RL (wall {wall:.0f} s incl. start-up and evals; steps/s: the fit line)")
    print(f"held-out shapes:test-id, {args.per_tag} prompts/tag x {args.samples} images, oracle-judged")
    print(f"{'metric':<24} {'start':>7} {'tuned':>7} {'gain':>7}")
    for key in keys:
        print(f"{key:<24} {before[key]:>7.3f} {after[key]:>7.3f} {after[key] - before[key]:>+7.3f}")
    reward = metrics.get("oracle/reward", [])
    std = metrics.get("train/reward_window_std", [])
    flags = metrics.get("hacking/flag", [])
    if reward:
        print(f"reward on the run's val prompts: {reward[0]:.3f} -> {reward[-1]:.3f}")
    if std:
        print(f"reward std (sliding window): {std[0]:.4f} -> {std[-1]:.4f}")
    if flags:
        print(f"reward-hacking flag raised at {int(sum(flags))} of {len(flags)} evaluations")
    gain = after["geneval"] - before["geneval"]
    print(f"target: overall oracle gain >= 0.10: {gain:+.3f} ({'met' if gain >= 0.10 else 'missed'})")


if __name__ == "__main__":
    main()
