"""benchmarks/rl_quickstart.py ``--at``: a run's earlier checkpoints kept, exported as a user would, and reusable;
benchmarks/rl_recipe.py's rows.

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


def test_recipe_table_names_the_reward_and_reads_the_variance(monkeypatch):
    """benchmarks/rl_recipe.py: a reward given as JSON is named by its model and references (two arms of Table 8
    differ only there), and the run's reward std and hacking flags are printed (Figure 5's reading)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import rl_recipe

    reward = {"kind": "reward_model", "path": "runs/rm/export", "best_of_n": 16, "top_k": 2, "which": "bottom"}
    record = {"extra": ["--seed_everything=1", f"--model.init_args.reward={json.dumps(reward)}"]}
    assert rl_recipe._label(record) == "--seed_everything=1 reward=rm references=bottom-2"
    assert rl_recipe._label({"extra": ["--model.init_args.reward=shapes-oracle"]}) == "reward=shapes-oracle"
    combined = {"class_path": "rewarddance.rl.combined.CombinedReward", "init_args": {"components": []}}
    assert rl_recipe._label({"extra": [f"--model.init_args.reward={json.dumps(combined)}"]}) == "reward=CombinedReward"
    assert rl_recipe._variance({"reward_std": [0.14, 0.2, 0.25], "hacking_flags": [0, 1, 1]}) == (
        "0.140 -> 0.250, flagged 2/3"
    )
    assert rl_recipe._variance({}) == "-"  # records written before these fields


def test_heldout_hacking_check_flags_a_significant_fall_only(quickstart, monkeypatch):
    """A tag that fell by 3.6 SE while the reward rose is hacking; a fall inside the noise (z -1.6) or the same fall
    without a reward rise is not (the corrected level, 2.45 SE for overall + 6 tags, keeps chance flags at 5%)."""
    tags = {"colors": (-0.08, 0.04), "counting": (-0.18, 0.05), "position": (0.0, 0.02), "single_object": (0.05, 0.04),
            "two_object": (0.08, 0.06), "color_attr": (0.01, 0.03)}  # fmt: skip
    gain = {"gain": -0.025, "se": 0.018, "per_tag": tags}
    check = quickstart.heldout_hacking(gain, reward_rise=0.13)
    assert check["flag"] and list(check["fell"]) == ["counting"]
    assert check["z"] == pytest.approx(2.45, abs=0.005)
    assert "FLAGGED" in quickstart.hacking_line(check) and "counting z -3.6" in quickstart.hacking_line(check)
    assert not quickstart.heldout_hacking(gain, reward_rise=0.0)["flag"]  # the reward did not rise
    noisy = {**gain, "per_tag": {**tags, "counting": (-0.11, 0.07)}}
    assert not quickstart.heldout_hacking(noisy, reward_rise=0.13)["flag"]
    assert "not available" in quickstart.hacking_line(quickstart.heldout_hacking(gain, reward_rise=float("nan")))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import rl_recipe

    record = {"reward_std": [0.1, 0.2], "hacking_flags": [0, 0], "heldout_hacking": check}
    assert rl_recipe._variance(record) == "0.100 -> 0.200, flagged 0/2; held-out: FLAGGED (counting)"
