"""A resumed fit (``--ckpt_path``) continues the same wandb run, unless the user set the logger's id.

In-process fits of the quickstart recipe on a 1-layer tiny Qwen2-VL (2 batches an epoch, no
validation), logging to an offline wandb run under ``tmp_path``: 2 steps, then a resume from
``last.ckpt`` to 4 steps. Offline wandb writes each ``wandb.init`` to its own
``wandb/offline-run-<time>-<id>`` folder (``wandb sync`` merges those of one id into one run), so
"the same run" is: the resumed logger's id equals the first one and every folder carries that id.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from rewarddance.cli import main
from rewarddance.wandb_resume import WandbRunId, recorded_run_id, resume_wandb_run

wandb = pytest.importorskip("wandb")

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "{hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64, vision_hidden_size: 32,"
    " vision_depth: 1, vision_heads: 1, vision_intermediate_size: 64, image_size: 32, patch_size: 8}"
)


def _config(root: Path) -> Path:
    shapes = ROOT / "data" / "shapes"
    text = f"""
test_after_fit: false
trainer:
  max_time: null
  max_steps: 2
  limit_train_batches: 2
  limit_val_batches: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    init_args: {{save_dir: {root}}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root / "ckpt"}, save_last: true, save_top_k: 0}}
model:
  init_args: {{backbone: tiny-qwen2-vl, backbone_kwargs: {TINY}, export: false}}
data:
  init_args: {{train: {shapes / "train"}, val: {shapes / "val"}, test: null, batch_size: 4, num_workers: 0,
    shuffle_buffer: 16}}
"""
    path = root / "resume.yaml"
    path.write_text(text)
    return path


def _fit(root: Path, *extra: str):
    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    args += ["--trainer", str(ROOT / "configs" / "trainer" / "wandb.yaml"), "--config", str(_config(root)), *extra]
    try:
        return main(args)
    finally:
        wandb.finish()  # the next WandbLogger in this process would otherwise reuse the live run


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


def _run_folders(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


def _logged_steps(folder: Path) -> set[int]:
    """The ``trainer/global_step`` values of the history rows in an offline run's ``run-<id>.wandb``.

    That file is a 7-byte header then a LevelDB log: 32 KiB blocks of chunks (crc32, length, type),
    each record a ``wandb_internal_pb2.Record`` split over FULL(1) or FIRST..LAST(4) chunks.
    """
    from wandb.proto import wandb_internal_pb2

    data = next(folder.glob("run-*.wandb")).read_bytes()
    pos, record, steps = 7, b"", set()
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        record, pos = record + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record.FromString(record)
            record = b""
            items = parsed.history.item if parsed.HasField("history") else []
            steps |= {int(i.value_json) for i in items if (i.key or "/".join(i.nested_key)) == "trainer/global_step"}
    return steps


def test_resume_continues_the_same_wandb_run(offline):
    first = _fit(offline)
    run_id = first.trainer.logger.version
    assert run_id and first.trainer.global_step == 2
    last = offline / "ckpt" / "last.ckpt"
    assert recorded_run_id(last) == run_id
    assert torch.load(last, weights_only=True)["callbacks"][WandbRunId.__qualname__] == {"run_id": run_id}

    time.sleep(1.0)  # offline folders are named by the second of wandb.init: same second, same id -> same folder
    resumed = _fit(offline, "--ckpt_path", str(last), "--trainer.max_steps", "4")
    assert resumed.trainer.global_step == 4
    assert resumed.trainer.logger.version == run_id
    assert resumed.config["fit"]["trainer"]["logger"]["init_args"]["resume"] == "allow"
    folders = _run_folders(offline)
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders), folders
    # Each folder got its own steps (0-based global_step of the logged rows): the resumed ones went to the same id.
    # wandb's service process writes the run file asynchronously, and once (a quiet CI machine) the resumed run's
    # history was read before it landed: read again until it matches, for at most 30 s.
    deadline = time.monotonic() + 30.0
    while (logged := [_logged_steps(f) for f in folders]) != [{0, 1}, {2, 3}] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logged == [{0, 1}, {2, 3}]
    assert recorded_run_id(last) == run_id  # the resumed fit's own last.ckpt keeps it


def test_explicit_logger_id_wins_over_the_checkpoint(offline):
    _fit(offline)
    last = offline / "ckpt" / "last.ckpt"
    run_id = recorded_run_id(last)
    assert run_id and run_id != "other"
    resumed = _fit(
        offline, "--ckpt_path", str(last), "--trainer.max_steps", "3", "--trainer.logger.init_args.id", "other"
    )
    assert resumed.trainer.logger.version == "other"
    assert {f.name.rsplit("-", 1)[1] for f in _run_folders(offline)} == {run_id, "other"}


def test_sharded_folder_symbolic_paths_and_checkpoints_without_an_id(tmp_path):
    # A sharded FSDP2 checkpoint (ModelParallelStrategy) is a folder whose meta.pt holds the callbacks' state.
    sharded = tmp_path / "epoch=0-step=2.ckpt"
    sharded.mkdir()
    torch.save({"callbacks": {WandbRunId.__qualname__: {"run_id": "abc123"}}}, sharded / "meta.pt")
    plain = tmp_path / "plain.ckpt"
    torch.save({"callbacks": {}, "global_step": 2}, plain)

    def config(ckpt_path: str, **init_args: str) -> Namespace:
        logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(**init_args))
        return Namespace(ckpt_path=ckpt_path, trainer=Namespace(logger=logger))

    resumed = config(str(sharded), id=None, version=None, resume=None)
    assert resume_wandb_run(resumed) == "abc123"
    assert resumed.trainer.logger.init_args == Namespace(id="abc123", version=None, resume="allow")
    for unchanged in (
        config("last", id=None, resume=None),  # resolved by Lightning later
        config(str(plain), id=None, resume=None),  # no id recorded
        config(str(sharded), id="mine", resume=None),  # the user's id wins
        config(str(tmp_path / "missing.ckpt"), id=None, resume=None),  # Lightning reports it
    ):
        before = unchanged.clone()
        assert resume_wandb_run(unchanged) is None and unchanged == before
    csv = Namespace(ckpt_path=str(sharded), trainer=Namespace(logger=Namespace(class_path="x.CSVLogger")))
    assert resume_wandb_run(csv) is None
