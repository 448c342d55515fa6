"""The paper's ablations on the shapes world: each row a reward model trained the same way, beside the paper's figures.

    python benchmarks/paper_tables.py [--rows t7-regressive t7-pairwise ...] [--steps N] [--seeds 0 1]
                                      [--jobs 2] [--generated DIR] [--out table.json] [--keep DIR] [--quick]

Every row fits a reward model with ``python -m rewarddance fit`` (through ``benchmarks/quickstart.py``'s
``Run``, as a user would) on the bundled shapes shards, with one recipe: the quickstart's (its backbone
shapes-vlm-tiny, short template, AdamW lr 1e-3 with warmup + cosine to 0 over the budget, one torch thread,
batch 16), the same step budget, the same seeds (model init and data order). A row changes one thing:

* Table 7, the paradigm: regressive (scalar head, Bradley-Terry; configs/reward/shapes_regressive.yaml),
  pointwise generative (configs/reward/shapes_pointwise.yaml), pairwise generative (configs/reward/shapes_pairwise.yaml);
* Table 9, rationales: none, judgment then reasons (``rationale_format: judgment_first``), reasons then judgment
  (``reasons_first``; scoring then generates the reasons greedily before reading P(yes));
* context: 0 vs k in-context examples (``--examples``; mode ``first``: the first k labelled training samples,
  the same for every query), and the task-aware criteria of the template vs one generic question (no criteria);
* scale: shapes-vlm-tiny vs shapes-vlm-small (the accuracy side of Table 2).

Rows that are the same recipe (the pairwise baseline appears in every comparison) are fitted once. Each fit
then tests its final weights on test-id and test-ood (250 rendered pairs each) and, when the set exists, on
pairs of the shapes generator's own samples judged by the pixel oracle (``--generated``, default
runs/generated-pairs/val, built by configs/reward/make_generated_pairs.sh). Accuracy excludes tied pairs; the
interval is Wilson's 95% over those pairs (the test pairs' sampling noise; with several seeds the mean's
interval keeps n = pairs and the seeds' sd is shown beside it). The paper's figure for the same comparison is
printed beside each row: mostly not RM accuracy (see each block's note), so compare directions, not values.
A row that fails shows its error in the table; the script then exits with status 1. docs/paper_tables.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from quickstart import ROOT, Run, run_all  # a sibling script, not a package

CONFIGS = {
    "regressive": "configs/reward/shapes_regressive.yaml",
    "pointwise": "configs/reward/shapes_pointwise.yaml",
    "pairwise": "configs/reward/shapes_pairwise.yaml",
}
RECIPE = ROOT / "configs" / "quickstart.yaml"
GENERATED = ROOT / "runs" / "generated-pairs" / "val"
SETS = ("test-id", "test-ood", "generated-val")
Z95 = 1.959964


@dataclass(frozen=True)
class Variant:
    """One training recipe: what a row changes against the quickstart's (rows with equal variants share fits)."""

    paradigm: str = "pairwise"
    backbone: str = "shapes-vlm-tiny"
    rationale: str = "none"
    examples: int = 0
    example_mode: str = "first"
    instructions: str = "task-aware"

    def label(self) -> str:
        parts = [self.paradigm, self.backbone, f"rationale {self.rationale}"]
        if self.examples:
            parts.append(f"{self.examples} examples ({self.example_mode})")
        return ", ".join([*parts, f"{self.instructions} instructions"])


@dataclass(frozen=True)
class Row:
    key: str
    block: str
    name: str
    variant: Variant
    paper: str
    """The paper's figure for this row (its metric is in the block's note), or why there is none."""


@dataclass
class Block:
    title: str
    note: str
    rows: list[Row] = field(default_factory=list)


def example_overrides(mode: str, k: int) -> dict:
    """The model arguments that give k in-context examples chosen by ``mode``.

    ``first``: the first k labelled samples of the training source (yes/no alternating), the same for every query;
    ``tag`` / ``similar``: retrieved per query from a pool, by the query's tag or by prompt similarity
    (``GenerativeRewardTask(examples=k, example_retrieval=mode)``, docs/context.md).
    """
    if k == 0:
        return {}
    if mode == "first":  # the task's default retrieval
        return {"examples": k}
    if mode in ("tag", "similar"):
        return {"examples": k, "example_retrieval": mode}
    raise SystemExit(f"unknown example mode {mode!r}; known: first, tag, similar")


