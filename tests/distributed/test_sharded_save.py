"""FSDP2Strategy's sharded checkpoints are crash-safe: a kill -9 while re-saving ``last.ckpt`` (every
rank's shard files written, rank 0 half-way through ``meta.pt``) leaves the previous ``last.ckpt``
complete and loadable, and a run resumed from it continues the interrupted run's losses exactly.

Lightning's ``ModelParallelStrategy`` writes into the target folder itself: at the same kill point
the folder would hold the new step's shard files and DCP metadata next to a truncated ``meta.pt``,
and could not be loaded. Two 2-process launches (~30-60 s each here): ``slow``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from rewarddance.shapes import build_split
from tests.processes import run_group

try:  # tests/ is a package here; the fallback keeps the file runnable if it stops being one
    from .savekit import STALL_STEP
except ImportError:
    from savekit import STALL_STEP  # type: ignore[no-redef]

SCRIPT = Path(__file__).with_name("savekit.py")
TIMEOUT_S = 300


def _launch(data: Path, out: Path, mode: str) -> tuple[int, str]:
    cmd = [sys.executable, str(SCRIPT), str(data), str(out), mode]
    proc = run_group(
        cmd, cwd=out, timeout=TIMEOUT_S, what=f"the {mode} launch", env={"OMP_NUM_THREADS": "1"},
        kill_when=out / "stalled" if mode == "stall" else None,
    )  # fmt: skip
    return proc.returncode, proc.stdout


def _losses(out: Path, mode: str, rank: int) -> dict[int, float]:
    lines = (out / f"{mode}-rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT_S + 60)
def test_kill_during_a_sharded_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    data, out = tmp_path / "train", tmp_path / "out"
    build_split(data, "train", samples=13, seed=0, kinds=("pair",), references=0, noise=0.0, progress=False)
    out.mkdir()

    code, stdout = _launch(data, out, "stall")
    assert code == -signal.SIGKILL, f"expected a kill mid-save, got {code}:\n{stdout[-4000:]}"
    ckpt = out / "ckpt"
    partial = [p for p in ckpt.iterdir() if p.name.startswith(".last.ckpt.") and p.name.endswith(".tmp")]
    assert len(partial) == 1 and sorted(p.name for p in partial[0].glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    with pytest.raises(Exception):  # noqa: B017 - any failure to read: it is truncated
        torch.load(partial[0] / "meta.pt", weights_only=True)
    last = ckpt / "last.ckpt"
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == STALL_STEP - 1  # the previous save
    assert (ckpt / f"epoch=0-step={STALL_STEP}.ckpt" / "meta.pt").is_file()  # saved just before, complete

    code, stdout = _launch(data, out, "resume")
    assert code == 0, stdout[-4000:]
    for rank in range(2):
        before, after = _losses(out, "stall", rank), _losses(out, "resume", rank)
        assert sorted(after) == [STALL_STEP, STALL_STEP + 1]
        assert after[STALL_STEP] == before[STALL_STEP]  # same weights and AdamW state as at the kill: bit-exact
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == STALL_STEP + 1
    assert not list(ckpt.glob(".last.ckpt.*.old"))  # swaps that completed leave nothing aside
