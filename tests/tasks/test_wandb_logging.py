"""The wandb fragment: an offline run (no account) gets the scalars and a table of sample pairs."""

import json

import pytest

from rewarddance.cli import main
from tests.tasks.test_reward import ROOT, _fit_args, shards  # noqa: F401 - the module-scoped shard fixture

wandb = pytest.importorskip("wandb")


def test_offline_wandb_run_logs_a_table_of_pairs(shards, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = _fit_args("shapes_pairwise.yaml", shards, tmp_path)
    args = [a for a in args if not a.startswith("--trainer.logger.init_args.save_dir")]
    main(
        [
            *args,
            "--trainer",
            str(ROOT / "configs" / "trainer" / "wandb.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    wandb.finish()
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/val/pairs_*.table.json"))
    assert tables, sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())[:40]
    table = json.loads(tables[0].read_text())
    columns = table["columns"]
    assert {"prompt", "image 1", "image 2", "P(image 2 better) truth", "P(yes)"} <= set(columns)
    rows = [dict(zip(columns, row)) for row in table["data"]]
    assert rows and all(0.0 < r["P(yes)"] < 1.0 and r["P(image 2 better) truth"] in (0.0, 0.5, 1.0) for r in rows)
    # wandb 0.31 writes image cells of an offline table as the placeholder "Image".
    assert all(r["image 1"] and r["image 2"] for r in rows)
