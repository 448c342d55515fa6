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
fallback to full unpickling. A file that cannot be read at all (empty, truncated, not a checkpoint)
is reported as :class:`~rewarddance.errors.CorruptCheckpointError` instead, with the advice to use
the previous checkpoint. A *trusted* file with such objects can be loaded by configuring
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
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rewarddance.errors import CorruptCheckpointError, RewardDanceError

__all__ = ["AtomicCheckpointIO", "CorruptCheckpointError", "UnsafeCheckpointError", "load_error", "load_plain"]


class UnsafeCheckpointError(RewardDanceError, pickle.UnpicklingError):
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
        """Load with ``weights_only=True`` whatever ``weights_only`` asks (see :class:`UnsafeCheckpointError`).

        Raises:
            FileNotFoundError: No file at ``path``.
            UnsafeCheckpointError: The file needs arbitrary unpickling (a global not on torch's allow-list).
            CorruptCheckpointError: The file cannot be read at all: empty, truncated, or not a checkpoint.
        """
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except Exception as err:
            refusal = load_error(path, err)
            if refusal is None:
                raise
            raise refusal from err


def load_plain(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with :func:`load_error`'s errors for unsafe or unreadable files."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        refusal = load_error(path, err)
        if refusal is None:
            raise
        raise refusal from err


_UNSAFE_MARKERS = ("GLOBAL", "safe_globals", "allowlist")
"""Words of ``torch._weights_only_unpickler``'s messages about objects outside its allow-list; its other
messages (``Unsupported operand 120``...) come from bytes that are not a pickle at all."""

_CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, KeyError, IndexError, UnicodeDecodeError, zipfile.BadZipFile)
"""What ``torch.load`` raises on bytes that are not a checkpoint (besides the RuntimeError and OSError below)."""


def load_error(path: str | os.PathLike, err: BaseException) -> Exception | None:
    """The error to raise for ``torch.load(path, weights_only=True)`` failing with ``err``; None to keep ``err``.

    Only a well-formed pickle asking for objects outside torch's allow-list is *unsafe* (and only that
    gets the advice to load it without the safety, if trusted). A file that cannot be read at all
    (empty, truncated by a killed save or a copy, random bytes) is *corrupt*: the advice is to use an
    earlier checkpoint, never to turn the safety off.
    """
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return None
    message = str(err)
    if isinstance(err, pickle.UnpicklingError) and any(marker in message for marker in _UNSAFE_MARKERS):
        # torch's message starts with its advice to retry with weights_only=False: keep only the reason.
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        reason = reason.split(" Please use")[0].rstrip(".")  # drop torch's how-to-allowlist advice
        return UnsafeCheckpointError(
            f"Refusing to load checkpoint {os.fspath(path)!r}: it contains objects other than tensors and "
            f"plain data, and unpickling them could run arbitrary code ({reason}). rewarddance checkpoints "
            "hold plain data only, so this file was written by other code or modified. If you trust it, "
            "resume with `--trainer.plugins lightning.pytorch.plugins.io.TorchCheckpointIO --weights_only false`."
        )
    # RuntimeError: torch's zip reader ("PytorchStreamReader failed reading zip archive"); OSError: a
    # zip directory pointing past the end of the file ("[Errno 22] Invalid argument").
    stream_error = isinstance(err, RuntimeError) and "PytorchStreamReader" in message
    if isinstance(err, (*_CORRUPT_ERRORS, OSError)) or stream_error:
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        reason = _corrupt_reason(err) if size else "the file is empty"
        return CorruptCheckpointError(
            f"checkpoint {os.fspath(path)!r} is corrupt or truncated ({size} bytes; {reason}): it cannot be "
            "read. Resume or export from the previous checkpoint (an earlier epoch=..-step=..ckpt, or the one "
            "before last.ckpt); a save that was killed leaves the previous checkpoint intact."
        )
    return None


def _corrupt_reason(err: BaseException) -> str:
    """One short line on why the bytes are unreadable (torch wraps the unpickler's reason in a paragraph of advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    at = next((i for i, line in enumerate(lines) if marker in line), None)
    if at is not None:  # the reason follows the marker, on the same line or the next
        rest = lines[at].split(marker, 1)[1].strip()
        line = rest or (lines[at + 1] if at + 1 < len(lines) else "")
    else:
        line = lines[0] if lines else ""
    line = line.split(". This is an internal miniz error")[0]  # torch's zip reader appends generic advice
    return f"{type(err).__name__}: {line}" if line else type(err).__name__
