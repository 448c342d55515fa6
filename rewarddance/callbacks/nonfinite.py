"""Stop training on a NaN or infinite loss, gradient or reward, before the update that would spread it.

One optimizer step with a NaN gradient turns every weight it touches into NaN, and every checkpoint written after
it holds a dead model. :class:`NonFiniteGuard` checks

- the loss, before backward (``on_before_backward``);
- every parameter's gradient norm, right after backward (``on_after_backward``): before gradient clipping, which
  would multiply every gradient by the NaN total norm and hide which parameter went bad, and before the optimizer
  step, with automatic and manual optimization alike;

and a task checks further quantities of its own (the RL task: the reward) with :func:`check_finite`. On a bad value
it saves the still-good state to ``last-good.ckpt`` (next to the run's other checkpoints), then raises
:class:`NonFiniteError` naming the step and the quantity. The step's update is never applied and no checkpoint of a
poisoned state is written: the error leaves ``trainer.fit`` from inside the step, before ``on_train_batch_end``
where ``ModelCheckpoint`` saves, so an earlier ``last.ckpt`` stays as it was.

Under DDP every check is reduced over the ranks, so all ranks stop together (a lone raise would leave the others
waiting in a collective). With a loss scaler (``precision: 16-mixed``) gradients are not checked: the scaler
expects overflowing gradients now and then and skips those steps itself.

Every task attaches the guard in ``configure_callbacks``, so every config has it without a line of YAML.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from rewarddance.errors import RewardDanceError

__all__ = ["NonFiniteError", "NonFiniteGuard", "check_finite", "gradient_norms"]

LAST_GOOD = "last-good.ckpt"
NAMED = 5
"""Parameters named in the message at most (a NaN spreads backwards through the graph to many)."""


class NonFiniteError(RewardDanceError, RuntimeError):
    """A loss, gradient or reward was NaN or infinite; training stopped before applying it.

    An expected error (:mod:`rewarddance.errors`): the command line prints its message, which names the step,
    the quantity and the saved checkpoint, without a traceback.
    """


def gradient_norms(module: torch.nn.Module) -> dict[str, Tensor]:
    """Per-parameter L2 norms of the gradients present, in float32 (of the local shard under FSDP)."""
    norms = {}
    for name, parameter in module.named_parameters():
        grad = parameter.grad
        if grad is None:
            continue
        norms[name] = torch.linalg.vector_norm(_local(grad.detach()), dtype=torch.float32)
    return norms


def check_finite(pl_module: L.LightningModule, what: str, values: Tensor) -> None:
    """Stop training (:class:`NonFiniteError`, after saving ``last-good.ckpt``) if any of ``values`` is NaN or inf.

    Call it on every rank at the same point of the step: the decision is reduced over the ranks.
    """
    bad = int((~torch.isfinite(values.detach())).sum())
    _stop_if_any(pl_module, what, bad, values.numel(), "values are NaN or inf")


CLIPPING = "trainer.gradient_clip_val; the RL task: model.init_args.max_grad_norm"
ADVICE = {
    "loss": f"Check this batch's inputs for bad values, lower the learning rate, or enable gradient clipping ({CLIPPING}).",
    "gradient norm": f"Lower the learning rate or enable gradient clipping ({CLIPPING}); in 16-bit precision, try 32-bit.",
    "reward": "Check the reward (model or function) for NaNs on this batch's images, lower the learning rate, or "
    "enable gradient clipping (model.init_args.max_grad_norm).",
}


def _summed_over_ranks(pl_module: L.LightningModule, *counts: int) -> list[int]:
    # Every rank decides alike (a lone raise would leave the others waiting in a collective).
    trainer = pl_module._trainer
    if trainer is None or trainer.world_size == 1:
        return list(counts)
    tensor = torch.tensor(counts, dtype=torch.float64, device=pl_module.device)
    return [int(c) for c in trainer.strategy.reduce(tensor, reduce_op="sum").cpu()]


def _stop_if_any(pl_module: L.LightningModule, what: str, bad: int, total: int, verdict: str, names: str = "") -> None:
    bad, total = _summed_over_ranks(pl_module, bad, total)
    if bad == 0:
        return
    trainer = pl_module._trainer
    ranks = " (all ranks)" if trainer is not None and trainer.world_size > 1 else ""
    saved = _save_last_good(pl_module)
    hook = getattr(pl_module, "on_non_finite", None)
    if callable(hook):
        hook()  # the task's own records of the run (the RL task: its curves)
    if saved is not None:
        where = f"; the weights before it are saved to {saved} (resume with --ckpt_path {saved})"
    else:
        where = "; the weights are already non-finite, so no checkpoint was saved: resume from an earlier one"
    raise NonFiniteError(
        f"Non-finite {what} at step {pl_module.global_step}: {bad} of {total} {verdict}{ranks}{names}. "
        f"Training stopped before this update{where}. {ADVICE.get(what, ADVICE['loss'])}"
    )


def _save_last_good(pl_module: L.LightningModule) -> Path | None:
    trainer = pl_module._trainer
    if trainer is None:
        return None
    # An earlier update can have poisoned the weights (finite gradients, an overflowing optimizer state): then
    # there is nothing good to save.
    poisoned = sum(not bool(torch.isfinite(_local(p.detach())).all()) for p in pl_module.parameters())
    if _summed_over_ranks(pl_module, poisoned)[0]:
        return None
    # Next to the run's checkpoints when there are any; Trainer.log_dir is collective under DDP: every rank is here.
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
        folder = Path(checkpoint.dirpath)
    else:
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    path = folder / LAST_GOOD
    trainer.save_checkpoint(path)  # collective too: the decision to save was reduced, so every rank saves
    return path


def _local(tensor: Tensor) -> Tensor:
    # FSDP's DTensors: the local shard (the ranks' verdicts are combined by _summed_over_ranks).
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class NonFiniteGuard(L.Callback):
    """Raise :class:`NonFiniteError` on a non-finite loss or gradient, before the optimizer applies it.

    A task may define ``on_non_finite(self)`` to save records of its own (called on every rank after
    ``last-good.ckpt`` is written, just before the error is raised).
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        check_finite(pl_module, "loss", loss)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # the loss scaler skips overflowing steps itself (see the module docstring)
        norms = gradient_norms(pl_module)
        finite = torch.isfinite(torch.stack(list(norms.values()))).tolist() if norms else []  # one device sync
        bad = [name for name, ok in zip(norms, finite, strict=True) if not ok]
        names = ""
        if bad:
            more = f" and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
            names = f": {', '.join(bad[:NAMED])}{more}"
        _stop_if_any(pl_module, "gradient norm", len(bad), len(norms), "parameters have a NaN or inf gradient", names)


def task_callbacks(module: L.LightningModule) -> list[L.Callback]:
    """What every task's ``configure_callbacks`` returns: a :class:`NonFiniteGuard`, unless its trainer has one.

    Lightning calls ``configure_callbacks`` again for ``test`` after ``fit`` (and a user may configure a guard
    of their own in YAML); returning a second guard would replace the first with a notice on every run.
    """
    trainer = module._trainer  # None before a Trainer attaches it (LightningModule.trainer would raise)
    if trainer is not None and any(isinstance(c, NonFiniteGuard) for c in trainer.callbacks):
        return []
    return [NonFiniteGuard()]
