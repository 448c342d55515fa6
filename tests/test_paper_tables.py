"""benchmarks/paper_tables.py: the ablation table's rows, intervals and failures, and (slow) a --quick run end to end.

The fast tests import the script (no fits): each row's recipe fragment changes only what the row is about, the
Wilson interval matches known values, and a failed fit is printed in the table and fails the script. The slow test
runs ``--quick`` on three rows through the real CLI (three subprocess fits of 2 steps; ~10 s of CPU each, most of
it importing torch/lightning/transformers, so it cannot fit the default tier's few seconds).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tables(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports its sibling quickstart.py
    import paper_tables

    return paper_tables


def test_wilson_interval_matches_known_values_and_contains_the_estimate(tables):
    lo, hi = tables.wilson(0.5, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # the textbook 50/100 interval
    lo, hi = tables.wilson(1.0, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)  # not degenerate at 100%, unlike Wald's
    assert (
        tables.wilson(0.8, 250)[1] - tables.wilson(0.8, 250)[0] < tables.wilson(0.8, 25)[1] - tables.wilson(0.8, 25)[0]
    )
    assert all(math.isnan(x) for x in tables.wilson(0.5, 0))


def test_each_row_changes_only_what_it_compares(tables, tmp_path):
    """Every fragment carries the quickstart's recipe; the fields a row varies differ from the baseline's only there."""
    recipe = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["model"]["init_args"]
    rows = {row.key: row for block in tables.blocks(examples=3) for row in block.rows}
    assert {"t7-regressive", "t7-pointwise", "t7-pairwise", "t9-judgment-first", "t9-reasons-first", "ctx-k"} <= set(
        rows
    )
    assert {"ctx-generic", "scale-tiny", "scale-small"} <= set(rows)
    models = {}
    for key, row in rows.items():
        path = tables.fragment(row.variant, tmp_path / key, steps=7, quick=False, generated=None)
        config = yaml.safe_load(path.read_text())
        assert config["trainer"]["max_steps"] == 7 and config["test_after_fit"] is True
        assert config["model"]["init_args"]["optimizer"] == recipe["optimizer"]
        assert config["model"]["init_args"]["lr_scheduler"] == recipe["lr_scheduler"]
        models[key] = config["model"]["init_args"]
    base = models["t7-pairwise"]
    assert base["backbone"] == "shapes-vlm-tiny" and base["template"] == recipe["template"]
    assert base["rationale_format"] == "none" and "examples" not in base

    def changed(key):
        return {k for k in base.keys() | models[key].keys() if base.get(k) != models[key].get(k)}

    assert changed("t9-none") == changed("ctx-0") == changed("scale-tiny") == set()
    assert changed("t9-judgment-first") == changed("t9-reasons-first") == {"rationale_format"}
    assert models["t9-reasons-first"]["rationale_format"] == "reasons_first"
    assert changed("ctx-k") == {"examples"} and models["ctx-k"]["examples"] == 3
    for mode in ("tag", "similar"):  # retrieved per query: the "chosen per query" rows
        assert changed(f"ctx-k-{mode}") == {"examples", "example_retrieval"}
        assert models[f"ctx-k-{mode}"]["example_retrieval"] == mode
    assert changed("scale-small") == {"backbone"} and models["scale-small"]["backbone"] == "shapes-vlm-small"
    assert changed("ctx-generic") == {"template"}
    generic = yaml.safe_load(Path(models["ctx-generic"]["template"]).read_text())
    assert set(generic["criteria"].values()) == {""}  # one question for every task
    assert tables.CONFIGS[rows["t7-regressive"].variant.paradigm].endswith("shapes_regressive.yaml")
    with_generated = tables.fragment(rows["t7-pairwise"].variant, tmp_path / "g", 7, False, tmp_path / "pairs")
    test_sets = yaml.safe_load(with_generated.read_text())["data"]["init_args"]["test"]
    assert test_sets["generated-val"] == str(tmp_path / "pairs") and set(test_sets) == set(tables.SETS)
    assert "rationale_format" not in models["t7-regressive"]  # the regressive task has no such argument


def test_a_failed_row_is_printed_with_its_error_and_fails_the_script(tables, tmp_path, capsys, monkeypatch):
    def fake_run_all(runs, steps, jobs):
        for run in runs:  # what quickstart.Run.finish records for a fit that did not end in its accuracy line
            run.error = "exit status 1: Traceback ...\nrewarddance.errors.UsageError: broken row"

    monkeypatch.setattr(tables, "run_all", fake_run_all)
    status = tables.main(["--rows", "t7-pairwise", "--steps", "3", "--out", str(tmp_path / "t.json")])
    printed = capsys.readouterr().out
    assert status == 1
    assert (
        "pairwise generative" in printed
        and "FAILED (exit status 1): rewarddance.errors.UsageError: broken row" in printed
        and "broken row" in printed
    )
    assert "FAILED rows: ['t7-pairwise']" in printed
    record = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert record["key"] == "t7-pairwise" and "broken row" in record["error"] and record["sets"] == {}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_table_has_every_row_and_column_with_intervals_around_the_accuracies(tmp_path):
    from tests.processes import run_group

    out = tmp_path / "table.json"
    rows = ["t7-regressive", "t7-pairwise", "t9-none", "ctx-generic"]  # t9-none shares t7-pairwise's fit
    cmd = [sys.executable, "benchmarks/paper_tables.py", "--quick", "--rows", *rows, "--out", str(out)]
    cmd += ["--generated", "data/shapes/val"]  # a stand-in for runs/generated-pairs/val: the third column's plumbing
    proc = run_group(cmd, cwd=ROOT, timeout=540, what="paper_tables --quick", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert proc.stdout.count("seed 0: test-id pairwise accuracy") == 3  # three recipes fitted, the shared one once
    for title in ("Table 7: paradigm", "Table 9: rationales", "Context:"):
        assert title in proc.stdout
    assert "Scale:" not in proc.stdout and "generated-val" in proc.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["steps"] == 2
    assert [r["key"] for r in report["rows"]] == rows
    paper = {"t7-regressive": "70.8 / 80.7", "t7-pairwise": "73.0 / 81.6", "t9-none": "81.6"}
    for record in report["rows"]:
        assert record["error"] is None
        assert record["paper"] == paper.get(record["key"], "none in the paper")
        assert record["paper"] in proc.stdout
        assert set(record["sets"]) == {"test-id", "test-ood", "generated-val"}
        for stats in record["sets"].values():
            lo, hi = stats["ci95"]
            assert 0.0 <= lo <= stats["acc"] <= hi <= 1.0
            assert stats["n_pairs"] > 0 and stats["sd_seeds"] is None
        (run,) = record["runs"]
        assert run["steps"] == 2 and run["total_s"] > 0 and run["s_per_step"] is not None
    same = {r["key"]: r["runs"][0]["accuracy"] for r in report["rows"]}
    assert same["t7-pairwise"] == same["t9-none"]  # one fit, shown in both tables