def blocks(examples: int) -> list[Block]:
    """The comparisons, each with the paper's figures for it (RewardDance, arXiv 2509.08826)."""
    base = Variant()
    none = "none in the paper"
    return [
        Block(
            "Table 7: paradigm",
            "paper: image-text alignment of the generator after RL with each 8B RM, FLUX.1-dev / Seedream-3.0 "
            "(not RM accuracy)",
            [
                Row("t7-regressive", "t7", "regressive (scalar head, BT)", Variant(paradigm="regressive"), "70.8 / 80.7"),
                Row("t7-pointwise", "t7", "pointwise generative", Variant(paradigm="pointwise"), "71.6 / 81.0"),
                Row("t7-pairwise", "t7", "pairwise generative", base, "73.0 / 81.6"),
            ],
        ),
        Block(
            "Table 9: rationales (chain of thought) in training",
            "paper: alignment after RL (Seedream-3.0), 81.6 without CoT -> 83.6 with CoT fine-tuning, the reward read "
            "judgment-first; no figure for reasons-first",
            [
                Row("t9-none", "t9", "no rationale", base, "81.6"),
                Row("t9-judgment-first", "t9", "judgment, then reasons", Variant(rationale="judgment_first"), "83.6"),
                Row("t9-reasons-first", "t9", "reasons, then judgment", Variant(rationale="reasons_first"), none),
            ],
        ),
        Block(
            "Context: in-context examples and instructions",
            "paper: context scaling adds task-aware instructions/criteria, reference examples and CoT; it gives no "
            "separate figure for k in-context examples or for generic instructions",
            [
                Row("ctx-0", "ctx", "0 examples, task-aware criteria", base, none),
                Row("ctx-k", "ctx", f"{examples} examples (first k)", Variant(examples=examples), none),
                Row("ctx-k-tag", "ctx", f"{examples} examples (same tag)", Variant(examples=examples, example_mode="tag"), none),
                Row("ctx-k-similar", "ctx", f"{examples} examples (nearest prompt)", Variant(examples=examples, example_mode="similar"), none),
                Row("ctx-generic", "ctx", "generic question (no criteria)", Variant(instructions="generic"), none),
            ],
        ),
        Block(
            "Scale: backbone size (accuracy side of Table 2)",
            "paper: RM accuracy % in-domain / out-of-domain, InternVL 1B..26B: 1B 64.70/69.10, 2B 69.36/69.59, "
            "4B 65.37/71.92, 8B 74.92/71.94, 26B 78.44/80.90; here 0.9M vs 4.6M parameters",
            [
                Row("scale-tiny", "scale", "shapes-vlm-tiny (0.9M)", base, "1B: 64.70 / 69.10"),
                Row("scale-small", "scale", "shapes-vlm-small (4.6M)", Variant(backbone="shapes-vlm-small"), "2B: 69.36 / 69.59"),
            ],
        ),
    ]  # fmt: skip


def generic_template(path: Path) -> str:
    """The short template with one question for every task: every criteria text empty."""
    template = yaml.safe_load((ROOT / "rewarddance" / "judge" / "templates" / "short.yaml").read_text())
    template["name"] = "short-generic"
    template["criteria"] = dict.fromkeys(template["criteria"], "")
    path.write_text(yaml.safe_dump(template, sort_keys=False))
    return str(path)


