"""benchmarks/rl_peer.py: rewarddance's GRPO against TRL's DDPOTrainer.

The fast tests import the script (no training): how a run's record becomes the table's figures, and the clear
error when trl (the ``[peer]`` extra) is missing. The slow test runs the benchmark end to end, one update per arm,
and is skipped where trl is not installed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import rl_peer

    return rl_peer


def test_summary_gives_throughput_and_both_gains_per_1000_samples(peer):
    # 6 updates of 2 samples: blocks of 2 steps, the last block 0.5 above the first, 4 updates (8 samples) apart.
    rewards = [[0.0, 0.2], [0.2, 0.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.7], [0.7, 0.5]]
    run = {
        "rewards": rewards,
        "samples_per_step": 2,
        "wall_s": 4.0,
        "step_s": [2.0, 0.5, 1.0, 0.5, 0.5, 0.5],
        "peak_mb": 900.0,
        "loaded_mb": 500.0,
        "before": {"mean": [0.5, 0.5, 1.0, 0.0], "overall": [0.0, 0.0, 1.0, 0.0]},
        "after": {"mean": [0.75, 0.5, 1.0, 0.25], "overall": [1.0, 0.0, 1.0, 0.0]},
    }
    s = peer.summarise(run)
    assert s["samples"] == 12
    assert s["images_s"] == pytest.approx(12 / 4.0)
    assert s["steady_images_s"] == pytest.approx(2 / 0.5)  # the median step after the first
    assert (s["train_first"], s["train_last"]) == pytest.approx((0.1, 0.6))
    assert s["train_gain_per_1k"] == pytest.approx(0.5 / 8 * 1000)
    se = math.hypot(0.11547005 / 2, 0.11547005 / 2)  # each block: stdev of (0, .2, .2, 0) over sqrt(4)
    assert s["train_gain_se_per_1k"] == pytest.approx(se / 8 * 1000, rel=1e-6)
    assert (s["heldout_before"], s["heldout_after"]) == pytest.approx((0.5, 0.625))
    assert s["heldout_gain_per_1k"] == pytest.approx(0.125 / 12 * 1000)
    assert s["heldout_overall_gain"] == pytest.approx(0.25)


def test_a_missing_trl_names_the_extra_to_install(peer, monkeypatch):
    real = peer.importlib.import_module

    def without_trl(name, *args):
        if name == "trl":
            raise ModuleNotFoundError("No module named 'trl'")
        return real(name, *args)

    monkeypatch.setattr(peer.importlib, "import_module", without_trl)
    with pytest.raises(SystemExit, match=r'trl==0\.23\.1.*pip install -e "\.\[peer\]"'):
        peer.import_trl()


def test_both_arms_get_full_batches_of_one_epoch_or_a_clear_refusal(peer):
    r = peer.recipe(peer.CONFIG)
    batches = peer.prompt_batches(r, 19)  # 78 prompts at the config's per_tag 20: 19 full batches and one of 2
    assert len(batches) == 19 and all(len(batch) == 4 for batch in batches)
    assert len({item["prompt"] for batch in batches for item in batch}) == 76  # one epoch: no prompt twice
    with pytest.raises(SystemExit, match=r"--steps 20: .* 19 full batches .* larger --per-tag"):
        peer.prompt_batches(r, 20)
    assert len(peer.prompt_batches(peer.recipe(peer.CONFIG, per_tag=40), 30)) == 30


def test_the_peer_extra_pins_trl():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["peer"] == ["trl==0.23.1"]


@pytest.mark.slow
def test_one_update_per_arm_end_to_end(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "runs.json"
    cmd = [sys.executable, "benchmarks/rl_peer.py", "--steps", "1", "--heldout-per-tag", "1", "--heldout-samples", "1"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checks: same held-out baseline in every run: True; same training prompts in every run: True" in proc.stdout
    assert "target: rewarddance >= 1.5x TRL's images/s" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    for arm in ("rewarddance", "trl"):
        (run,) = runs[arm]
        assert len(run["rewards"]) == 1 and len(run["rewards"][0]) == 16  # 4 prompts x 4 samples
        assert all(0.0 <= r <= 1.0 for r in run["rewards"][0])  # finite oracle scores, not NaN images
        assert run["peak_mb"] > run["loaded_mb"] > 0 and run["wall_s"] > 0
        assert len(run["before"]["mean"]) == len(run["after"]["mean"]) == 6  # one prompt of each of 6 tags
    assert runs["trl"][0]["optimizer_steps"] == 1
