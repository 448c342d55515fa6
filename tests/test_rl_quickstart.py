"""benchmarks/rl_quickstart.py ``--at``: a run's earlier checkpoints kept, exported as a user would, and reusable.

Slow (two tiny GRPO steps and an export, ~25 s); the held-out judging itself is not run here (minutes of sampling).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quickstart(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import rl_quickstart

    return rl_quickstart


@pytest.mark.slow
def test_at_keeps_and_exports_an_earlier_step(quickstart, tmp_path):
    extra = ["--model.init_args.reward=shapes-color", "--model.init_args.eval_every=0", "--data.init_args.per_tag=1"]
    final, _, _ = quickstart.fit("configs/rl/shapes_grpo.yaml", 2, tmp_path, extra, [1])
    # Both saves kept although the config's own ModelCheckpoint (same interval) keeps only its latest.
    assert sorted(p.name for p in (tmp_path / "at").glob("*.ckpt")) == ["step=1.ckpt", "step=2.ckpt"]
    earlier = quickstart.export_checkpoint(tmp_path, 1)
    assert (earlier / "model_index.json").exists()
    unet = "unet/diffusion_pytorch_model.safetensors"
    one, two = load_file(earlier / unet), load_file(final / unet)
    assert any(not one[k].equal(two[k]) for k in one), "step 1's export equals the final one: not the earlier step"
    # The record remembers --at: the same call reuses the run, another set of steps is refused.
    assert json.loads((tmp_path / "fit.json").read_text())["at"] == [1]
    assert quickstart.fit("configs/rl/shapes_grpo.yaml", 2, tmp_path, extra, [1])[0] == final
    with pytest.raises(SystemExit, match="other settings"):
        quickstart.fit("configs/rl/shapes_grpo.yaml", 2, tmp_path, extra)
    with pytest.raises(SystemExit, match="no checkpoint of step 3"):
        quickstart.export_checkpoint(tmp_path, 3)
