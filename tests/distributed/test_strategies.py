"""The reward tasks under DDP and FSDP2 on two real CPU processes (gloo), against one process.

One launch (``strategykit.py``) trains every scenario in turn on 13 pairs, 2 pairs per rank and
step, shuffle off: full fine-tuning under ``ddp``; under FSDP2 (``FSDP2Strategy``) in fp32 with
activation checkpointing, with a distributed checkpoint and a second epoch resumed from it; under
Lightning's plain ``ModelParallelStrategy``; the regressive task; LoRA (with CPU offload),
exported when fit ends; and full fine-tuning with ``configs/trainer/fsdp.yaml``'s settings (bf16
compute, fp32 reductions, activation checkpointing).

The reference is one process training on the same global batches: at step k, the union of the
two ranks' batches (their recorded sample keys, pad repeats included), same seed, AdamW and
gradient clipping. Each rank's loss is the mean over its own rows and both ranks have as many
rows, so the mean of the two ranks' losses must equal the reference's loss on the union;
from step 2 on this also checks that the averaged gradients and the optimizer steps agree.

Tolerances, measured here (torch 2.13 CPU): the fp32 runs (ddp, fsdp, resumed, model_parallel,
regressive, LoRA) agree with the reference to 4e-7 absolute; asserted: 1e-5. The bf16 run agrees
to 2.4e-2 (the losses move by 0.02-0.4 between steps); asserted: 5e-2.

The same launch then shards every family's tasks by hand (``shard_task``; Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, InternVL; generative and regressive) with the same batch on both ranks, against the
unsharded task: fp32 losses and full gradients are identical (0.0 measured), bf16 gradients are
within 6% relative (measured; asserted 15%).

A wrong batch count on one rank would deadlock the run, and a deadlocked Lightning run ignores
SIGTERM (its handler waits on a collective the hung rank never joins: docs/notes.md), so the launch
runs in its own process group and is SIGKILLed on a hard timeout.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rewarddance.data.schema import Sample, decode_sample
from rewarddance.data.stream import iter_tar_samples, resolve_shards
from rewarddance.judge.reward_model import RewardModel
from rewarddance.shapes import build_split
from tests.processes import run_group

try:  # tests/ is a package here; the fallback keeps the file runnable if it stops being one
    from .strategykit import CLIP, FAMILIES, SCENARIOS, make_task, task_loss
except ImportError:
    from strategykit import CLIP, FAMILIES, SCENARIOS, make_task, task_loss  # type: ignore[no-redef]

SCRIPT = Path(__file__).with_name("strategykit.py")
TIMEOUT_S = 240  # the launch takes 30-50 s on a busy 2-core machine; the margin is for a busier one
SAMPLES = 13  # odd: one rank's last batch holds a pad repeat
STEPS = 4  # ceil(ceil(13 / 2) / 2) batches per rank and epoch
FP32_TOL = 1e-5
BF16_TOL = 5e-2


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("strategies")
    data = root / "train"
    build_split(data, "train", samples=SAMPLES, seed=0, kinds=("pair",), references=0, noise=0.0, progress=False)
    out = root / "out"
    out.mkdir()
    cmd = [sys.executable, str(SCRIPT), str(data), str(out), *SCENARIOS, "families"]
    proc = run_group(cmd, cwd=out, timeout=TIMEOUT_S, what="The 2-process run", env={"OMP_NUM_THREADS": "1"})
    stdout = proc.stdout
    assert proc.returncode == 0, _failure(stdout)
    records = {name: [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in range(2)] for name in SCENARIOS}
    families = [json.loads((out / f"families-rank{r}.json").read_text()) for r in range(2)]
    samples = {s.key: s for s in _samples(data)}
    return {"out": out, "data": data, "records": records, "families": families, "samples": samples}


def _failure(stdout: str) -> str:
    """The output of a failed launch: rank 1's traceback usually only says that rank 0 went away."""
    lines = stdout.splitlines()
    rank1 = [line for line in lines if line.startswith("[rank1]")]
    rest = [line for line in lines if not line.startswith("[rank1]")]
    return "\n".join(rest)[-5000:] + "\n...\n" + "\n".join(rank1)[-1500:]


