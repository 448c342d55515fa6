"""``python -m rewarddance export``: a trained task's inference folder, from a checkpoint file or a sharded folder.

    python -m rewarddance export --checkpoint runs/x/checkpoints/epoch=0-step=3000.ckpt --out runs/x/export

``fit`` already exports when it ends; this command writes the same folder from any checkpoint
afterwards (an earlier step, a run that was killed, a run with ``export: false``), in one process
without a process group, whatever the number of ranks that wrote it:

- a **single file** ``.ckpt`` (one device, DDP, or FSDP2 with ``save_distributed_checkpoint:
  false``): Lightning's dict, read with ``torch.load(weights_only=True)`` as every rewarddance
  checkpoint is (:class:`~rewarddance.checkpointing.AtomicCheckpointIO`);
- a **sharded folder** ``epoch=E-step=S.ckpt/`` written by Lightning's ``ModelParallelStrategy``
  (``rewarddance.distributed.FSDP2Strategy``, ``configs/trainer/fsdp.yaml``): one
  ``__<rank>_0.distcp`` per rank plus DCP's ``.metadata``, holding the model under
  ``state_dict.<parameter name>`` and the optimizers under ``optimizer_<i>.*``, and ``meta.pt``
  (everything else: hyperparameters, loops). ``torch.distributed.checkpoint.load`` without an
  initialised process group reads the ``state_dict.*`` entries (only those: the optimizer states
  stay on disk) straight into the unsharded task, resharding ``N`` ranks to one.

The task is rebuilt from the checkpoint's own hyperparameters (``hyper_parameters``, saved by the
task's ``save_hyperparameters``, with the class in ``_class_path`` when the run used the CLI):
they are what the run really used, command-line overrides included. ``--run_config`` (the YAML
files of the run) only fills in what a checkpoint lacks, e.g. one written without hyperparameters.
Then its weights are loaded strictly (every parameter of the task must be in the checkpoint, and
the checkpoint must hold no parameter the task lacks) and the task writes its own export:

- reward tasks (:meth:`~rewarddance.tasks.reward.RewardTask.export_to`): a Hugging Face model
  folder with ``rewarddance_reward.json`` that :meth:`RewardModel.from_pretrained
  <rewarddance.judge.reward_model.RewardModel.from_pretrained>` and ``score`` load, LoRA adapters merged
  in; with LoRA the adapter alone is also written to ``<out>/lora`` (PEFT's ``save_pretrained``:
  ``PeftModel.from_pretrained(base, "<out>/lora")`` applies it to the base model);
- :class:`~rewarddance.tasks.generator_rl.GeneratorRLTask` (``export``): a diffusers folder, LoRA
  fused, the adapter alone in ``<out>/lora``.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
import yaml

from rewarddance.errors import UsageError

META_FILE = "meta.pt"
"""Lightning's non-tensor part of a sharded checkpoint folder (``lightning.fabric.utilities.load._METADATA_FILENAME``)."""

MODEL_KEY = "state_dict"
"""Where ``ModelParallelStrategy.save_checkpoint`` puts the model in a sharded folder (the optimizers: ``optimizer_<i>``)."""

FACTORIES = ("optimizer", "lr_scheduler")
"""Constructor arguments that only training needs (callables, not saved in the hyperparameters)."""

