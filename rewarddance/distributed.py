"""FSDP2 sharding for the reward tasks, and the Lightning strategy that carries its settings.

Lightning's own ``strategy="fsdp"`` is FSDP1 and refuses CPUs (its accelerator connector raises
"The strategy `fsdp` requires a GPU accelerator" for ``accelerator="cpu"``, Lightning 2.6). The FSDP path here is
FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's ``ModelParallelStrategy``: the
strategy builds a device mesh, and the task's ``configure_model`` shards its modules over it with
:func:`shard_task`. The same code runs on 2 CPU processes (gloo, the test suite) and on many GPU
nodes (NCCL). See ``docs/scaling.md`` for the commands.

What is sharded (every parameter must belong to an FSDP unit, or its gradients would never be
averaged and the ranks would drift apart):

1. every transformer block: the language model's decoder layers and the vision tower's blocks,
   found generically (:func:`transformer_blocks`) so Qwen2/2.5/3-VL and InternVL all work;
2. the top transformers model, the root, with everything else: embeddings, LM head (with tied
   embeddings the head's weight *is* the embedding matrix, and FSDP2 wants a shared parameter in
   exactly one unit), patch embedding, projector, final norm. Its hooks run only when the model
   is called at the top: code that reads the VLM body directly (``model.model(...)``) must enter
   a sharded model at the top, as :func:`rewarddance.judge.readout.last_hidden_state` does;
3. every other child of the task with parameters (the regressive head), as its own root, in fp32.

Mixed precision is FSDP2's: parameters and optimizer states stay fp32 (sharded), each unit
computes in ``param_dtype`` (bf16) and gradients are reduced in ``reduce_dtype`` (fp32); the
roots hand their outputs back in fp32 so the loss math is unchanged. Keep the trainer's
``precision`` at its default (``32-true``) with this strategy.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from rewarddance.checkpointing import is_local_path
from rewarddance.models.dtypes import resolve_dtype
from rewarddance.models.lora import prepare_for_training, unwrap_peft

try:  # torch >= 2.6
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
except ImportError:  # torch 2.4 / 2.5
    from torch.distributed._composable.fsdp import (  # type: ignore[no-redef]
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

if TYPE_CHECKING:
    import lightning as L
    from torch.distributed.device_mesh import DeviceMesh

DType = Literal["bfloat16", "float32"]
"""Compute and reduction dtypes. No float16: it would need loss scaling, which FSDP2 does not do."""

BLOCK_SUFFIXES: tuple[str, ...] = ("DecoderLayer", "EncoderLayer", "VisionBlock", "VisionLayer")
"""Class-name endings of transformer blocks: ``Qwen2VLDecoderLayer``, ``Qwen3VLTextDecoderLayer``,
``Qwen2_5_VLVisionBlock``, ``InternVLVisionLayer``, ``Qwen2DecoderLayer`` (InternVL's language model)..."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSettings:
    """How :func:`shard_model` shards.

    Attributes:
        param_dtype: Compute dtype of the sharded units (FSDP2 mixed precision); None: the
            parameters' own dtype (no mixed precision).
        reduce_dtype: Dtype of the gradient reduce-scatter; None: ``param_dtype``.
        cpu_offload: Keep the sharded parameters, gradients and optimizer states in CPU memory;
            FSDP2 copies each unit to the GPU for its forward and backward.
        activation_checkpointing: Recompute each block's activations in the backward pass.
        reshard_after_forward: Free the gathered block parameters after the forward (ZeRO-3);
            False keeps them until the backward (ZeRO-2 like: more memory, less communication).
    """

    param_dtype: DType | None = None
    reduce_dtype: DType | None = None
    cpu_offload: bool = False
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True

    def mp_policy(self, *, root: bool) -> MixedPrecisionPolicy:
        """The unit's policy; roots return fp32 outputs (inner units stay in the compute dtype)."""
        if self.param_dtype is None:
            return MixedPrecisionPolicy(reduce_dtype=resolve_dtype(self.reduce_dtype))
        return MixedPrecisionPolicy(
            param_dtype=resolve_dtype(self.param_dtype),
            reduce_dtype=resolve_dtype(self.reduce_dtype),
            output_dtype=torch.float32 if root else None,
        )

    def offload_policy(self) -> OffloadPolicy:
        # Pinned memory needs a CUDA runtime; on a CPU-only machine offloading is a no-op anyway.
        return CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if self.cpu_offload else OffloadPolicy()


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------


def _is_block(module: nn.Module, names: set[str]) -> bool:
    cls = type(module).__name__
    return cls in names or cls.endswith(BLOCK_SUFFIXES)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a (PEFT-wrapped) VLM, outermost only, in module order.

    A block is a module whose class is in the model's ``_no_split_modules`` (transformers' own
    list of blocks that must stay whole) or whose class name ends with one of
    :data:`BLOCK_SUFFIXES`: decoder layers of the language model and blocks of the vision tower.
    """
    names: set[str] = set()
    for module in (model, unwrap_peft(model)):
        names |= set(getattr(module, "_no_split_modules", None) or ())
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if _is_block(module, names) and any(True for _ in module.parameters()):
            blocks.append(module)
            inside.update(id(m) for m in module.modules())
    return blocks


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``module`` or to a module inside it."""
    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    settings: ShardSettings | None = None,
) -> nn.Module:
    """Apply FSDP2 to a (PEFT-wrapped) VLM: each transformer block, then the root (everything else).

    Args:
        model: A transformers VLM, or a ``PeftModel`` around one (LoRA layers are sharded with the
            block they sit in; FSDP2 handles frozen and trainable parameters in one unit).
        mesh: The 1-D data-parallel device mesh to shard over.
        settings: Mixed precision, offload, activation checkpointing; default: none of them.

    Returns:
        ``model`` itself (sharded in place: its classes become FSDP subclasses, its parameters DTensors).

    Raises:
        ValueError: If no transformer block is found (the whole model would be one unit, i.e. no sharding
            of the working set: extend :data:`BLOCK_SUFFIXES` for the family).
    """
    settings = settings or ShardSettings()
    base = unwrap_peft(model)
    if settings.activation_checkpointing:
        prepare_for_training(base, gradient_checkpointing=True)  # non-reentrant; composes with FSDP2's hooks
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(
            f"No transformer block found in {type(base).__name__}; its block classes end with none of "
            f"{BLOCK_SUFFIXES} and it has no _no_split_modules."
        )
    common: dict[str, Any] = {"mesh": mesh, "offload_policy": settings.offload_policy()}
    for block in blocks:
        fully_shard(
            block,
            mp_policy=settings.mp_policy(root=False),
            reshard_after_forward=settings.reshard_after_forward,
            **common,
        )
    # The root of the model the task calls: the transformers model, not the PeftModel around it
    # (PEFT calls it through __call__, so its hooks run).
    fully_shard(base, mp_policy=settings.mp_policy(root=True), **common)
    return model


