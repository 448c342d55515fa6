"""Checkpoints survive kills: atomic saves, plain-data loads, and SIGKILLed fits that resume exactly.

The fault tests run ``python -m rewarddance fit`` (the quickstart recipe on a 1-layer tiny Qwen2-VL,
3 epochs of 4 batches; or the ReFL recipe on the bundled tiny generator, 8 steps of 3-step epochs) in
subprocesses: uninterrupted; killed with SIGKILL (at an epoch end half-way through writing
``last.ckpt``; mid-epoch between two saves; mid-epoch half-way through a save); resumed from the
``last.ckpt`` left behind. Each run is in its own process group and is SIGKILLed on a hard timeout.

Why the resumed run is *bitwise* identical to the uninterrupted one: the training stream
(``ShardStream``) draws its shard order and shuffle buffer from ``(seed, epoch, rank, worker)`` alone,
and every checkpoint carries the loader's position in the epoch (``StreamLoader.state_dict``: per
DataLoader worker the slots consumed and samples yielded, and whose batch is next), so a resume
continues with exactly the batches that come next; the RL prompt loader keeps its generator states
the same way. Everything else needed is in the checkpoint (weights, AdamW state, loop counters, the
RL task's history and reward window); Lightning does not save RNG states, which is fine here because
the reward training draws no random numbers (no dropout, no sampling) and the RL task seeds its noise
from the step -- the step log asserts the same batches and losses, so a change that breaks this fails
here visibly. One thread on CPU, so the float arithmetic is reproducible and the comparison is exact
(``torch.equal``), without tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from rewarddance.checkpointing import AtomicCheckpointIO, UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # per fit; each takes ~8 s here (mostly imports)
STEP_LOG = "REWARDDANCE_TEST_STEP_LOG"
STALL = "REWARDDANCE_TEST_STALL_LAST_SAVE_AT_EPOCH"
STALL_STEP = "REWARDDANCE_TEST_STALL_LAST_SAVE_AT_STEP"
HANG_STEP = "REWARDDANCE_TEST_HANG_AT_STEP"
TINY = (
    "{hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64, vision_hidden_size: 32,"
    " vision_depth: 1, vision_heads: 1, vision_intermediate_size: 64, image_size: 32, patch_size: 8}"
)


class StepRecorder(L.Callback):
    """Loaded by the subprocess fits (``tests.test_fault_resume.StepRecorder``): logs every step's
    sample keys and loss to ``$REWARDDANCE_TEST_STEP_LOG``; with ``$REWARDDANCE_TEST_STALL_...=E`` it
    makes the save of ``last.ckpt`` at the end of epoch E write half the file and hang, to be killed."""

    def _log(self, **record: Any) -> None:
        with open(os.environ[STEP_LOG], "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, task: Any) -> None:
        self._log(event="start", io=type(trainer.strategy.checkpoint_io).__name__, step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, task: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = None if outputs is None else float(outputs["loss"])
        keys = batch.keys if hasattr(batch, "keys") else [item["prompt"] for item in batch]  # reward or RL batch
        self._log(
            event="step", step=trainer.global_step, epoch=trainer.current_epoch, keys=keys, loss=loss,
            **({"rank": trainer.global_rank} if trainer.world_size > 1 else {}),
        )  # fmt: skip
        marker = Path(os.environ[STEP_LOG]).with_suffix(".stalled")
        if os.environ.get(HANG_STEP) == str(trainer.global_step):  # mid-epoch, between two saves
            marker.write_text("0")
            time.sleep(3 * TIMEOUT_S)  # the test SIGKILLs us here
        if os.environ.get(STALL_STEP) == str(trainer.global_step):  # ModelCheckpoint saves after this hook
            self._stall_next_last_save(marker)

    def on_train_epoch_end(self, trainer: L.Trainer, task: Any) -> None:
        # Runs before ModelCheckpoint's own on_train_epoch_end (Lightning calls checkpoint callbacks last).
        if os.environ.get(STALL) == str(trainer.current_epoch):
            self._stall_next_last_save(Path(os.environ[STEP_LOG]).with_suffix(".stalled"))

    @staticmethod
    def _stall_next_last_save(marker: Path) -> None:
        real_save = torch.save

        def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if "last.ckpt" not in str(getattr(f, "name", f)):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            marker.write_text(str(len(data)))
            time.sleep(3 * TIMEOUT_S)  # the test SIGKILLs us here, mid-save

        torch.save = half_save  # type: ignore[assignment]

    def on_train_end(self, trainer: L.Trainer, task: Any) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._log(event="end", step=trainer.global_step, metrics=metrics)


def _config(root: Path, workers: int = 0, every_n_train_steps: int | None = None) -> Path:
    """The tiny fit; checkpoints every epoch, or (mid-epoch) every ``every_n_train_steps`` steps."""
    ckpt = root / "ckpt"
    every = f"every_n_train_steps: {every_n_train_steps}" if every_n_train_steps else "every_n_epochs: 1"
    text = f"""
