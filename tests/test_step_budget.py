"""The quickstart's budget is a step count: its lr schedule follows ``trainer.max_steps``, a fit reports its speed,
and a fit is bit-for-bit reproducible from the seed on CPU (2 dataloader workers), so its result is a property of
the recipe rather than of the machine's speed or load.

The fits run ``python -m rewarddance fit --config configs/quickstart.yaml`` in subprocesses (as a user does) on a
1-layer tiny Qwen2-VL, 6 steps of batch 4, so they take seconds.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.demos.boring_classes import BoringModel

from rewarddance.optimization import sized_to_budget
from rewarddance.tasks.pretrain import WarmupCosineLR
from tests.processes import run_group

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180
TINY = (
    "{hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64, vision_hidden_size: 32,"
    " vision_depth: 1, vision_heads: 1, vision_intermediate_size: 64, image_size: 32, patch_size: 8}"
)
STEPS = 6


def _lrs(scheduler: WarmupCosineLR, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_without_total_steps_decays_over_the_trainers_max_steps():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = sized_to_budget(
        WarmupCosineLR(optimizer, warmup_steps=4, total_steps=None, min_ratio=0.0),
        L.Trainer(max_steps=20, logger=False),
    )
    assert scheduler.total_steps == 20
    lrs = _lrs(scheduler, 21)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup to the peak
    assert all(a > b for a, b in itertools.pairwise(lrs[4:21]))  # then strictly down from step 4...
    assert lrs[12] == pytest.approx(0.5)  # ...through half the peak mid-way (step 4 + 16 / 2)...
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)  # ...to 0 at max_steps


def test_an_explicit_total_steps_is_kept_and_an_unbounded_budget_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fixed = WarmupCosineLR(optimizer, warmup_steps=2, total_steps=7)
    assert sized_to_budget(fixed, L.Trainer(max_steps=20, logger=False)).total_steps == 7
    endless = L.Trainer(max_steps=-1, max_epochs=-1, logger=False)
    open_ended = sized_to_budget(WarmupCosineLR(optimizer, warmup_steps=0, total_steps=None), endless)
    with pytest.raises(ValueError, match=r"set trainer\.max_steps"):
        _lrs(open_ended, 2)  # the first decaying step asks for the budget


class _CosineBoringModel(BoringModel):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        self.scheduler = sized_to_budget(
            WarmupCosineLR(optimizer, warmup_steps=2, total_steps=None, min_ratio=0.0), self.trainer
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler, "interval": "step"}}


def test_without_max_steps_the_schedule_spans_the_epochs(tmp_path):
    """max_epochs x batches, asked once training runs (not in configure_optimizers, before a resume's restore)."""
    model = _CosineBoringModel()
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model)
    assert model.scheduler.total_steps == 12
    assert model.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # decayed to 0 at the last step
    assert "budget" not in model.scheduler.state_dict()  # the callback holding the trainer stays out of checkpoints


def test_configs_budget_in_steps_not_wall_time():
    """Every shipped training config stops on max_steps; a wall-clock budget made results depend on the machine."""
    checked = 0
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        # configs/trainer/ holds --trainer fragments: trainer arguments at the top level.
        trainer = config if path.parent.name == "trainer" else config.get("trainer") or {}
        assert "max_time" not in trainer, f"{path.relative_to(ROOT)} stops on the clock"
        if "max_steps" in trainer:
            assert int(trainer["max_steps"]) > 0, path
            checked += 1
    assert checked >= 10  # the quickstart, reward, RL and pretraining configs were all read


def _fit(root: Path, seed: int) -> tuple[str, bytes]:
    shapes = ROOT / "data" / "shapes"
    root.mkdir(parents=True)
    config = root / "tiny.yaml"
    config.write_text(f"""
trainer:
  max_steps: {STEPS}
  val_check_interval: {STEPS}
  limit_val_batches: 2
  limit_test_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger: false
  enable_checkpointing: false
model:
  init_args: {{backbone: tiny-qwen2-vl, backbone_kwargs: {TINY}, export_dir: {root / "export"}}}
data:
  init_args: {{train: {shapes / "train"}, batch_size: 4, eval_batch_size: 8, num_workers: 2, shuffle_buffer: 64}}
""")
    cmd = [sys.executable, "-m", "rewarddance", "fit", "--config", "configs/quickstart.yaml", "--config", str(config)]
    cmd += ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
    proc = run_group(cmd, cwd=ROOT, timeout=TIMEOUT_S, what="The tiny quickstart fit", env={"OMP_NUM_THREADS": "4"})
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout, (root / "export" / "model.safetensors").read_bytes()


@pytest.mark.timeout(3 * TIMEOUT_S + 60)
def test_a_fit_is_bitwise_reproducible_from_the_seed_and_reports_its_speed(tmp_path):
    first, weights = _fit(tmp_path / "a", seed=3)
    again, same_weights = _fit(tmp_path / "b", seed=3)
    _, other_weights = _fit(tmp_path / "c", seed=4)

    accuracy = re.compile(r"\[rewarddance\] test-id pairwise accuracy [0-9.]+ \| test-ood pairwise accuracy [0-9.]+")
    assert accuracy.findall(first) == accuracy.findall(again) and len(accuracy.findall(first)) == 1
    assert weights == same_weights  # the exported weights, byte for byte
    assert other_weights != weights  # the seed matters: the check above could fail

    # The config's thread count, not OMP_NUM_THREADS (4 above), and the speed line after the accuracy line.
    speed = re.search(r"\[rewarddance\] fit: (\d+) steps in \d+ s \([0-9.]+ steps/s.*\), (\d+) torch thread", first)
    assert speed is not None, first[-3000:]
    assert (int(speed.group(1)), int(speed.group(2))) == (STEPS, 1)
    assert first.index("pairwise accuracy") < speed.start()
