"""Resuming a fit continues the same wandb run: :class:`WandbRunId` and :func:`resume_wandb_run`.

Without this, ``fit --ckpt_path <checkpoint>`` with a ``WandbLogger`` starts a *new* wandb run, so
one training shows up as several runs whose curves each start mid-way. The CLI (``cli.py``) adds
:class:`WandbRunId` to the trainer whenever a ``WandbLogger`` is configured, so every checkpoint
records the run id (``checkpoint["callbacks"]["WandbRunId"]["run_id"]``); on ``fit --ckpt_path``
it calls :func:`resume_wandb_run` before the logger is instantiated, which copies that id into the
logger's ``init_args`` (``id``, and ``resume: allow`` unless the user chose a ``resume`` mode).
A user-set ``id``/``version`` always wins; so does a checkpoint that records no id (nothing changes).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

__all__ = ["WandbRunId", "recorded_run_id", "resume_wandb_run"]

_SYMBOLIC_CKPT_PATHS = ("last", "hpc", "best")
"""``ckpt_path`` values Lightning resolves itself once the trainer exists; left alone here (no id read).
Other values that are no local file or folder (``registry:...``, URLs) are left alone too."""


class WandbRunId(Callback):
    """Stores the run id of ``logger`` in every checkpoint (its ``state_dict``); loading does nothing."""

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger

    def state_dict(self) -> dict[str, Any]:
        # ``version`` is the live run's id (rank 0) or the configured id; it never starts a run itself.
        # Empty (not saved) where there is none yet, e.g. on ranks > 0, which do not write checkpoints.
        run_id = self.logger.version
        return {"run_id": run_id} if run_id else {}


def recorded_run_id(ckpt_path: str | Path) -> str | None:
    """The wandb run id recorded by :class:`WandbRunId` in a checkpoint, or None.

    ``ckpt_path`` is a single ``.ckpt`` file, or a sharded folder written by ``ModelParallelStrategy``
    (FSDP2), whose non-tensor state (callbacks included) is in ``meta.pt`` saved by rank 0.
    """
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / _METADATA_FILENAME
    if not path.is_file():
        return None
    # mmap: only the small non-tensor part is read, not the weights.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = checkpoint.get("callbacks", {}).get(WandbRunId.__qualname__, {})
    return state.get("run_id")


def _is_wandb_logger(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False  # jsonargparse reports an unknown class itself, when it instantiates it
    return isinstance(cls, type) and issubclass(cls, WandbLogger)


def resume_wandb_run(config: Any) -> str | None:
    """Point the ``WandbLogger`` of a parsed ``fit`` config at the run recorded in its ``ckpt_path``.

    Edits ``config`` (the subcommand's jsonargparse namespace) in place and returns the id it set,
    or None where it changed nothing: no checkpoint path or a symbolic one (``last``, ``best``, ...),
    no ``WandbLogger``, an ``id``/``version`` set by the user, or no id recorded in the checkpoint.
    """
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or str(ckpt_path) in _SYMBOLIC_CKPT_PATHS:
        return None
    loggers = config.get("trainer", {}).get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    wandb = [lg for lg in loggers if hasattr(lg, "class_path") and _is_wandb_logger(lg.class_path)]
    if not wandb or any(lg.init_args.get("id") or lg.init_args.get("version") for lg in wandb):
        return None
    run_id = recorded_run_id(ckpt_path)
    if run_id is None:
        return None
    for lg in wandb:
        lg.init_args.id = run_id
        # The CLI passes ``resume: null`` explicitly, which overrides WandbLogger's own "allow"
        # default; "allow" continues the run if it exists and creates it otherwise (offline, other entity).
        if not lg.init_args.get("resume"):
            lg.init_args.resume = "allow"
    return run_id