def fragment(variant: Variant, root: Path, steps: int, quick: bool, generated: Path | None) -> Path:
    """The ``--config`` fragment that puts the quickstart's recipe (and the variant's change) on a row's config."""
    recipe = yaml.safe_load(RECIPE.read_text())
    model = {
        key: recipe["model"]["init_args"][key] for key in ("template", "freeze_vision", "optimizer", "lr_scheduler")
    }
    model["backbone"] = variant.backbone
    if variant.paradigm != "regressive":
        model["rationale_format"] = variant.rationale
        model.update(example_overrides(variant.example_mode, variant.examples))
    elif (variant.rationale, variant.examples) != ("none", 0):
        raise SystemExit("the regressive task takes no rationales or in-context examples")
    if variant.instructions == "generic":
        root.mkdir(parents=True, exist_ok=True)
        model["template"] = generic_template(root / "generic_template.yaml")
    trainer = {
        "max_steps": steps,
        "gradient_clip_val": recipe["trainer"]["gradient_clip_val"],
        "limit_val_batches": 0,  # the result is the final weights; validation would only cost time
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if quick:
        trainer["limit_test_batches"] = 2  # 32 samples per set: checks the table, measures nothing
    config = {
        "torch_threads": recipe["torch_threads"],
        "test_after_fit": True,
        "trainer": trainer,
        "model": {"init_args": model},
    }
    if generated is not None:
        test = {name: str(ROOT / "data" / "shapes" / name) for name in ("test-id", "test-ood")}
        config["data"] = {"init_args": {"test": {**test, "generated-val": str(generated)}}}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_test_metrics(run: Run) -> dict[str, tuple[float, int]]:
    """Per test set: the accuracy at full precision and its denominator (non-tied pairs), from the fit's CSV log."""
    found: dict[str, tuple[float, int]] = {}
    for path in run.root.glob("**/metrics.csv"):
        with open(path) as f:
            for record in csv.DictReader(f):
                for name in SETS:
                    if record.get(f"{name}/acc") and record.get(f"{name}/n"):
                        pairs = float(record[f"{name}/n"]) - float(record.get(f"{name}/n_ties") or 0)
                        found[name] = float(record[f"{name}/acc"]), round(pairs)
    return found


def wilson(p: float, n: int) -> tuple[float, float]:
    """Wilson's 95% interval of a proportion p observed over n trials."""
    if n <= 0:
        return math.nan, math.nan
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(row: Row, runs: list[Run]) -> dict:
    """A row's record: its runs, and per test set the mean accuracy over seeds, its interval and the seeds' sd."""
    record = {**asdict(row), "variant": asdict(row.variant), "runs": [], "sets": {}}
    for run in runs:
        metrics = read_test_metrics(run) if run.error is None else {}
        if run.error is None and set(metrics) != set(run.accuracy or {}):
            run.error = f"the CSV log has test sets {sorted(metrics)}, the fit printed {sorted(run.accuracy or {})}"
        record["runs"].append({
            "seed": run.seed, "accuracy": {name: acc for name, (acc, _) in metrics.items()},
            "pairs": {name: n for name, (_, n) in metrics.items()}, "steps": run.steps, "fit_s": run.wall_s,
            "total_s": round(run.total_s, 1), "cpu_s": run.cpu_s, "error": run.error,
            "s_per_step": run.wall_s / run.steps if run.steps else None,
            "cpu_s_per_step": run.cpu_s / run.steps if run.steps else None,
        })  # fmt: skip
    done = [r for r in record["runs"] if r["error"] is None]
    record["error"] = next((r["error"] for r in record["runs"] if r["error"]), None)
    for name in SETS:
        values = [r["accuracy"][name] for r in done if name in (r["accuracy"] or {})]
        if not values or len(values) < len(done):
            continue
        mean, n = statistics.mean(values), min(r["pairs"].get(name, 0) for r in done)
        sd = statistics.stdev(values) if len(values) > 1 else None
        record["sets"][name] = {"acc": mean, "ci95": wilson(mean, n), "n_pairs": n, "sd_seeds": sd}
    return record


def cell(record: dict, name: str) -> str:
    stats = record["sets"].get(name)
    if stats is None:
        return "-"
    lo, hi = stats["ci95"]
    sd = f" sd {stats['sd_seeds']:.3f}" if stats["sd_seeds"] is not None else ""
    return f"{stats['acc']:.3f} [{lo:.3f}, {hi:.3f}]{sd}"


def error_line(log: str) -> str:
    """The line of a failed fit's output that says why: the last one naming an error, else the last one."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("(add --debug")]
    named = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
    return (named or lines or ["(no output)"])[-1]


def print_table(tables: list[Block], records: dict[str, dict], with_generated: bool, seeds: int) -> None:
    sets = SETS if with_generated else SETS[:2]
    width = 34 if seeds > 1 else 22  # room for the seeds' sd
    for block in tables:
        rows = [row for row in block.rows if row.key in records]
        if not rows:
            continue
        print(f"\n{block.title}\n  ({block.note})")
        print(
            f"  {'row':<34} "
            + " ".join(f"{s:<{width}}" for s in sets)
            + f" {'paper':<18} {'s/step':>6} {'CPU s/step':>10} {'wall s':>7}"
        )
        for row in rows:
            record = records[row.key]
            done = [r for r in record["runs"] if r["error"] is None]
            speed = statistics.mean(r["s_per_step"] for r in done) if done else math.nan
            cpu = statistics.mean(r["cpu_s_per_step"] for r in done) if done else math.nan
            wall = sum(r["total_s"] for r in record["runs"])
            cells = " ".join(f"{cell(record, s):<{width}}" for s in sets)
            print(f"  {row.name:<34} {cells} {row.paper:<18} {speed:>6.3f} {cpu:>10.3f} {wall:>7.0f}")
            if record["error"]:
                why, _, log = record["error"].partition(": ")
                print(f"    FAILED ({why}): {error_line(log)[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", help="row keys to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument(
        "--steps", type=int, help="training steps per fit (default: the quickstart's max_steps; --quick: 2)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (model init and data order)")
    parser.add_argument("--jobs", type=int, default=2, help="fits at a time (one torch thread each)")
    parser.add_argument("--examples", type=int, default=2, help="k of the in-context row")
    parser.add_argument("--generated", type=Path, help=f"held-out generated pairs (default: {GENERATED} if built)")
    parser.add_argument("--quick", action="store_true", help="tiny budget, 2 test batches per set: checks the table")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the runs (logs, exports) in this folder")
    args = parser.parse_args(argv)

    tables = blocks(args.examples)
    rows = {row.key: row for block in tables for row in block.rows}
    if args.list:
        for row in rows.values():
            print(f"{row.key:<20} {row.name:<34} {row.variant.label()}")
        return 0
    unknown = sorted(set(args.rows or []) - set(rows))
    if unknown:
        parser.error(f"unknown row(s) {unknown}; known: {sorted(rows)}")
    chosen = [rows[key] for key in args.rows] if args.rows else list(rows.values())
    steps = args.steps or (2 if args.quick else int(yaml.safe_load(RECIPE.read_text())["trainer"]["max_steps"]))
    generated = args.generated or (GENERATED if GENERATED.is_dir() else None)
    if generated is not None and not generated.is_dir():
        parser.error(f"--generated {generated}: no such folder (build it: bash configs/reward/make_generated_pairs.sh)")

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        variants = list(dict.fromkeys(row.variant for row in chosen))  # rows with the same recipe share fits
        fits: dict[Variant, list[Run]] = {}
        for i, variant in enumerate(variants):
            key = next(row.key for row in chosen if row.variant == variant)
            fits[variant] = []
            for seed in args.seeds:
                run_root = root / f"{key}-seed{seed}"
                config = fragment(variant, run_root, steps, args.quick, generated)
                name = f"[{i + 1}/{len(variants)}] {variant.label()} seed {seed}"
                config_path = CONFIGS[variant.paradigm]
                run = Run(name, seed, None, run_root, config=config_path, fragments=[str(config)], strict=False)
                fits[variant].append(run)
        print(f"{len(variants)} recipe(s) x {len(args.seeds)} seed(s), {steps} steps each, {args.jobs} at a time")
        run_all([run for runs in fits.values() for run in runs], steps, args.jobs)
        records = {row.key: summarize(row, fits[row.variant]) for row in chosen}

    print(f"\naccuracy over non-tied pairs [Wilson 95%]; {steps} steps, seeds {args.seeds}; chance 0.500")
    print("s/step: the fit's wall time per step (model loading included, tests not); CPU s/step: its main process;")
    print("wall s: the whole commands (start-up and tests included), summed over seeds")
    print_table(tables, records, generated is not None, len(args.seeds))
    if generated is None:
        print("\ngenerated pairs: not built (bash configs/reward/make_generated_pairs.sh, or --generated DIR)")
    total = sum(run.total_s for runs in fits.values() for run in runs)
    print(f"wall time of all fits: {total:.0f} s (sum over fits, {args.jobs} at a time)")
    if args.out:
        report = {"steps": steps, "seeds": args.seeds, "quick": args.quick, "generated": str(generated or ""),
                  "recipe": str(RECIPE.relative_to(ROOT)), "rows": list(records.values())}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2))
    failed = [key for key, record in records.items() if record["error"]]
    if failed:
        print(f"FAILED rows: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
