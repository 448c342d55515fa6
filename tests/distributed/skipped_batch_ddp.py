"""The 2-process launch of the skipped-batch DDP test (``python tests/distributed/skipped_batch_ddp.py DATA OUT``).

A tiny pairwise reward task trains with ``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` for 3 steps;
at step 1 every sample of rank 1's batch is skipped (the batch the collator makes then: no model inputs, the
skips counted). Rank 1 must still join the step's gradient all-reduce, or rank 0 waits for it forever (Lightning
refuses a skipped step under DDP). Each rank writes its global step and a checksum of its weights to
``OUT/rank{R}.txt``: both ranks must finish in step with the same weights.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(data: str, out: Path) -> None:
    import lightning as L
    import torch

    from rewarddance.data.datamodule import ShardDataModule
    from rewarddance.tasks import GenerativeRewardTask

    torch.set_num_threads(1)

    class SkipAllOnRankOne(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch, *_: object) -> None:
            if trainer.global_rank == 1 and trainer.global_step == 1:
                batch.counts = {"bad_inputs": len(batch.keys)}
                batch.inputs = None

    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False, default_root_dir=out,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SkipAllOnRankOne()],
    )  # fmt: skip
    task = GenerativeRewardTask()
    trainer.fit(task, datamodule=ShardDataModule(train=data, batch_size=2, shuffle=False))
    checksum = sum(float(p.double().sum()) for p in task.parameters())
    (out / f"rank{trainer.global_rank}.txt").write_text(f"{trainer.global_step} {checksum!r}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