test_after_fit: false
trainer:
  max_time: null
  max_steps: -1
  max_epochs: 3
  limit_train_batches: 4
  val_check_interval: 1.0
  check_val_every_n_epoch: 1
  limit_val_batches: 2
  deterministic: true
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: tests.test_fault_resume.StepRecorder
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {ckpt}, save_last: true, save_top_k: -1, {every}, save_on_train_epoch_end: true}}
model:
  init_args: {{backbone: tiny-qwen2-vl, backbone_kwargs: {TINY}, export: false}}
data:
  init_args: {{batch_size: 4, num_workers: {workers}, shuffle_buffer: 16}}
"""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fault.yaml").write_text(text)
    return root / "fault.yaml"


def _rl_config(root: Path) -> Path:
    """The RL recipe (ReFL) on the bundled tiny generator, shrunk: 6 prompts in batches of 2 (3 steps an
    epoch) from the in-memory ``shapes:train`` set, 2 workers, the toy colour reward, a save every 2 steps."""
    text = f"""
trainer:
  max_time: null
  max_steps: 8
  enable_progress_bar: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: ""}}
  callbacks:
    - class_path: tests.test_fault_resume.StepRecorder
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root / "ckpt"}, save_last: true, save_top_k: -1, every_n_train_steps: 2}}
model:
  init_args:
    reward: shapes-color
    height: 32
    width: 32
    num_inference_steps: 4
    refl: {{t_min: 2, t_max: 3, anchor_weight: 0}}
    eval_every: null
data:
  init_args: {{per_tag: 1, batch_size: 2, num_workers: 2, val: null}}