def _strategy_settings(task: L.LightningModule) -> ShardSettings:
    strategy = getattr(getattr(task, "_trainer", None), "strategy", None)
    return getattr(strategy, "shard_settings", None) or ShardSettings()


def _data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "The reward tasks shard with FSDP only (no tensor parallelism): use "
            "rewarddance.distributed.FSDP2Strategy, or ModelParallelStrategy(data_parallel_size=<world size>, "
            f"tensor_parallel_size=1); got a mesh of shape {tuple(mesh.shape)} {names}."
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard_task(task: L.LightningModule, settings: ShardSettings | None = None) -> None:
    """Shard a reward task over its data-parallel mesh (``task.device_mesh``); idempotent.

    Called from ``RewardTask.configure_model`` when Lightning's ``ModelParallelStrategy`` (or
    :class:`FSDP2Strategy`) has set ``task.device_mesh``. The backbone (``task.model``) gets
    :func:`shard_model`; every other child with parameters (the regressive head) becomes its own unit.

    Args:
        task: A LightningModule with ``model`` built (``RewardTask.configure_model`` calls this last).
        settings: Default: the strategy's ``shard_settings`` (:class:`FSDP2Strategy`), else none.
    """
    mesh = task.device_mesh
    if mesh is None:
        return
    mesh = _data_parallel_mesh(mesh)
    settings = settings or _strategy_settings(task)
    for name, child in task.named_children():
        if is_sharded(child) or not any(True for _ in child.parameters()):
            continue
        if name == "model":
            shard_model(child, mesh, settings)
        else:
            # Small heads compute in fp32 (RewardHead casts its input itself): no parameter cast.
            mp = MixedPrecisionPolicy(reduce_dtype=resolve_dtype(settings.reduce_dtype))
            fully_shard(child, mesh=mesh, mp_policy=mp, offload_policy=settings.offload_policy())


# --------------------------------------------------------------------------------------------
# Export of a sharded task
# --------------------------------------------------------------------------------------------


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict of a module holding FSDP2 units, on CPU, on global rank 0
    (``{}`` elsewhere). A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(task: Any) -> Any | None:
    """A plain, unsharded copy of a sharded reward task with the trained weights, on global rank 0.

    Every rank must call it (the weights are gathered); ranks other than 0 get None. The copy is
    built like the task (``type(task)(**task.hparams)`` and ``configure_model()``, on CPU, outside
    any trainer), then loaded with the gathered weights; :meth:`RewardTask.export_to` works on it
    as on a single-process task. Rank 0 holds the full model twice in CPU memory meanwhile.
    """
    state = full_state_dict(task)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None
    params = inspect.signature(type(task)).parameters
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # LightningCLI adds entries of its own (``_class_path``) to the hyperparameters.
    kwargs = {k: v for k, v in task.hparams.items() if k in params or (anything and not k.startswith("_"))}
    copy = type(task)(**kwargs)
    copy.examples_pool = getattr(task, "examples_pool", {})
    copy.configure_model()
    missing, _ = copy.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"The gathered weights miss {len(missing)} entries of the model, e.g. {missing[:3]}.")
    return copy


