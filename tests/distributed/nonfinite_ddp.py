"""The 2-process launch of the guard's DDP test (``python tests/distributed/nonfinite_ddp.py DATA OUT``).

A tiny pairwise reward task trains with ``Trainer(accelerator="cpu", devices=2, strategy="ddp")``; at step 1 the
loss turns NaN on rank 1 only. Every rank must stop at that step (rank 0's own loss is finite: only the reduced
decision stops it) instead of waiting for rank 1 in the gradient all-reduce. Rank 0 writes the error to
``OUT/rank0.txt`` (Lightning kills the other ranks when rank 0 leaves ``fit`` with an error).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(data: str, out: Path) -> None:
    import lightning as L
    import torch

    from rewarddance.callbacks import NonFiniteError
    from rewarddance.data.datamodule import ShardDataModule
    from rewarddance.tasks import GenerativeRewardTask

    torch.set_num_threads(1)

    class NanOnRankOne(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, *_: object) -> None:
            if trainer.global_rank == 1 and trainer.global_step == 1:
                layer = dict(task.named_modules())["model.model.language_model.layers.3.mlp.down_proj"]
                layer.register_forward_hook(lambda module, args, output: output * float("nan"))

    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False, default_root_dir=out,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[NanOnRankOne()],
    )  # fmt: skip
    try:
        trainer.fit(GenerativeRewardTask(), datamodule=ShardDataModule(train=data, batch_size=2, shuffle=False))
    except NonFiniteError as error:
        (out / f"rank{trainer.global_rank}.txt").write_text(str(error))
        return
    sys.exit("trained on through a NaN loss")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