"""
    root.mkdir(parents=True, exist_ok=True)
    (root / "rl.yaml").write_text(text)
    return root / "rl.yaml"


def _fit(
    root: Path,
    log: str,
    *extra: str,
    stall: int | None = None,
    hang: dict[str, int] | None = None,
    rl: bool = False,
    **config: Any,
) -> tuple[int, str]:
    """Run the fit (the quickstart recipe, or with ``rl`` the ReFL one); with ``stall`` (an epoch) or ``hang``
    ({env var: step}), SIGKILL it once it hangs (half-way through saving last.ckpt, or between two steps).
    ``config``: options of :func:`_config`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", STEP_LOG: str(root / log)}
    for name in (STALL, STALL_STEP, HANG_STEP, "LOCAL_RANK"):
        env.pop(name, None)
    if stall is not None:
        env[STALL] = str(stall)
    env.update({k: str(v) for k, v in (hang or {}).items()})
    stall = stall if hang is None else 0  # either way: wait for the marker, then kill
    recipe = (
        ("configs/rl/shapes_refl.yaml", _rl_config(root))
        if rl
        else ("configs/quickstart.yaml", _config(root, **config))
    )
    cmd = [sys.executable, "-m", "rewarddance", "fit", "--config", recipe[0], "--config", str(recipe[1]), *extra]
    marker = (root / log).with_suffix(".stalled")
    out_path = root / f"{log}.out"
    with open(out_path, "w") as out:  # a file, not a pipe: nobody reads a pipe while we poll
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while stall is not None and not marker.exists() and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, TIMEOUT_S)
                time.sleep(0.05)
            if stall is not None and marker.exists():
                os.killpg(proc.pid, signal.SIGKILL)  # kill -9, mid-save
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"fit did not finish in {TIMEOUT_S} s; output:\n{out_path.read_text()[-4000:]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out_path.read_text()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.timeout(4 * TIMEOUT_S)
def test_sigkill_during_save_then_resume_equals_uninterrupted_run(tmp_path):
    io_ = AtomicCheckpointIO()
    ref, run = tmp_path / "ref", tmp_path / "run"

    code, out = _fit(ref, "steps.jsonl")
    assert code == 0, out[-4000:]
    reference = _records(ref / "steps.jsonl")
    assert reference[0] == {"event": "start", "io": "AtomicCheckpointIO", "step": 0}  # the CLI's default
    ref_steps = [r for r in reference if r["event"] == "step"]
    assert [r["step"] for r in ref_steps] == list(range(1, 13))

    code, out = _fit(run, "killed.jsonl", stall=1)
    assert code == -signal.SIGKILL, f"expected a kill mid-save, got exit code {code}:\n{out[-4000:]}"
    # Killed half-way through replacing last.ckpt (epoch 1): the target still holds epoch 0's
    # complete checkpoint, and the half-written bytes are only in the temporary file.
    last = run / "ckpt" / "last.ckpt"
    assert io_.load_checkpoint(last)["global_step"] == 4
    partial = [p for p in (run / "ckpt").iterdir() if p.name.startswith(".last.ckpt.") and p.suffix == ".tmp"]
    assert len(partial) == 1
    full_size = int((run / "killed.stalled").read_text())
    assert partial[0].stat().st_size == full_size // 2
    with pytest.raises(Exception):  # noqa: B017 - any failure to read: it is truncated
        torch.load(partial[0], weights_only=True)
    killed_steps = [r for r in _records(run / "killed.jsonl") if r["event"] == "step"]
    assert killed_steps == ref_steps[:8]  # it got through epochs 0 and 1 before the kill

    code, out = _fit(run, "resumed.jsonl", "--ckpt_path", str(last))
    assert code == 0, out[-4000:]
    resumed = _records(run / "resumed.jsonl")
    assert resumed[0] == {"event": "start", "io": "AtomicCheckpointIO", "step": 4}
    # Same batches, same losses, from epoch 1 on, and the same final validation metrics...
    assert [r for r in resumed if r["event"] == "step"] == ref_steps[4:]
    assert resumed[-1] == reference[-1] and reference[-1]["metrics"]
    # ...and bitwise the same final weights, optimizer state and loop state.
    final_ref = io_.load_checkpoint(ref / "ckpt" / "epoch=2-step=12.ckpt")
    final_run = io_.load_checkpoint(run / "ckpt" / "epoch=2-step=12.ckpt")
    for key in ("state_dict", "optimizer_states", "global_step", "epoch", "loops"):
        _assert_same(final_ref[key], final_run[key], key)