RECORD_CLASSES = {
    ("rewarddance", "generative"): "rewarddance.tasks.GenerativeRewardTask",
    ("rewarddance", "regressive"): "rewarddance.tasks.RegressiveRewardTask",
    ("rewarddance_rl", None): "rewarddance.tasks.GeneratorRLTask",
}
"""The task class from the records the tasks add to their checkpoints (``on_save_checkpoint``), for
checkpoints written without the CLI (no ``_class_path``) and without ``--run_config``."""


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a sharded (distributed) checkpoint folder, as Lightning decides it: a folder with ``meta.pt``."""
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Lightning's checkpoint dict, with plain-data loading only (``weights_only=True``).

    For a sharded folder: the contents of ``meta.pt`` (no ``state_dict``; the weights are read by
    :func:`load_weights` into the task itself).

    Raises:
        FileNotFoundError: ``path`` is neither a checkpoint file nor a sharded folder with ``meta.pt``.
    """
    from rewarddance.checkpointing import AtomicCheckpointIO, load_plain

    path = Path(path)
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            raise FileNotFoundError(
                f"{path} is a folder without {META_FILE}: not a complete sharded checkpoint (a save killed "
                "half-way, or another folder); use the newest epoch=..-step=..ckpt folder that has one."
            )
        return load_plain(path / META_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return AtomicCheckpointIO().load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def _resolve_class(name: str) -> type:
    if "." not in name:  # a short name, as YAML configs write them (class_path: GenerativeRewardTask)
        name = f"rewarddance.tasks.{name}"
    module, _, attr = name.rpartition(".")
    return getattr(import_module(module), attr)


def _model_section(files: list[str]) -> dict[str, Any]:
    """The ``model`` sections of the run's YAML files merged in order: ``class_path`` and ``init_args``."""
    merged: dict[str, Any] = {"init_args": {}}
    for file in files:
        config = yaml.safe_load(Path(file).read_text()) or {}
        model = config.get("model") if "model" in config else config  # a whole fit config, or a model fragment
        if isinstance(model, str):  # model: path/to/fragment.yaml, relative to the config file
            model = yaml.safe_load((Path(file).parent / model).read_text()) or {}
        if not isinstance(model, Mapping):
            continue
        if model.get("class_path"):
            merged["class_path"] = model["class_path"]
        merged["init_args"].update(model.get("init_args") or {})
    return merged


def _task_class(checkpoint: Mapping[str, Any], hparams: Mapping[str, Any], config: Mapping[str, Any]) -> type:
    if hparams.get("_class_path"):
        return _resolve_class(str(hparams["_class_path"]))
    if config.get("class_path"):
        return _resolve_class(str(config["class_path"]))
    for (key, kind), name in RECORD_CLASSES.items():
        record = checkpoint.get(key)
        if isinstance(record, Mapping) and (kind is None or record.get("kind") == kind):
            return _resolve_class(name)
    raise UsageError(
        "The checkpoint does not say which task wrote it (no _class_path in its hyperparameters, no rewarddance "
        "record): pass the run's config with --run_config (its model: class_path and init_args)."
    )


def _init_kwargs(cls: type, hparams: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # The checkpoint's hyperparameters win: they are what the run used (overrides on its command line included).
    merged = {**dict(config.get("init_args") or {}), **dict(hparams)}
    # LightningCLI records entries of its own (_class_path, _instantiator) in the hyperparameters.
    return {
        k: v for k, v in merged.items() if k not in FACTORIES and (k in params or (anything and not k.startswith("_")))
    }


def build_task(
    checkpoint: Mapping[str, Any], run_config: str | list[str] | None = None, *, reward: Any = "shapes-color"
) -> Any:
    """The task that wrote ``checkpoint`` (a :func:`read_checkpoint` dict), built and configured, untrained.

    Args:
        checkpoint: The checkpoint dict (its ``hyper_parameters`` and records).
        run_config: The run's YAML file(s); their ``model`` section fills in what the checkpoint lacks.
        reward: :class:`GeneratorRLTask` only: the reward it is built with. The export does not use the
            reward, and the run's may be unavailable here (a reward-model folder elsewhere, or a callable
            that only existed in the run's session), so a cheap built-in one stands in; ReFL's anchor loss on
            the reward's references, which trains nothing at export, is turned off with it.
    """
    from rewarddance.rl.settings import ReFLSettings, as_settings
    from rewarddance.tasks import GeneratorRLTask

    files = [run_config] if isinstance(run_config, str) else list(run_config or [])
    config = _model_section(files)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    cls = _task_class(checkpoint, hparams, config)
    kwargs = _init_kwargs(cls, hparams, config)
    if issubclass(cls, GeneratorRLTask):
        kwargs["reward"] = reward
        refl = as_settings(kwargs.get("refl"), ReFLSettings)
        if refl is not None and refl.anchor_weight > 0:  # its loss needs references, which the stand-in chooses none of
            kwargs["refl"] = dataclasses.asdict(dataclasses.replace(refl, anchor_weight=0.0))
    task = cls(**kwargs)
    task.configure_model()
    return task


def _examples_source(task: Any, checkpoint: Mapping[str, Any], run_config: str | list[str] | None) -> Any:
    source = task.hparams.get("examples_from")
    if source is None:  # the DataModule's train source, as GenerativeRewardTask.setup takes it
        source = (checkpoint.get("datamodule_hyper_parameters") or {}).get("train")
    if source is None:
        for file in [run_config] if isinstance(run_config, str) else list(run_config or []):
            data = (yaml.safe_load(Path(file).read_text()) or {}).get("data")
            if isinstance(data, Mapping):
                source = (data.get("init_args") or {}).get("train", source)
    if source is None:
        raise UsageError(
            f"The task uses {task.hparams.examples} in-context examples, drawn from the training data, but neither "
            "its examples_from nor the checkpoint's DataModule says where that is: pass --run_config."
        )
    return source


def load_weights(task: torch.nn.Module, path: str | Path, checkpoint: Mapping[str, Any]) -> None:
    """Load the checkpoint's model weights into the (unsharded) ``task``, strictly.

    A single file's ``state_dict`` is loaded as it is; a sharded folder is read with
    ``torch.distributed.checkpoint`` in this one process (no process group), the ``state_dict.*``
    entries straight into the task's tensors.

    Raises:
        ValueError: The checkpoint lacks parameters of the task or holds parameters it does not have (it
            was trained with another configuration than the one the task was built from).
    """
    own = task.state_dict()
    if not is_sharded_checkpoint(path):
        state = checkpoint["state_dict"]
        _check_keys(set(own), set(state), path)
        task.load_state_dict(state, strict=True)
        return
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(path))
    prefix = MODEL_KEY + "."
    stored = {k[len(prefix) :] for k in reader.read_metadata().state_dict_metadata if k.startswith(prefix)}
    _check_keys(set(own), stored, path)
    target = {MODEL_KEY: own}  # state_dict() tensors share storage with the parameters: DCP loads in place
    with warnings.catch_warnings():
        # "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a
        # single process": it is.
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(target, storage_reader=reader)
    task.load_state_dict(target[MODEL_KEY], strict=True)


def _check_keys(own: set[str], stored: set[str], path: str | Path) -> None:
    missing, unexpected = sorted(own - stored), sorted(stored - own)
    if missing or unexpected:
        raise UsageError(
            f"The weights in {path} do not fit the task built from its hyperparameters: {len(missing)} parameters "
            f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Was it trained "
            "with another backbone, size or LoRA setting than the --run_config given?"
        )


def task_from_checkpoint(checkpoint_path: str | Path, run_config: str | list[str] | None = None) -> Any:
    """The trained task of a checkpoint file or sharded folder, in one process, unsharded, in eval mode.

    Built as :func:`build_task` says, then given what the run added to it (the checkpoint's records,
    through the task's ``on_load_checkpoint``; in-context examples, redrawn from the training data
    as ``fit`` draws them) and the weights (:func:`load_weights`).
    """
    checkpoint = read_checkpoint(checkpoint_path)
    task = build_task(checkpoint, run_config)
    if hasattr(task, "on_load_checkpoint"):
        task.on_load_checkpoint(dict(checkpoint))  # checks the reward tasks' model record; restores RL history
    if (task.hparams.get("examples") or 0) > 0 and hasattr(task, "load_examples") and not task.examples_pool:
        task.examples_pool = task.load_examples(_examples_source(task, checkpoint, run_config))
    load_weights(task, checkpoint_path, checkpoint)
    return task.eval()


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def export_task(task: Any, out: str | Path) -> Path:
    """Write ``task``'s inference folder to ``out`` (see the module docstring for what each task writes)."""
    from peft import PeftModel

    out = Path(out)
    if hasattr(task, "export_to"):  # the reward tasks
        folder = Path(task.export_to(out))
        model = getattr(task, "model", None)
        if isinstance(model, PeftModel):
            model.save_pretrained(folder / "lora")  # adapter_config.json + adapter_model.safetensors
        return folder
    if hasattr(task, "export"):  # GeneratorRLTask (and GeneratorPretrainTask)
        return Path(task.export(out))
    raise TypeError(f"{type(task).__name__} has no export: expected export_to(folder) or export(folder).")


def export(checkpoint: str, out: str, run_config: str | list[str] | None = None) -> str:
    """Export a checkpoint (a .ckpt file, or a sharded FSDP folder) as the task's inference folder.

    Reward tasks: a Hugging Face model folder with rewarddance_reward.json (load it with
    RewardModel.from_pretrained, or score with it), LoRA adapters merged in, and with LoRA the
    adapter alone in OUT/lora. RL generator tasks: a diffusers folder, LoRA fused, the adapter in
    OUT/lora. Runs in one process, on CPU, whatever the number of ranks that wrote the checkpoint.

    Args:
        checkpoint: A checkpoint file (single device, DDP) or a sharded checkpoint folder
            (``epoch=E-step=S.ckpt/`` with ``meta.pt``, written under configs/trainer/fsdp.yaml):
            what ``fit --ckpt_path`` takes. (Not named ``ckpt_path``: LightningCLI reads an option
            of that name as a checkpoint to take the model's arguments from, for every command.)
        out: The folder to write.
        run_config: The run's YAML config(s), the ``fit --config`` files: one path, a list
            (``[a.yaml, b.yaml]``) or ``--run_config+`` repeated. The task and its arguments come
            from the checkpoint's hyperparameters; the configs' ``model`` section (later files
            win) only fills in what the checkpoint lacks. (Not ``--config``: the command line
            does not pass an option of that name on to its commands.)

    Returns:
        The export folder.
    """
    from rewarddance.outputs import atomic_output

    if Path(out).is_file():
        raise UsageError(f"--out {out!r} is a file; give the folder to export to")
    task = task_from_checkpoint(checkpoint, run_config)
    with atomic_output(out, folder=True) as tmp:
        written = export_task(task, tmp)
    folder = Path(out) / written.relative_to(tmp)  # where export_task wrote, after the rename
    kind = "reward model (load with RewardModel.from_pretrained)" if hasattr(task, "export_to") else "generator"
    lora = " and the LoRA adapter in lora/" if (folder / "lora").is_dir() else ""
    print(f"[rewarddance] export: {folder}: {type(task).__name__} {kind}{lora}, from {checkpoint}")
    return str(folder)


__all__ = [
    "build_task",
    "export",
    "export_task",
    "is_sharded_checkpoint",
    "load_weights",
    "read_checkpoint",
    "task_from_checkpoint",
]
