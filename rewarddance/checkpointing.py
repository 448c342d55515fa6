"""Crash-safe checkpoint files: :class:`AtomicCheckpointIO`, the default of ``python -m rewarddance fit``.

Lightning's :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` serialises a checkpoint into
memory and then writes it *onto the target path*: a kill (OOM killer, preemption, ``kill -9``)
during that write leaves a truncated ``last.ckpt`` in place of the previous good one. This plugin
writes ``.<name>.<pid>.tmp`` in the same folder, flushes and fsyncs it, ``os.replace``s it onto the
target (atomic on POSIX and Windows within one file system) and fsyncs the folder, so the target
path always holds either the previous complete checkpoint or the new complete one. A kill leaves
at most one stale ``.*.tmp`` file beside it, which nothing loads (Lightning only looks for
``*.ckpt``); delete it at leisure.

Loading uses ``torch.load(weights_only=True)``: a checkpoint here holds only tensors and plain
data (the tasks keep hyperparameters plain on purpose), so one that needs arbitrary unpickling is
refused with :class:`UnsafeCheckpointError` naming the file and the offending object; there is no
fallback to full unpickling. A *trusted* file with such objects can be loaded by configuring
Lightning's ``TorchCheckpointIO`` as the trainer's plugin and passing ``weights_only=False``.

Remote (fsspec URL) paths are written by Lightning's own code (object stores have no rename).

Sharded checkpoints (``ModelParallelStrategy`` / ``FSDP2Strategy`` with distributed checkpoints)
are folders written with ``torch.distributed.checkpoint`` and do not go through a CheckpointIO.
Lightning's ``ModelParallelStrategy`` writes them straight into the target folder: each rank its
shard files (``__<rank>_0.distcp``), the coordinator DCP's ``.metadata``, rank 0 Lightning's
``meta.pt``; re-saving into an existing folder (a sharded ``last.ckpt``) and being killed part-way
pairs new weights with old trainer state, or leaves a truncated ``meta.pt``.
:class:`rewarddance.distributed.FSDP2Strategy` (``configs/trainer/fsdp.yaml``) saves crash-safely
instead: every rank writes into a temporary folder beside the target, a barrier waits for all of
them, and rank 0 renames it into place (see ``FSDP2Strategy.save_checkpoint``). With Lightning's
plain ``ModelParallelStrategy``, keep one folder per save (ModelCheckpoint's default
``epoch=..-step=..`` names) and resume from the newest complete one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "UnsafeCheckpointError"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that ``torch.load(weights_only=True)`` refuses to unpickle."""


def is_local_path(path: _PATH) -> bool:
    """Whether a checkpoint path is on the local file system (where renames are atomic), not an fsspec URL."""
    return isinstance(get_filesystem(path), LocalFileSystem)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable (POSIX); directories cannot be opened like this on Windows.
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic and whose loads never unpickle arbitrary objects.

    See the module docstring for the write protocol and for what it does not cover (sharded folders).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # raises on storage_options, as Lightning does
            return
        target = Path(path).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same folder, so os.replace never crosses file systems; a leading dot and no .ckpt suffix, so
        # nothing that looks for checkpoints (ckpt_path="last", ModelCheckpoint) ever picks it up.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)  # streamed: no second in-memory copy of the checkpoint
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(target.parent)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` whatever ``weights_only`` asks (see :class:`UnsafeCheckpointError`)."""
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message starts with its advice to retry with weights_only=False: keep only the reason.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = next(
                (line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else ""
            )
            raise UnsafeCheckpointError(
                f"Refusing to load checkpoint {os.fspath(path)!r}: it contains objects other than tensors and "
                f"plain data, and unpickling them could run arbitrary code ({reason}). rewarddance checkpoints "
                "hold plain data only, so this file was written by other code or modified. If you trust it, "
                "resume with `--trainer.plugins lightning.pytorch.plugins.io.TorchCheckpointIO --weights_only false`."
            ) from err