@pytest.fixture(scope="module")
def mid_epoch_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The uninterrupted mid-epoch-checkpointing fit (2 workers, a save every 3 steps of 4-step epochs)."""
    ref = tmp_path_factory.mktemp("ref")
    code, out = _fit(ref, "steps.jsonl", workers=2, every_n_train_steps=3)
    assert code == 0, out[-4000:]
    return ref, _records(ref / "steps.jsonl")


@pytest.mark.timeout(4 * TIMEOUT_S)
@pytest.mark.parametrize(
    ("hang", "resumed_from"),
    [
        # kill -9 half-way through writing last.ckpt at step 6: it still holds step 3, epoch 0's third batch
        pytest.param({STALL_STEP: 6}, 3, id="kill-during-save"),
        # kill -9 between two saves: last.ckpt is step 9, epoch 2's first batch (slow: the same path, 2 more fits)
        pytest.param({HANG_STEP: 10}, 9, id="kill-between-saves", marks=pytest.mark.slow),
    ],
)
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, mid_epoch_reference, hang, resumed_from):
    """Checkpoints taken in the middle of an epoch carry the stream's position (two DataLoader workers,
    a shuffle buffer): the resumed run trains on exactly the batches the uninterrupted one did."""
    ref, reference = mid_epoch_reference
    ref_steps = [r for r in reference if r["event"] == "step"]
    assert [r["step"] for r in ref_steps] == list(range(1, 13))
    io_ = AtomicCheckpointIO()

    code, out = _fit(tmp_path, "killed.jsonl", hang=hang, workers=2, every_n_train_steps=3)
    assert code == -signal.SIGKILL, f"expected a kill, got exit code {code}:\n{out[-4000:]}"
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = io_.load_checkpoint(last)
    assert saved["global_step"] == resumed_from and resumed_from % 4 != 0  # mid-epoch
    [position] = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["ranks"]
    assert (position["epoch"], position["batches"], position["num_workers"]) == (resumed_from // 4, resumed_from % 4, 2)

    code, out = _fit(tmp_path, "resumed.jsonl", "--ckpt_path", str(last), workers=2, every_n_train_steps=3)
    assert code == 0, out[-4000:]
    resumed = _records(tmp_path / "resumed.jsonl")
    assert resumed[0] == {"event": "start", "io": "AtomicCheckpointIO", "step": resumed_from}
    assert [r for r in resumed if r["event"] == "step"] == ref_steps[resumed_from:]  # same batches, same losses
    assert resumed[-1] == reference[-1] and reference[-1]["metrics"]
    final_ref = io_.load_checkpoint(ref / "ckpt" / "epoch=2-step=12.ckpt")
    final_run = io_.load_checkpoint(tmp_path / "ckpt" / "epoch=2-step=12.ckpt")
    for key in ("state_dict", "optimizer_states", "global_step", "epoch", "loops"):
        _assert_same(final_ref[key], final_run[key], key)


@pytest.mark.slow
@pytest.mark.timeout(4 * TIMEOUT_S)
def test_ddp_fit_killed_mid_epoch_then_resumed_equals_uninterrupted_run(tmp_path):
    """The same under DDP (2 processes, gloo, 2 workers each): every rank's position is in the checkpoint."""
    # point_samples: pointwise, so no rank ever draws a batch without a trainable row (a training_step that
    # returns None is not allowed under DDP).
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--model.init_args.point_samples", "pointwise")
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, out = _fit(ref, "steps.jsonl", *ddp, workers=2, every_n_train_steps=3)
    assert code == 0, out[-4000:]

    def steps(path: Path) -> list[dict[str, Any]]:
        return sorted((r for r in _records(path) if r["event"] == "step"), key=lambda r: (r["rank"], r["step"]))

    ref_steps = steps(ref / "steps.jsonl")
    assert [(r["rank"], r["step"]) for r in ref_steps] == [(k, s) for k in range(2) for s in range(1, 13)]
    assert not set(ref_steps[0]["keys"]) & set(ref_steps[12]["keys"])  # the ranks read different samples

    code, out = _fit(run, "killed.jsonl", *ddp, hang={HANG_STEP: 10}, workers=2, every_n_train_steps=3)
    assert code == -signal.SIGKILL, f"expected a kill, got exit code {code}:\n{out[-4000:]}"
    io_ = AtomicCheckpointIO()
    last = run / "ckpt" / "last.ckpt"
    saved = io_.load_checkpoint(last)
    ranks = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["ranks"]
    assert saved["global_step"] == 9 and [(r["rank"], r["epoch"], r["batches"]) for r in ranks] == [
        (0, 2, 1),
        (1, 2, 1),
    ]

    code, out = _fit(run, "resumed.jsonl", *ddp, "--ckpt_path", str(last), workers=2, every_n_train_steps=3)
    assert code == 0, out[-4000:]
    assert steps(run / "resumed.jsonl") == [r for r in ref_steps if r["step"] > 9]
    final_ref = io_.load_checkpoint(ref / "ckpt" / "epoch=2-step=12.ckpt")
    final_run = io_.load_checkpoint(run / "ckpt" / "epoch=2-step=12.ckpt")
    for key in ("state_dict", "optimizer_states", "global_step", "epoch", "loops"):
        _assert_same(final_ref[key], final_run[key], key)