def _samples(source: Path) -> list[Sample]:
    return [
        decode_sample(raw, load_references=False)
        for info in resolve_shards(str(source))
        for raw in iter_tar_samples(info.url)
    ]


def _global_batches(records: list[dict[str, Any]]) -> list[list[str]]:
    """Per step, the keys of rank 0's batch followed by rank 1's."""
    return [a["keys"] + b["keys"] for a, b in zip(records[0]["steps"], records[1]["steps"], strict=True)]


def _mean_rank_losses(records: list[dict[str, Any]]) -> list[float]:
    return [(a["loss"] + b["loss"]) / 2 for a, b in zip(records[0]["steps"], records[1]["steps"], strict=True)]


def _reference(kind: str, lora: bool, batches: list[list[str]], samples: dict[str, Sample]) -> tuple[list[float], Any]:
    """One process, the same global batches: the losses, and the trained task."""
    # As seed_everything(0) on every rank before configure_model (LoRA's initialisation draws from torch's
    # RNG); not seed_everything itself, which would leave PL_GLOBAL_SEED set for the rest of the session.
    torch.manual_seed(0)
    task = make_task(kind, lora)
    task.configure_model()
    optimizer = task.configure_optimizers()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses = []
    for keys in batches:
        loss = task_loss(task, task.collate([samples[k] for k in keys]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        losses.append(loss.item())
    return losses, task


@pytest.fixture(scope="module")
def full_reference(launch) -> list[float]:
    """Full fine-tuning for two epochs (the fsdp run, then its resumed second epoch)."""
    records = launch["records"]
    batches = _global_batches(records["fsdp"]) + _global_batches(records["fsdp_resume"])
    return _reference("generative", False, batches, launch["samples"])[0]


def _check_equal_batches(records: list[dict[str, Any]]) -> None:
    counts = [len(r["steps"]) for r in records]
    assert counts == [STEPS, STEPS] and [r["batches_per_epoch"] for r in records] == [STEPS, STEPS]


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_every_rank_gets_the_same_batches_and_all_samples(launch):
    for name in SCENARIOS:
        records = launch["records"][name]
        _check_equal_batches(records)
        keys = [k for r in records for step in r["steps"] for k in step["keys"]]
        assert set(keys) == set(launch["samples"]), name
        padded = sum(p for r in records for step in r["steps"] for p in step["padding"])
        assert len(keys) == SAMPLES + 1 and padded == 1, name  # 14 slots for 13 samples: one pad repeat
    # Shuffle off: every scenario sees the same order, so one reference serves them all.
    batches = {name: _global_batches(launch["records"][name]) for name in SCENARIOS}
    assert all(b == batches["ddp"] for b in batches.values())


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_ddp_matches_one_process_on_the_global_batch(launch, full_reference):
    losses = _mean_rank_losses(launch["records"]["ddp"])
    assert losses == pytest.approx(full_reference[:STEPS], abs=FP32_TOL, rel=0)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_fsdp_matches_one_process_shards_and_resumes_from_its_distributed_checkpoint(launch, full_reference):
    records = launch["records"]["fsdp"]
    assert _mean_rank_losses(records) == pytest.approx(full_reference[:STEPS], abs=FP32_TOL, rel=0)
    # Really sharded: every parameter is a DTensor and each rank holds about half of the elements.
    for r in records:
        assert r["dtensors"] == len(r["trainable"]) and r["local_numel"] < 0.6 * r["numel"]
    checkpoint = Path(records[0]["checkpoint"])
    assert checkpoint.is_dir() and (checkpoint / "meta.pt").is_file()
    assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # The second epoch, resumed from that folder (weights and AdamW moments), continues the curve.
    resumed = _mean_rank_losses(launch["records"]["fsdp_resume"])
    assert resumed == pytest.approx(full_reference[STEPS:], abs=FP32_TOL, rel=0)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_lightnings_model_parallel_strategy_shards_through_the_same_hook(launch, full_reference):
    records = launch["records"]["model_parallel"]
    assert _mean_rank_losses(records) == pytest.approx(full_reference[:STEPS], abs=FP32_TOL, rel=0)
    assert all(r["local_numel"] < 0.6 * r["numel"] for r in records)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_fsdp_regressive_matches_one_process(launch):
    records = launch["records"]["fsdp_regressive"]
    reference, task = _reference("regressive", False, _global_batches(records), launch["samples"])
    assert _mean_rank_losses(records) == pytest.approx(reference, abs=FP32_TOL, rel=0)
    assert any("head." in n for n in records[0]["changed"])  # the head is sharded and trains
    # The export (gathered on rank 0) holds the trained head and body: it scores like the reference.
    model = RewardModel.from_pretrained(launch["out"] / "fsdp_regressive" / "export")
    assert model.head is not None
    torch.testing.assert_close(model.head.state_dict(), task.head.state_dict(), rtol=0, atol=1e-4)
    samples = [launch["samples"][k] for k in records[0]["steps"][0]["keys"]]
    prompts = [s.prompt for s in samples]
    images = [s.second[0] for s in samples]  # type: ignore[index]
    expected = task.score_queries(model.queries(prompts, images))
    torch.testing.assert_close(model.score(prompts, images), expected.cpu().float(), rtol=0, atol=1e-4)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_fsdp_in_bf16_mixed_precision_follows_the_fp32_curve(launch, full_reference):
    losses = _mean_rank_losses(launch["records"]["fsdp_bf16"])
    assert losses == pytest.approx(full_reference[:STEPS], abs=BF16_TOL, rel=0)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_lora_under_fsdp_trains_only_adapters_and_exports_them(launch):
    records = launch["records"]["fsdp_lora"]
    trainable = set(records[0]["trainable"])
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    changed = set(records[0]["changed"]) | set(records[1]["changed"])
    assert changed == trainable  # every adapter moved (on some rank's shard), nothing else did
    reference, task = _reference("generative", True, _global_batches(records), launch["samples"])
    assert _mean_rank_losses(records) == pytest.approx(reference, abs=FP32_TOL, rel=0)

    # The trained adapters (gathered from the shards) are the reference's (Adam divides tiny gradients by
    # their tiny second moments, so rounding differences reach 2e-5 on a few elements; a step is 1e-3).
    out = launch["out"] / "fsdp_lora"
    adapters = torch.load(out / "adapters.pt", weights_only=True)
    assert set(adapters) == trainable
    own = task.state_dict()
    for key, value in adapters.items():
        torch.testing.assert_close(value, own[key], rtol=0, atol=1e-4, msg=key)

    # The export written when fit ended is the base model with exactly those adapters merged.
    missing, unexpected = task.load_state_dict(adapters, strict=False)
    assert not unexpected and all("lora_" not in k for k in missing)
    expected = copy.deepcopy(task.model).merge_and_unload().state_dict()
    model = RewardModel.from_pretrained(out / "export")
    exported = model.backbone.model.state_dict()
    assert set(exported) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-6, msg=key)
    sample = launch["samples"][records[0]["steps"][0]["keys"][0]]
    assert sample.first is not None and sample.second is not None
    reward = model.score([sample.prompt], [sample.second[0]], references=[sample.first[0]])
    assert reward.shape == (1,) and 0.0 <= float(reward[0]) <= 1.0


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_every_family_shards_block_by_block_and_keeps_loss_and_gradients(launch):
    for rank in launch["families"]:
        assert sorted(rank) == sorted(f"{f}/{k}" for f in FAMILIES for k in ("generative", "regressive"))
        for key, entry in rank.items():
            # Tiny models: 4 decoder layers and 2 vision blocks, one unit each.
            assert entry["n_blocks"] == 6 and len(entry["blocks"]) == 2, (key, entry["blocks"])
            assert any(b.endswith("DecoderLayer") for b in entry["blocks"]), key
            fp32, bf16 = entry["float32"], entry["bfloat16"]
            assert fp32["same_grads"] and bf16["same_grads"], key  # every parameter got its gradient
            assert fp32["loss"] == pytest.approx(entry["loss"], abs=1e-6) and fp32["grad_rel_error"] < 1e-5, key
            assert bf16["loss"] == pytest.approx(entry["loss"], abs=BF16_TOL) and bf16["grad_rel_error"] < 0.15, key
