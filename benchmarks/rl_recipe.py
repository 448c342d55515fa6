"""The RL recipe's comparison table: runs of ``benchmarks/rl_quickstart.py --out`` side by side, each against the
starting generator and against a control run, on the same held-out prompts and seeds.

    python benchmarks/rl_quickstart.py --config configs/rl/shapes_grpo.yaml --baseline runs/recipe/baseline.json \\
        --out runs/recipe/control.json --steps 150 -- --model.init_args.reward=shapes-oracle
    python benchmarks/rl_recipe.py runs/recipe/*.json --control runs/recipe/control.json

Prints one Markdown row per run (docs/rl_recipe.md keeps the table): the config overrides, steps, wall and CPU
seconds of the fit, held-out overall before and after with 95% intervals, the paired gain with its SE and bootstrap
interval, the gain over the control run (paired over the same prompts and seeds: every run's held-out samples
share their initial noise, so the difference between two tuned generators is paired too), the run's reward std
over its sliding window (first and last: how the paper's Figure 5 reads reward hacking) and hacking flags, and
per-tag gains.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_quickstart import HELDOUT, images_per_prompt, paired_gain  # a sibling script, not a package


def _label(record: dict) -> str:
    overrides = [item.removeprefix("--model.init_args.").removeprefix("--data.init_args.") for item in record["extra"]]
    return " ".join(_short(o) for o in overrides) or "(config as is)"


def _short(override: str) -> str:
    """A reward given as JSON by its model's folder name and reference choice, not its whole text."""
    if not override.startswith("reward={"):
        return override
    reward = json.loads(override.removeprefix("reward="))
    if "path" not in reward:  # {class_path: ..., init_args: ...}: the class
        return f"reward={str(reward.get('class_path', reward.get('kind'))).rsplit('.', 1)[-1]}"
    folder = Path(str(reward["path"]))
    name = folder.parent.name if folder.name == "export" else folder.name  # <run>/export: the run's name
    return f"reward={name} references={reward.get('which', 'top')}-{reward.get('top_k', '')}"


def _variance(record: dict) -> str:
    """The run's reward std over its sliding window, first and last logged, its own hacking flags (Fig. 5's
    reading) and the held-out hacking check (``rl_quickstart.heldout_hacking``), where the record has them."""
    std, flags = record.get("reward_std") or [], record.get("hacking_flags") or []
    if not std:
        return "-"
    text = f"{std[0]:.3f} -> {std[-1]:.3f}, flagged {int(sum(flags))}/{len(flags)}"
    check = record.get("heldout_hacking")
    if check is not None:
        fell = ", ".join(check["fell"])
        text += f"; held-out: {'FLAGGED (' + fell + ')' if check['flag'] else 'not flagged'}"
    return text


def row(record: dict, control: dict | None) -> str:
    start, tuned, gain = record["start"], record["tuned"], record["gain"]
    tags = ", ".join(f"{tag} {value:+.2f} ({se:.2f})" for tag, (value, se) in sorted(gain["per_tag"].items()))
    versus = "-"
    if control is not None and control is not record:
        vs = paired_gain(control["after"], record["after"])
        versus = f"{vs['gain']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]"
    return (
        f"| {_label(record)} | {record['steps']} | {record['wall_s']:.0f} / {record['cpu_s']:.0f} | "
        f"{start['geneval']:.3f} [{start['ci'][0]:.3f}, {start['ci'][1]:.3f}] | "
        f"{tuned['geneval']:.3f} [{tuned['ci'][0]:.3f}, {tuned['ci'][1]:.3f}] | "
        f"{gain['gain']:+.3f} (SE {gain['se']:.3f}) [{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}] | {versus} | "
        f"{_variance(record)} | {tags} |"
    )


def design(baseline: dict, prompts_per_tag: dict[str, int], samples: int, tag_images: int) -> float:
    """Predicted SE of an unpaired difference of GenEval overall (two generators as good as the baseline, sampled
    with independent noise: an upper bound for the paired gain, whose shared noise cancels) for a held-out design.

    Each tag's per-image variance is the baseline's mean over its prompts of p(1 - p) (the within-prompt
    variance; the prompt-to-prompt spread is fixed by the prompt set, not by the seeds).
    """
    total = 0.0
    for tag, count in prompts_per_tag.items():
        rows = [r["correct"] for r in baseline["prompts"] if r["tag"] == tag]
        within = float(np.mean([np.var(c, ddof=1) for c in rows if len(c) > 1]))
        k = images_per_prompt({tag: count}, samples, tag_images)[tag]
        total += 2 * within / (count * k)
    return math.sqrt(total) / len(prompts_per_tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON records of rl_quickstart.py --out")
    parser.add_argument("--control", type=Path, help="the run the others are compared with, paired")
    parser.add_argument("--design", action="store_true", help="predicted SE of held-out designs from baseline.json")
    args = parser.parse_args()
    if args.design:
        baseline = json.loads(next(p for p in args.runs if p.name == "baseline.json").read_text())
        from rewarddance.data.prompts import load_prompts

        for per_tag in (10, 20, 40, 80):
            counts = dict(Counter(str(i["metadata"]["tag"]) for i in load_prompts(HELDOUT, per_tag=per_tag)))
            for samples, floor in ((4, 0), (4, 64), (4, 128), (8, 0)):
                images = sum(count * images_per_prompt({t: count}, samples, floor)[t] for t, count in counts.items())
                se = design(baseline, counts, samples, floor)
                print(f"per_tag {per_tag:>3} samples {samples} tag_images {floor:>3}: {images:>5} images, "
                      f"unpaired SE {se:.4f}, +0.10 = {0.10 / se:.1f} SE")  # fmt: skip
        return
    records = {path: json.loads(path.read_text()) for path in args.runs if path.name != "baseline.json"}
    control = records.get(args.control) if args.control else None
    if args.control and control is None:
        control = json.loads(args.control.read_text())
    print("| overrides | steps | fit wall / CPU s | held-out start (95%) | tuned (95%) | paired gain (SE) [95% CI] "
          "| vs control, paired [95% CI] | reward std (window), hacking flags | per-tag gain (SE) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path, record in records.items():
        print(row(record, control if path != args.control else None))


if __name__ == "__main__":
    main()