@pytest.mark.timeout(4 * TIMEOUT_S)
def test_rl_fit_killed_mid_epoch_then_resumed_equals_uninterrupted_run(tmp_path):
    """ReFL with the in-memory prompt set: kill -9 at step 6 (last.ckpt: step 4, one batch into epoch 1)."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, out = _fit(ref, "steps.jsonl", rl=True)
    assert code == 0, out[-4000:]
    reference = _records(ref / "steps.jsonl")
    ref_steps = [r for r in reference if r["event"] == "step"]
    assert [(r["step"], r["epoch"]) for r in ref_steps] == [(s, (s - 1) // 3) for s in range(1, 9)]

    code, out = _fit(run, "killed.jsonl", hang={HANG_STEP: 6}, rl=True)
    assert code == -signal.SIGKILL, f"expected a kill, got exit code {code}:\n{out[-4000:]}"
    last = run / "ckpt" / "last.ckpt"
    io_ = AtomicCheckpointIO()
    assert io_.load_checkpoint(last)["global_step"] == 4

    code, out = _fit(run, "resumed.jsonl", "--ckpt_path", str(last), rl=True)
    assert code == 0, out[-4000:]
    resumed = [r for r in _records(run / "resumed.jsonl") if r["event"] == "step"]
    assert resumed == ref_steps[4:]  # the same prompts and losses from step 5 on
    final_ref = io_.load_checkpoint(ref / "ckpt" / "epoch=2-step=8.ckpt")
    final_run = io_.load_checkpoint(run / "ckpt" / "epoch=2-step=8.ckpt")
    for key in ("state_dict", "optimizer_states", "global_step", "epoch", "loops", "rewarddance_rl"):
        _assert_same(final_ref[key], final_run[key], key)


def test_interrupted_save_leaves_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    io_ = AtomicCheckpointIO()
    target = tmp_path / "ckpt" / "last.ckpt"
    old = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 1}
    io_.save_checkpoint(old, target)
    _assert_same(io_.load_checkpoint(target), old)

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="simulated"):
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 2}, target)
    monkeypatch.undo()

    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # temporary file removed
    _assert_same(io_.load_checkpoint(target), old)
    new = {"state_dict": {"w": torch.ones(4)}, "global_step": 3}
    io_.save_checkpoint(new, target)  # and the next save replaces it
    _assert_same(io_.load_checkpoint(target), new)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def _mark(path: str) -> str:
    Path(path).write_text("code ran")
    return "x"


class Payload:
    """Unpickling this runs ``_mark``: what an attacker's object would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return _mark, (self.path,)


@pytest.mark.parametrize("weights_only", [None, False])
def test_checkpoint_with_pickled_object_is_refused(tmp_path, weights_only):
    path, ran = tmp_path / "evil.ckpt", tmp_path / "ran.txt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"x": Payload(ran)}}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        AtomicCheckpointIO().load_checkpoint(path, weights_only=weights_only)
    message = str(err.value)
    assert (
        str(path) in message
        and "_mark" in message
        and "arbitrary code" in message
        and "--weights_only false" in message
    )
    assert isinstance(err.value, pickle.UnpicklingError)
    assert not ran.exists()  # refused without running the payload
    with pytest.raises(FileNotFoundError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((), ("SingleDeviceStrategy", "AtomicCheckpointIO")),
        (("--trainer.strategy", "ddp"), ("DDPStrategy", "AtomicCheckpointIO")),
        (  # the user's own plugin wins
            ("--trainer.plugins", "lightning.pytorch.plugins.io.TorchCheckpointIO"),
            ("SingleDeviceStrategy", "TorchCheckpointIO"),
        ),
        (  # sharded checkpoints are torch.distributed.checkpoint's business: left alone
            ("--trainer.strategy", "{class_path: lightning.pytorch.strategies.ModelParallelStrategy}"),
            ("ModelParallelStrategy", "TorchCheckpointIO"),
        ),
    ],
)
def test_cli_uses_atomic_checkpoint_io_by_default(tmp_path, monkeypatch, extra, expected):
    from rewarddance.cli import RewardDanceCLI

    class BuildOnly(RewardDanceCLI):
        def _run_subcommand(self, subcommand: str) -> None:
            pass

    monkeypatch.chdir(ROOT)
    args = ["fit", "--config", "configs/quickstart.yaml", "--config", str(_config(tmp_path)), *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = BuildOnly(args=args, subclass_mode_model=True, subclass_mode_data=True)
    strategy = cli.trainer.strategy
    assert (type(strategy).__name__, type(strategy.checkpoint_io).__name__) == expected
