"""The RL quickstart's oracle gain against its target: the shapes generator before and after RL, paired.

    python benchmarks/rl_quickstart.py [--steps N] [--config configs/rl/shapes_nft.yaml] [-- extra fit args]

Runs ``python -m rewarddance fit --config ...`` as a user would (the config's thread count, the bundled shapes
generator and reward model, the config's step budget or ``--steps``), then judges the starting generator (the
baseline) and the exported tuned one on the same held-out prompts (``shapes:test-id``) with the same seeds, with the
pixel oracle, GenEval-style. Prints overall and per-tag scores with their 95% intervals, per-part scores, and the
run's own diagnostics (reward on its fixed val prompts, reward std, the reward-hacking flag). Target: overall oracle
score up by at least 0.10 absolute within the config's budget.

The gain is paired: each prompt is sampled with the same seeds before and after, its score is the fraction of its
images the oracle accepts, and the gain's standard error is the stratified one of GenEval's overall (the mean over
tags of each tag's mean), sum over tags of var(per-prompt difference) / prompts / tags^2. The 95% interval is a
paired bootstrap that resamples prompts within each tag. The default held-out set (``--per-tag 40``, 4 images per
prompt) is sized so that +0.10 is more than 3 standard errors of the difference (docs/rl_recipe.md: how it was
measured); ``--per-tag 10`` is the old 48-prompt set.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = "shapes:test-id"
HELDOUT_SEED = 12345  # prompt i of the held-out set is sampled with seed HELDOUT_SEED + i, before and after


def fit(
    config: str, steps: int, root: Path, extra: list[str], at: list[int] | None = None
) -> tuple[Path, float, float]:
    """Run the fit; returns the exported generator, the wall time and the CPU time (user + system) of the run.

    ``at``: earlier steps to keep a checkpoint of (``root/at/step=N.ckpt``), exported by :func:`export_checkpoint`.

    A folder that already holds a finished fit of the same command (``fit.json`` beside its export, written by
    ``--fit-only``) is reused, so that several fits can run first and be judged afterwards.
    """
    at = list(at or [])
    record = root / "fit.json"
    exports = sorted(root.rglob("export/model_index.json"))
    if record.exists() and exports:
        done = json.loads(record.read_text())
        if done["config"] == config and done["steps"] == steps and done["extra"] == extra and done.get("at", []) == at:
            return exports[-1].parent, done["wall_s"], done["cpu_s"]
        sys.exit(f"{record}: a fit of other settings ({done}); choose another --keep folder")
    cmd = [
        sys.executable, "-m", "rewarddance", "fit", "--config", config,
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip
    if at:  # one more ModelCheckpoint that keeps every save (the config's keeps only its latest)
        every = math.gcd(*at)
        keep = {"every_n_train_steps": every, "save_top_k": -1, "dirpath": str(root / "at"), "filename": "{step}"}
        # mode is unused without a monitor; "max" only makes the callback's state key differ from a config's
        # ModelCheckpoint of the same interval (Lightning refuses two with one key)
        keep["mode"] = "max"
        cmd.append(
            "--trainer.callbacks+="
            + json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": keep})
        )
    started = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"RL run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("[rewarddance]")))
    exports = sorted(root.rglob("export/model_index.json"))
    if not exports:
        sys.exit(f"no exported generator under {root}")
    record.write_text(
        json.dumps({"config": config, "steps": steps, "extra": extra, "at": at, "wall_s": wall, "cpu_s": cpu})
    )
    return exports[-1].parent, wall, cpu


def export_checkpoint(root: Path, step: int) -> Path:
    """Export the run's checkpoint of ``step`` (kept by ``fit(at=...)``) as a diffusers folder, as a user would."""
    out = root / "at" / f"step={step}"
    if (out / "model_index.json").exists():
        return out
    ckpt = root / "at" / f"step={step}.ckpt"
    if not ckpt.exists():
        sys.exit(f"{ckpt}: no checkpoint of step {step} (was the fit run with --at {step}?)")
    cmd = [sys.executable, "-m", "rewarddance", "export", "--checkpoint", str(ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"export of {ckpt} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return out


def images_per_prompt(tag_counts: dict[str, int], samples: int, tag_images: int) -> dict[str, int]:
    """Images per prompt of each tag: ``samples``, or more where a tag has too few prompts to reach ``tag_images``.

    GenEval's overall weighs every tag alike, and some tags of a split have only a handful of distinct prompts
    (shapes:test-id: single_object 3, two_object 6, counting 9, colors 24), so their images, not their prompts,
    bound the noise of the overall score.
    """
    return {tag: max(samples, math.ceil(tag_images / count)) for tag, count in tag_counts.items()}


def heldout_scores(generator: str, settings: dict, per_tag: int, samples: int, tag_images: int) -> dict[str, Any]:
    """Per-prompt, per-seed oracle verdicts of ``generator`` on the held-out prompts.

    Prompt i is sampled with seed HELDOUT_SEED + i (its images from one batch of initial noise), so image j of a
    prompt shares its starting noise across generators: before and after are paired image by image.

    Returns ``{"prompts": [{"prompt", "tag", "correct": [0/1 per image], "parts": {part: mean}}], "wall_s",
    "cpu_s", "settings"}``; :func:`level` and :func:`paired_gain` aggregate it GenEval-style.
    """
    from rewarddance.callbacks.evaluation import EVALUATORS, GENEVAL, has_geneval_metadata
    from rewarddance.commands.generate import Sampling, sample_prompts
    from rewarddance.data.prompts import load_prompts
    from rewarddance.models.pixels import to_pil_images

    sampling = {
        "steps": settings["num_inference_steps"], "guidance_scale": settings.get("guidance_scale"),
        "size": settings["height"], "per_tag": per_tag, "samples": samples, "tag_images": tag_images,
    }  # fmt: skip
    items = [i for i in load_prompts(HELDOUT, per_tag=per_tag) if has_geneval_metadata(i.get("metadata"))]
    tags = [str(i["metadata"].get("tag", "other")) for i in items]
    counts = {tag: tags.count(tag) for tag in dict.fromkeys(tags)}
    per_prompt = images_per_prompt(counts, samples, tag_images)
    judge = EVALUATORS[GENEVAL]
    started, cpu = time.perf_counter(), time.process_time()
    prompts = []
    for tag in counts:
        first = tags.index(tag)  # a generated source lists each tag's prompts together
        group = items[first : first + counts[tag]]
        options = Sampling(
            seed=HELDOUT_SEED + first, steps=sampling["steps"], guidance_scale=sampling["guidance_scale"],
            size=sampling["size"],
        )  # fmt: skip
        results, _ = sample_prompts(generator, group, per_prompt[tag], options)
        for item, result in results:
            verdicts = [judge.judge(image, item["metadata"]) for image in to_pil_images(result.images)]
            parts: dict[str, list[float]] = defaultdict(list)
            for verdict in verdicts:
                for name, value in verdict.parts.items():
                    parts[name].append(float(value))
            prompts.append({
                "prompt": item["prompt"], "tag": tag, "correct": [int(v.correct) for v in verdicts],
                "parts": {name: float(np.nanmean(values)) for name, values in parts.items()},
            })  # fmt: skip
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"generator": generator, "settings": sampling, "prompts": prompts, "wall_s": wall, "cpu_s": cpu}


def _images(scores: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    """Per tag, each prompt's 0/1 verdicts in seed order."""
    tags: dict[str, list[np.ndarray]] = defaultdict(list)
    for row in scores["prompts"]:
        tags[row["tag"]].append(np.asarray(row["correct"], dtype=float))
    return dict(sorted(tags.items()))


def _overall(per_tag: dict[str, list[np.ndarray]]) -> float:
    return float(np.mean([np.mean([values.mean() for values in prompts]) for prompts in per_tag.values()]))


def _tag_se(prompts: list[np.ndarray]) -> float:
    """SE of a tag's mean over its prompts, given the prompts: each prompt's image-to-image variance."""
    terms = [values.var(ddof=1) / len(values) for values in prompts if len(values) > 1]
    return math.sqrt(sum(terms)) / len(prompts)


def _bootstrap(per_tag: dict[str, list[np.ndarray]], resamples: int, seed: int) -> np.ndarray:
    """GenEval overall of ``resamples`` redraws of each prompt's images (with replacement, within the prompt)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for prompts in per_tag.values():
        tag = np.zeros(resamples)
        for values in prompts:
            tag += values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
        total += tag / len(prompts)
    return total / len(per_tag)


def level(scores: dict[str, Any], resamples: int = 4000) -> dict[str, Any]:
    """GenEval overall (mean over tags) with its SE and bootstrap 95% CI, per-tag accuracy, per-part means."""
    per_tag = _images(scores)
    boot = _bootstrap(per_tag, resamples, seed=1)
    se = math.sqrt(sum(_tag_se(prompts) ** 2 for prompts in per_tag.values())) / len(per_tag)
    out: dict[str, Any] = {"geneval": _overall(per_tag), "se": se, "ci": _ci(boot)}
    out.update({f"tag/{tag}": float(np.mean([v.mean() for v in prompts])) for tag, prompts in per_tag.items()})
    parts: dict[str, list[float]] = defaultdict(list)
    for row in scores["prompts"]:
        for name, value in row["parts"].items():
            parts[name].append(value)
    out.update({f"parts/{name}": float(np.nanmean(values)) for name, values in parts.items()})
    return out


def _ci(boot: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def paired_gain(before: dict[str, Any], after: dict[str, Any], resamples: int = 4000, seed: int = 0) -> dict[str, Any]:
    """The paired gain of GenEval overall, conditional on the held-out prompts: image j of a prompt before and after
    share their starting noise, so the per-image difference is the unit. Point estimate, its SE (sum over tags
    and prompts of var(per-image difference) / images / prompts^2 / tags^2), the paired bootstrap 95% CI
    (resampling each prompt's seeds), per-tag gains with their SEs, and the prompt counts."""
    if [(r["prompt"], len(r["correct"])) for r in before["prompts"]] != [
        (r["prompt"], len(r["correct"])) for r in after["prompts"]
    ]:
        raise ValueError("before and after were not judged on the same held-out prompts and seeds: no paired gain")
    b, a = _images(before), _images(after)
    diff = {tag: [x - y for x, y in zip(a[tag], b[tag], strict=True)] for tag in b}
    per_tag = {tag: (float(np.mean([d.mean() for d in prompts])), _tag_se(prompts)) for tag, prompts in diff.items()}
    return {
        "gain": _overall(diff),
        "se": math.sqrt(sum(se**2 for _, se in per_tag.values())) / len(per_tag),
        "ci": _ci(_bootstrap(diff, resamples, seed)),
        "per_tag": per_tag,
        "prompts": {tag: len(prompts) for tag, prompts in diff.items()},
        "images": {tag: sum(len(d) for d in prompts) for tag, prompts in diff.items()},
    }


def heldout_hacking(gain: dict[str, Any], reward_rise: float, min_rise: float = 0.02, alpha: float = 0.05) -> dict:
    """Reward hacking read on the held-out set: the run's reward rose (by ``min_rise`` or more on its val prompts)
    while the oracle, on the held-out prompts, fell significantly, overall or in a tag.

    A fall counts where the paired gain is below ``-z`` standard errors, ``z`` the one-sided ``alpha`` level
    Bonferroni-corrected over overall and the tags (2.45 for 6 tags at 5%), so that a generator that did not change
    is flagged by chance in at most ``alpha`` of runs. The run's own check (a trend over a window of 48-image
    evaluations) follows its sample's noise about as much as the policy; this one has the held-out set's power
    (docs/generated_pairs.md).
    """
    tests = {"overall": (gain["gain"], gain["se"]), **gain["per_tag"]}
    z = NormalDist().inv_cdf(1 - alpha / len(tests))
    fell = {name: value / se for name, (value, se) in tests.items() if se > 0 and value / se < -z}
    return {"flag": reward_rise >= min_rise and bool(fell), "fell": fell, "z": z, "reward_rise": reward_rise}


def hacking_line(check: dict[str, Any]) -> str:
    fell = ", ".join(f"{name} z {value:+.1f}" for name, value in check["fell"].items()) or "nothing"
    verdict = "FLAGGED" if check["flag"] else "not flagged"
    if math.isnan(check["reward_rise"]):
        verdict = "not available (the run logged no reward on its val prompts: eval_every 0)"
    return (
        f"held-out hacking check: {verdict} (reward on the run's val prompts {check['reward_rise']:+.3f}; "
        f"fell significantly, z < -{check['z']:.2f}: {fell})"
    )


def run_metrics(root: Path) -> dict[str, list[float]]:
    """Columns of the run's metrics.csv (NaN-free values only)."""
    files = sorted(root.rglob("metrics.csv"))
    columns: dict[str, list[float]] = {}
    for row in csv.DictReader(files[-1].open()) if files else []:
        for key, value in row.items():
            if value not in ("", None):
                columns.setdefault(key, []).append(float(value))
    return columns


def cached_baseline(
    path: Path | None, generator: str, settings: dict, per_tag: int, samples: int, tag_images: int
) -> dict[str, Any]:
    """The starting generator's held-out scores, read from ``path`` when it holds them for the same settings."""
    if path is not None and path.exists():
        cached = json.loads(path.read_text())
        wanted = {"steps": settings["num_inference_steps"], "guidance_scale": settings.get("guidance_scale"),
                  "size": settings["height"], "per_tag": per_tag, "samples": samples, "tag_images": tag_images}  # fmt: skip
        if cached.get("generator") == generator and cached.get("settings") == wanted:
            return cached
        print(f"{path}: baseline of other settings ({cached.get('settings')}), re-evaluating")
    scores = heldout_scores(generator, settings, per_tag, samples, tag_images)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scores))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="RL steps (default: the config's trainer.max_steps)")
    parser.add_argument("--config", default="configs/rl/shapes_nft.yaml")
    parser.add_argument("--per-tag", type=int, default=40, help="held-out prompts per GenEval tag (at most)")
    parser.add_argument("--samples", type=int, default=4, help="images per held-out prompt (GenEval: 4), at least")
    parser.add_argument(
        "--tag-images", type=int, default=64, help="at least this many images per tag (more per prompt where a tag "
        "has few prompts: its images bound the noise; 0: --samples everywhere)"
    )  # fmt: skip
    parser.add_argument("--baseline", type=Path, help="JSON cache of the starting generator's held-out scores")
    parser.add_argument("--out", type=Path, help="write the run's figures and per-prompt verdicts to this JSON")
    parser.add_argument("--keep", type=Path, help="keep the run (logs, checkpoints, export) in this folder")
    parser.add_argument(
        "--fit-only", action="store_true", help="only fit into --keep; a later call with that --keep judges it"
    )
    parser.add_argument(
        "--at", type=int, nargs="+", default=[], metavar="STEP",
        help="also judge the run at these earlier steps (checkpoints kept and exported): is it lower later?",
    )  # fmt: skip
    parser.add_argument(
        "--judge-steps", type=int, metavar="N", help="denoising steps of the held-out samples (default: the run's "
        "num_inference_steps): train on cheaper rollouts, judge the generator as it is used",
    )  # fmt: skip
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
    if args.judge_steps is not None:
        settings = {**settings, "num_inference_steps": args.judge_steps}
    if args.fit_only:
        if args.keep is None:
            parser.error("--fit-only needs --keep (the folder the later judging call reads)")
        _, wall, cpu = fit(args.config, steps, args.keep.resolve(), args.extra, args.at)
        print(f"{args.config} {' '.join(args.extra)}: {steps} steps, wall {wall:.0f} s, CPU {cpu:.0f} s")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        # fails fast, not after RL
        heldout = (args.per_tag, args.samples, args.tag_images)
        before = cached_baseline(args.baseline, settings["generator"], settings, *heldout)
        tuned, wall, cpu = fit(args.config, steps, root, args.extra, args.at)
        after = heldout_scores(str(tuned), settings, *heldout)
        earlier = {
            n: paired_gain(before, heldout_scores(str(export_checkpoint(root, n)), settings, *heldout)) for n in args.at
        }
        metrics = run_metrics(root)
    start, end, gain = level(before), level(after), paired_gain(before, after)
    counts = ", ".join(f"{tag} {n}x{gain['images'][tag] // n}" for tag, n in gain["prompts"].items())
    print(f"\n{args.config} {' '.join(args.extra)}: {steps} steps of RL, wall {wall:.0f} s, CPU {cpu:.0f} s "
          "(incl. start-up and the run's own evaluations)")  # fmt: skip
    print(f"held-out {HELDOUT}: {len(before['prompts'])} prompts x images ({counts}) = {sum(gain['images'].values())}"
          f" images, oracle-judged, seeds paired; evaluation wall {after['wall_s']:.0f} s")  # fmt: skip
    print(f"{'metric':<24} {'start':>7} {'tuned':>7} {'gain':>7} {'SE':>6}")
    for key in ["geneval", *(k for k in start if k.startswith("tag/")), *(k for k in start if k.startswith("parts/"))]:
        se = gain["se"] if key == "geneval" else gain["per_tag"].get(key[4:], (0, math.nan))[1]
        print(f"{key:<24} {start[key]:>7.3f} {end[key]:>7.3f} {end[key] - start[key]:>+7.3f} {se:>6.3f}")
    (low, high), ci_start, ci_end = gain["ci"], start["ci"], end["ci"]
    print(f"overall start {start['geneval']:.3f} [{ci_start[0]:.3f}, {ci_start[1]:.3f}], tuned {end['geneval']:.3f} "
          f"[{ci_end[0]:.3f}, {ci_end[1]:.3f}]; gain {gain['gain']:+.3f}, SE {gain['se']:.3f}, 95% CI "
          f"[{low:+.3f}, {high:+.3f}] (paired by seed, bootstrap over each prompt's images; given these prompts)")  # fmt: skip
    reward = metrics.get("oracle/reward", [])
    std = metrics.get("train/reward_window_std", [])
    flags = metrics.get("hacking/flag", [])
    curve = metrics.get("oracle/geneval", [])
    if reward:
        print(f"reward on the run's val prompts: {reward[0]:.3f} -> {reward[-1]:.3f}")
    if curve:
        print(f"oracle on the run's val prompts at each evaluation: {' '.join(f'{v:.3f}' for v in curve)}")
    if std:
        print(f"reward std (sliding window): {std[0]:.4f} -> {std[-1]:.4f}")
    if flags:
        print(f"reward-hacking flag raised at {int(sum(flags))} of {len(flags)} evaluations")
    for n, g in {**earlier, steps: gain}.items():  # the held-out gain along the run, same prompts and seeds
        low, high = g["ci"]
        print(f"held-out gain at step {n}: {g['gain']:+.3f} (SE {g['se']:.3f}) [{low:+.3f}, {high:+.3f}]")
    hacking = heldout_hacking(gain, reward[-1] - reward[0] if reward else math.nan)
    print(hacking_line(hacking))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "config": args.config, "extra": args.extra, "steps": steps, "wall_s": wall, "cpu_s": cpu,
            "start": start, "tuned": end, "gain": gain, "val_curve": curve, "after": after,
            "gain_at": {str(n): g for n, g in earlier.items()}, "reward_std": std, "hacking_flags": flags,
            "reward_curve": reward, "heldout_hacking": hacking,
        }  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1))
    print(f"target: overall oracle gain >= 0.10: {gain['gain']:+.3f} ({'met' if gain['gain'] >= 0.10 else 'missed'})")


if __name__ == "__main__":
    main()