# --------------------------------------------------------------------------------------------
# The Lightning strategy
# --------------------------------------------------------------------------------------------


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP2 over every rank, with the sharding settings.

    The device mesh is 1-D data parallel over all ``num_nodes x devices`` ranks (no tensor
    parallelism), whatever the cluster size, so one config fragment serves 1 GPU, 8 GPUs and
    multi-node runs. The task's ``configure_model`` shards with :attr:`shard_settings`.

    Args:
        param_dtype: Compute dtype (FSDP2 mixed precision): ``bfloat16`` (default), or ``float32``/null
            for none. Parameters and optimizer states stay fp32.
        reduce_dtype: Gradient reduce-scatter dtype (default ``float32``).
        activation_checkpointing: Recompute block activations in the backward pass.
        cpu_offload: Keep sharded parameters, gradients and optimizer states in CPU memory (the
            optimizer step runs on the CPU: slow, but fits models the GPUs cannot hold).
        reshard_after_forward: Free gathered block weights after the forward (default; ZeRO-3).
        save_distributed_checkpoint: Checkpoints as a folder with one shard file per rank (default),
            or one full file written by rank 0 (gathers everything on rank 0's CPU).
        process_group_backend: ``nccl``/``gloo``; default from the device.
        timeout: Collective timeout.
    """

    def __init__(
        self,
        param_dtype: DType | None = "bfloat16",
        reduce_dtype: DType | None = "float32",
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.shard_settings = ShardSettings(
            param_dtype=None if param_dtype == "float32" else param_dtype,
            reduce_dtype=reduce_dtype,
            cpu_offload=cpu_offload,
            activation_checkpointing=activation_checkpointing,
            reshard_after_forward=reshard_after_forward,
        )

    def setup_environment(self) -> None:
        # Data parallel over every rank of every node (ModelParallelStrategy's "auto" is num_nodes).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Save a distributed checkpoint crash-safely: into a temporary folder beside the target, then
        renamed onto it by rank 0 once every rank's shard files and ``meta.pt`` are complete.

        Lightning writes the shard files, DCP's ``.metadata`` and ``meta.pt`` straight into the target
        folder, so a kill while re-saving ``last.ckpt`` leaves new weights paired with old trainer
        state, or a half-written ``meta.pt``. Here a kill at any point before the rename leaves the
        previous checkpoint untouched (and a ``.<name>.<token>.tmp`` folder that nothing loads). The
        swap is two renames (the old folder aside to ``.<name>.<token>.old``, the new one into place,
        then the old one deleted); a kill between them leaves the old checkpoint under that name,
        which :meth:`load_checkpoint` falls back to. Full-file checkpoints
        (``save_distributed_checkpoint=False``) and remote paths go through Lightning unchanged.
        """
        if not self._save_distributed_checkpoint or storage_options is not None or not is_local_path(filepath):
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        target = Path(self.broadcast(str(Path(filepath).absolute())))
        token = self.broadcast(f"{os.getpid()}-{time.time_ns()}")  # one name for every rank, new every save
        tmp = target.with_name(f".{target.name}.{token}.tmp")
        super().save_checkpoint(checkpoint, tmp)  # every rank writes its shards; rank 0 then meta.pt
        if self.global_rank == 0:
            _fsync_tree(tmp)
        self.barrier("rewarddance.save_checkpoint.written")  # every rank's shard files are complete
        if self.global_rank == 0:
            old = target.with_name(f".{target.name}.{token}.old")
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            _fsync_tree(target.parent, files=False)
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        self.barrier("rewarddance.save_checkpoint.renamed")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(checkpoint_path)
        if not path.exists():  # killed between the two renames of a save: the previous checkpoint is aside
            aside = sorted(path.parent.glob(f".{path.name}.*.old"), key=lambda p: p.stat().st_mtime)
            if aside:
                warnings.warn(
                    f"{path} is missing: a save was interrupted while swapping it in; loading the previous "
                    f"checkpoint from {aside[-1]}.",
                    stacklevel=2,
                )
                checkpoint_path = aside[-1]
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    def model_to_device(self) -> None:
        if not self.shard_settings.cpu_offload:
            super().model_to_device()
            return
        # Offloaded shards must stay in CPU memory (FSDP2 refuses them elsewhere): fully_shard already
        # put the buffers of the sharded modules on the device; move only what is not under FSDP.
        assert self.model is not None
        _move_unsharded(self.model, self.root_device)


def _fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush a checkpoint folder's files (``files``) and the folder entry itself to disk (POSIX)."""
    if os.name == "nt":
        return
    for path in sorted(folder.iterdir()) if files else ():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_unsharded(module: nn.Module, device: torch.device) -> None:
    # fully_shard already placed the buffers of the sharded trees on the device (and the shards in CPU memory).
    for child in module.children():
        if not is_sharded(child):
            child.to(device)
    module._device = device  # Lightning's record of the module's device (``LightningModule.device``)


__all__ = [
    "BLOCK_SUFFIXES",
    "FSDP2Strategy",
    "ShardSettings",
    "full_state_dict",
    "is_sharded",
    "shard_model",
    "shard_task",
    "transformer_blocks",
    "unsharded_copy",
]
