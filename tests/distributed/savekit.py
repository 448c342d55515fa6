"""The 2-process FSDP2 fit of the crash-safe save test (``test_sharded_save.py``).

Run as a script (``python tests/distributed/savekit.py DATA OUT MODE``) it fine-tunes the tiny
generative reward task with ``FSDP2Strategy`` (fp32) on 2 CPU processes (gloo), saving a sharded
checkpoint every step (``epoch=0-step=N.ckpt`` folders and a re-saved ``last.ckpt`` folder), and
appends each rank's step losses to ``OUT/MODE-rank<r>.jsonl``. In ``stall`` mode, rank 0's write of
``meta.pt`` for ``last.ckpt`` at step 2 -- after every rank has written its shard files -- writes
half the file, touches ``OUT/stalled`` and hangs, for the test to SIGKILL the process group. In
``resume`` mode it resumes from ``OUT/ckpt/last.ckpt``. Lightning starts rank 1 by running the same
command again.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    from strategykit import BATCH_SIZE, make_task  # run as a script: its folder is on sys.path
except ImportError:
    from tests.distributed.strategykit import BATCH_SIZE, make_task

STALL_STEP = 3  # the save of last.ckpt after this step is killed (last.ckpt then holds step 2)


def main(data: str, out: str, mode: str) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rewarddance.data.datamodule import ShardDataModule
    from rewarddance.distributed import FSDP2Strategy

    torch.set_num_threads(1)
    folder = Path(out)

    class Recorder(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, task: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            with open(folder / f"{mode}-rank{trainer.global_rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": trainer.global_step, "loss": float(outputs["loss"])}) + "\n")
            if mode == "stall" and trainer.global_step == STALL_STEP and trainer.is_global_zero:
                _stall_last_meta(folder / "stalled")  # ModelCheckpoint saves after this hook

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=FSDP2Strategy(param_dtype="float32"),
        max_steps=4,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[
            Recorder(),
            ModelCheckpoint(dirpath=folder / "ckpt", save_last=True, save_top_k=-1, every_n_train_steps=1),
        ],
    )
    dm = ShardDataModule(train=data, batch_size=BATCH_SIZE, num_workers=0, shuffle=False)
    ckpt = str(folder / "ckpt" / "last.ckpt") if mode == "resume" else None
    trainer.fit(make_task("generative"), datamodule=dm, ckpt_path=ckpt)


def _stall_last_meta(marker: Path) -> None:
    real_save = torch.save

    def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not (str(f).endswith("meta.pt") and "last.ckpt" in str(f)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        marker.write_text(str(f))
        time.sleep(600)  # the test SIGKILLs the group here

    torch.save = half_save  # type: ignore[assignment]


if __name__ == "__main__":
    main(*sys.argv[1:4])
