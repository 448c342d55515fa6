"""The runs of the strategy tests, and the entry point of their 2-process launch.

Run as a script (``python tests/distributed/strategykit.py DATA OUT SCENARIO...``) it trains, one
scenario after the other in the same two processes (Lightning starts rank 1 by running the same
command again), the reward tasks on ``DATA`` with ``Trainer(accelerator="cpu", devices=2)`` and
writes per scenario and rank what the test compares (``OUT/<scenario>-rank<r>.json``): the loss
and the sample keys of every step, the batch counts, the local shard sizes, which parameters
train and which changed. The test computes the single-process reference from the same keys.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

TASK_KWARGS: dict[str, Any] = {"backbone": "tiny-qwen2-vl", "template": "short"}
BATCH_SIZE = 2  # pairs per rank and step
LR = 1e-3
CLIP = 1.0
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}  # no dropout: the reference must draw the same numbers

SCENARIOS: dict[str, dict[str, Any]] = {
    # strategy: "ddp", "model_parallel", or FSDP2Strategy keyword arguments
    "ddp": {"task": "generative", "strategy": "ddp"},
    "fsdp": {
        "task": "generative",
        "strategy": {"param_dtype": "float32", "activation_checkpointing": True},
        "checkpoint": True,
    },
    "fsdp_resume": {
        "task": "generative",
        "strategy": {"param_dtype": "float32", "activation_checkpointing": True},
        "resume": "fsdp",
    },
    "fsdp_regressive": {
        "task": "regressive",
        "strategy": {"param_dtype": "float32", "reshard_after_forward": False},
        "export": True,
    },
    "fsdp_lora": {
        "task": "generative",
        "lora": True,
        "strategy": {"param_dtype": "float32", "activation_checkpointing": True, "cpu_offload": True},
        "export": True,
    },
    # Lightning's own ModelParallelStrategy (no rewarddance settings: fp32, no checkpointing).
    "model_parallel": {"task": "generative", "strategy": "model_parallel"},
    # configs/trainer/fsdp.yaml's settings: bf16 compute, fp32 reductions, activation checkpointing.
    "fsdp_bf16": {"task": "generative", "strategy": {"param_dtype": "bfloat16", "activation_checkpointing": True}},
}


FAMILIES = ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-internvl")
"""Sharded by hand (``shard_task``) in the ``families`` scenario, after the fits (which start rank 1)."""


def make_task(kind: str, lora: bool = False, export_dir: str | None = None, backbone: str | None = None) -> Any:
    from rewarddance.models import LoraSettings
    from rewarddance.tasks import GenerativeRewardTask, RegressiveRewardTask

    cls = GenerativeRewardTask if kind == "generative" else RegressiveRewardTask
    return cls(
        **{**TASK_KWARGS, **({"backbone": backbone} if backbone else {})},
        lora=LoraSettings(**LORA) if lora else None,
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.0),
        export=export_dir is not None,
        export_dir=export_dir,
    )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _run(data: str, out: Path, name: str) -> None:
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy

    from rewarddance.data.datamodule import ShardDataModule
    from rewarddance.distributed import FSDP2Strategy, full_state_dict, is_sharded

    spec = SCENARIOS[name]
    record: dict[str, Any] = {"steps": [], "started": time.time()}

    class Recorder(L.Callback):
        def on_train_start(self, trainer: L.Trainer, task: Any) -> None:
            params = dict(task.named_parameters())
            record["trainable"] = sorted(n for n, p in params.items() if p.requires_grad)
            record["local_numel"] = sum(_local(p.detach()).numel() for p in params.values())
            record["numel"] = sum(p.numel() for p in params.values())
            record["dtensors"] = sum(hasattr(p, "to_local") for p in params.values())
            record["batches_per_epoch"] = len(trainer.train_dataloader)
            self.before = {n: _local(p.detach()).clone() for n, p in params.items()}

        def on_train_batch_end(self, trainer: L.Trainer, task: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            padding = batch.pair_padding.tolist()
            record["steps"].append({"loss": float(outputs["loss"]), "keys": batch.keys, "padding": padding})

        def on_train_end(self, trainer: L.Trainer, task: Any) -> None:
            after = {n: _local(p.detach()) for n, p in task.named_parameters()}
            record["changed"] = sorted(n for n, t in after.items() if not torch.equal(t, self.before[n]))
            if spec.get("lora"):  # the trained adapters, gathered (every rank takes part), for the export check
                state = full_state_dict(task) if is_sharded(task) else task.state_dict()
                if trainer.is_global_zero:
                    (out / name).mkdir(parents=True, exist_ok=True)
                    torch.save({k: v for k, v in state.items() if "lora_" in k}, out / name / "adapters.pt")

    if spec["strategy"] == "model_parallel":
        strategy: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    else:
        strategy = spec["strategy"] if spec["strategy"] == "ddp" else FSDP2Strategy(**spec["strategy"])
    export_dir = str(out / name / "export") if spec.get("export") else None
    L.seed_everything(0, verbose=False)
    task = make_task(spec["task"], spec.get("lora", False), export_dir)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=1,
        gradient_clip_val=CLIP,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=bool(spec.get("checkpoint")),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out / name),
        callbacks=[Recorder()],
    )
    dm = ShardDataModule(train=data, batch_size=BATCH_SIZE, num_workers=0, shuffle=False)
    ckpt_path = None
    if spec.get("resume"):
        # Each rank reads the record it wrote itself (rank 0's may not be written yet: no barrier between
        # scenarios); ModelCheckpoint knows the path on every rank, and Lightning loads from rank 0's anyway.
        rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning's launcher for rank 1; one node
        ckpt_path = json.loads((out / f"{spec['resume']}-rank{rank}.json").read_text())["checkpoint"]
        trainer.fit_loop.max_epochs = 2
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    callback = trainer.checkpoint_callback
    record["checkpoint"] = (
        (callback.best_model_path or callback.last_model_path)
        if callback is not None and spec.get("checkpoint")
        else None
    )
    record["seconds"] = time.time() - record.pop("started")
    (out / f"{name}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


def task_loss(task: Any, batch: Any) -> torch.Tensor:
    weights = task.loss_weights()
    return sum(weights.get(name, 1.0) * value for name, value in task.loss_terms(batch).items())


def _families(data: str, out: Path) -> None:
    """Every family's generative and regressive task, sharded over both ranks (fp32 and bf16 compute)
    against the same task unsharded: loss and full gradient, on the same batch on both ranks (so the
    averaged gradient equals the single one)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from rewarddance.data.schema import decode_sample
    from rewarddance.data.stream import iter_tar_samples, resolve_shards
    from rewarddance.distributed import ShardSettings, shard_task, transformer_blocks

    assert dist.is_initialized(), "run the families scenario after a fit (which starts the process group)"
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    raws = [raw for info in resolve_shards(data) for raw in iter_tar_samples(info.url)]
    samples = [decode_sample(raw, load_references=False) for raw in raws[:2]]
    record: dict[str, Any] = {}
    for family in FAMILIES:
        for kind in ("generative", "regressive"):
            torch.manual_seed(0)
            task = make_task(kind, backbone=family)
            task.configure_model()
            if kind == "regressive":  # the head starts at zero: give the body's gradients something to carry
                torch.nn.init.normal_(task.head.linear.weight, std=0.1)
            batch = task.collate(samples)
            copies = {dtype: copy.deepcopy(task) for dtype in ("float32", "bfloat16")}
            loss = task_loss(task, batch)
            loss.backward()
            reference = {n: p.grad for n, p in task.named_parameters() if p.grad is not None}
            entry: dict[str, Any] = {
                "blocks": sorted({type(b).__name__ for b in transformer_blocks(task.model)}),
                "n_blocks": len(transformer_blocks(task.model)),
                "loss": loss.item(),
            }
            for dtype, sharded in copies.items():
                sharded._device_mesh = mesh
                shard_task(sharded, ShardSettings(param_dtype=None if dtype == "float32" else dtype))
                sharded_loss = task_loss(sharded, batch)
                sharded_loss.backward()
                grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters() if p.grad is not None}
                num = sum(float((grads[n] - g).pow(2).sum()) for n, g in reference.items())
                den = sum(float(g.pow(2).sum()) for g in reference.values())
                entry[dtype] = {
                    "loss": sharded_loss.item(),
                    "grad_rel_error": (num / den) ** 0.5,
                    "same_grads": sorted(grads) == sorted(reference),
                }
            record[f"{family}/{kind}"] = entry
    (out / f"families-rank{dist.get_rank()}.json").write_text(json.dumps(record))


def main(data: str, out: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    for name in names:
        if name == "families":
            _families(data, Path(out))
        else:
            _run(data, Path(out), name)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(f"usage: {sys.argv[0]} DATA OUT SCENARIO... (scenarios: {', '.join(SCENARIOS)}, families)")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
