"""A model-agnostic Lightning DataModule over rewarddance shards.

The task decides how samples become tensors, inside the DataLoader workers: if the LightningModule
attached to the trainer has a ``collator`` (a callable ``list[Sample] -> Any`` that holds what
batching needs and not the module, e.g. :class:`rewarddance.judge.batch.RewardCollator`), the
workers get it; else, if it has a ``collate(samples)`` method, that (the workers then carry the
module); otherwise the ``collate_fn`` argument; otherwise a batch is a plain ``list[Sample]``. The
collator is asked for when a loader is made (after the module's ``setup`` and ``configure_model``). The task can also declare what it reads, so the reader skips the rest:
``needs_references: bool`` (decode ``Sample.references``) and ``needs_visuals: bool`` (decode
images at all). Declarations on the module win over the DataModule's ``load_*`` arguments.

See :mod:`rewarddance.data.stream` for how shards are split over ranks and workers so every rank
gets the same number of batches.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, Literal

import lightning as L

from rewarddance.data.schema import Sample
from rewarddance.data.stream import ShardInfo, ShardStream, StreamLoader, resolve_shards
from rewarddance.errors import UsageError

log = logging.getLogger(__name__)


Source = str | list[str]
EvalSets = str | list[str] | dict[str, str | list[str]]
Stage = Literal["train", "validate", "test", "predict"]
_ATTR = {"train": "train", "validate": "val", "test": "test", "predict": "predict"}


def _option(name: str) -> str:
    """How an argument of a DataModule is named in the messages: as the option of a fit config or command line."""
    return f"{name} (data.init_args.{name})"


class ShardDataModule(L.LightningDataModule):
    """Streams rewarddance shards to a Trainer, with equal batch counts on every DDP rank.

    Sources are folders holding ``manifest.json`` (as written by ``SampleWriter``), shard paths,
    brace patterns (``data/train/shard-{000000..000009}.tar``) or ``pipe:``/``http(s)://`` URLs,
    or lists of these. Evaluation sets may be dicts of named sets, e.g.
    ``{"test-id": data/shapes/test, "test-ood": data/shapes/ood}``: one dataloader each, in that
    order; :meth:`set_name` maps a ``dataloader_idx`` back to its name for logging.

    Training data is shuffled per epoch; evaluation data is read in order, never resampled, and
    padded to equal batch counts with the repeats marked ``Sample.padding = True`` (leave them out
    of metrics). Bad samples raise a ``ShardFormatError`` naming shard, sample and field, or, with
    ``on_error: skip``, are skipped, counted and reported per epoch (:attr:`reports`) and, summed,
    at the end of each fit/validate/test/predict (:attr:`summary`). Checkpoints hold the training
    stream's position: a resumed fit continues on exactly the same data (``docs/resume.md``).

    Args:
        train: Training shards.
        val: Validation shards, or a dict of named validation sets.
        test: Test shards, or a dict of named test sets (e.g. in- and out-of-domain).
        predict: Prediction shards, or a dict of named sets.
        batch_size: Samples per batch, per rank.
        eval_batch_size: Samples per batch for val/test/predict; defaults to ``batch_size``.
        num_workers: DataLoader worker processes per rank.
        shuffle: Shuffle training shards and samples, differently every epoch.
        shuffle_buffer: Per-worker sample shuffle buffer for training (raw, undecoded samples).
        seed: Seed of shard order, shuffle buffers and resampling (combined with the epoch).
        resampled: Train on an endless stream of shards drawn with replacement; needs ``epoch_length``.
        epoch_length: Training samples per rank per epoch in resampled mode.
        even_out: How training gives every rank the same sample count: ``pad`` repeats at most
            one sample per rank, ``drop`` leaves at most one per rank out of the epoch.
        on_error: On a bad sample: ``raise`` an error naming shard, sample and field, or ``skip``
            it (counted per field, replaced by the next sample, reported at the epoch's end).
        load_visuals: Decode images (``False``: metadata-only samples). The module's
            ``needs_visuals`` attribute overrides this.
        load_references: Decode reference images. The module's ``needs_references`` attribute
            overrides this.
        collate_fn: Builds a batch from ``list[Sample]`` when the LightningModule has neither a
            ``collator`` nor a ``collate`` method.
        pin_memory: Passed to the DataLoaders.
        persistent_workers: Keep workers alive between epochs (the epoch still reaches them).
        prefetch_factor: Batches prefetched per worker (only with ``num_workers > 0``).
    """

    def __init__(
        self,
        train: Source | None = None,
        val: EvalSets | None = None,
        test: EvalSets | None = None,
        predict: EvalSets | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        resampled: bool = False,
        epoch_length: int | None = None,
        even_out: Literal["pad", "drop"] = "pad",
        on_error: Literal["raise", "skip"] = "raise",
        load_visuals: bool = True,
        load_references: bool = True,
        collate_fn: Callable[[list[Sample]], Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        # Cheap on purpose: LightningCLI builds this to print configs; shards are read in setup(). The values are
        # checked here, before any model loads, rather than when the loaders are made.
        for option, value, least in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_workers", num_workers, 0),
            ("shuffle_buffer", shuffle_buffer, 0),
            ("epoch_length", epoch_length, 1),
            ("prefetch_factor", prefetch_factor, 1),
        ):
            if value is not None and value < least:
                raise UsageError(f"{_option(option)} must be at least {least}, got {value}")
        if resampled and not epoch_length:
            raise UsageError(
                f"{_option('resampled')}: true needs {_option('epoch_length')} (training samples per rank per epoch)"
            )
        self.save_hyperparameters(ignore=["collate_fn"])
        self.train, self.val, self.test, self.predict = train, val, test, predict
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle, self.shuffle_buffer, self.seed = num_workers, shuffle, shuffle_buffer, seed
        self.resampled, self.epoch_length, self.even_out, self.on_error = resampled, epoch_length, even_out, on_error
        self.load_visuals, self.load_references = load_visuals, load_references
        self.collate_fn = collate_fn
        self.pin_memory, self.persistent_workers, self.prefetch_factor = pin_memory, persistent_workers, prefetch_factor
        self._shards: dict[tuple[str, str], list[ShardInfo]] = {}
        self._loaders: dict[str, StreamLoader] = {}
        self._made: list[tuple[str, StreamLoader]] = []  # (stage, loader) since the last teardown
        self.summary: dict[str, dict[str, int]] = {}
        """Skipped bad samples of the last fit/validate/test/predict, per loader and field (``on_error: skip``),
        summed over epochs and DataLoader workers; set at teardown (see :meth:`teardown`)."""
        self.set_names: dict[str, list[str]] = {}
        """Names of the eval sets per stage (``"validate"``, ``"test"``, ``"predict"``), in dataloader order."""
        self._hide_missing_stages()

    def _hide_missing_stages(self) -> None:
        # Lightning decides whether a stage has data by checking if ``<stage>_dataloader`` is
        # overridden; an instance attribute of None reads as "not defined". So a stage without a
        # source is skipped cleanly (no empty-loader warnings), and a dataloader hook on the
        # LightningModule can still supply it.
        for attr in _ATTR.values():
            hook = f"{attr}_dataloader"
            if getattr(self, attr) is None:
                self.__dict__[hook] = None
            else:
                self.__dict__.pop(hook, None)

    # -- setup ---------------------------------------------------------------------------------

    def _specs(self, stage: str) -> dict[str, Source]:
        """Stream name -> source for a stage; a plain eval source is named after its argument."""
        attr = _ATTR[stage]
        spec = getattr(self, attr)
        if spec is None:
            return {}
        return dict(spec) if isinstance(spec, dict) else {attr: spec}

    def setup(self, stage: str | None = None) -> None:
        """Resolve shard lists and manifest counts for the stage (reads manifests only)."""
        self._hide_missing_stages()  # sources may have been set after __init__
        stages = {"fit": ("train", "validate"), "validate": ("validate",), "test": ("test",), "predict": ("predict",)}
        for s in stages.get(stage or "", ("train", "validate", "test", "predict")):
            specs = self._specs(s)
            self.set_names[s] = list(specs)
            for name, spec in specs.items():
                if (s, name) not in self._shards:
                    self._shards[s, name] = resolve_shards(spec)

    # -- the task's wishes ---------------------------------------------------------------------

    def _module(self) -> Any:
        trainer = getattr(self, "trainer", None)
        return getattr(trainer, "lightning_module", None) if trainer is not None else None

    def _collate(self) -> Callable[[list[Sample]], Any] | None:
        module = self._module()
        for hook in ("collator", "collate"):
            collate = getattr(module, hook, None)
            if callable(collate):
                return collate
        return self.collate_fn

    def _wants(self) -> tuple[bool, bool]:
        module = self._module()
        visuals = getattr(module, "needs_visuals", None)
        references = getattr(module, "needs_references", None)
        return (
            self.load_visuals if visuals is None else bool(visuals),
            self.load_references if references is None else bool(references),
        )

    def _dist(self) -> tuple[int | None, int | None]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None, None  # ShardStream falls back to torch.distributed
        return trainer.global_rank, trainer.world_size

    def _train_epoch(self) -> int | None:
        return train_epoch(getattr(self, "trainer", None))

    def _train_progress(self) -> int | None:
        return train_progress(getattr(self, "trainer", None))

    # -- loaders -------------------------------------------------------------------------------

    def _loader(self, stage: str, name: str, spec: Source) -> StreamLoader:
        train = stage == "train"
        if (stage, name) not in self._shards:  # a *_dataloader() call without setup()
            self._shards[stage, name] = resolve_shards(spec)
        shards = self._shards[stage, name]
        rank, world = self._dist()
        visuals, references = self._wants()
        stream = ShardStream(
            shards,
            batch_size=self.batch_size if train else self.eval_batch_size,
            collate_fn=self._collate(),
            shuffle=self.shuffle and train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=self.seed,
            resampled=self.resampled and train,
            epoch_length=self.epoch_length if self.resampled and train else None,
            even_out=self.even_out if train else "pad",
            on_error=self.on_error,
            load_visuals=visuals,
            load_references=references,
            rank=rank,
            world_size=world,
            name=name,
        )
        # Lightning warns about any IterableDataset with __len__ because workers *might* duplicate data.
        # ShardStream splits work across workers itself and its length is exact, so the warning is noise.
        # (Set here rather than at import so it also holds inside warning-catching contexts such as pytest's.)
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        kwargs: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            kwargs["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
        if train:
            loader = StreamLoader(
                stream, epoch_fn=self._train_epoch, progress_fn=self._train_progress, name=name, **kwargs
            )
        else:
            loader = StreamLoader(stream, epoch_fn=_zero, name=name, **kwargs)
        self._loaders[name] = loader
        self._made.append((stage, loader))
        return loader

    def train_dataloader(self) -> StreamLoader:
        if self.train is None:
            raise UsageError(f"ShardDataModule: no training shards given; set {_option('train')}")
        return self._loader("train", "train", self.train)

    def _eval_loaders(self, stage: str) -> list[StreamLoader]:
        specs = self._specs(stage)
        self.set_names[stage] = list(specs)
        return [self._loader(stage, name, spec) for name, spec in specs.items()]

    def val_dataloader(self) -> list[StreamLoader]:
        """One loader per validation set."""
        return self._eval_loaders("validate")

    def test_dataloader(self) -> list[StreamLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[StreamLoader]:
        return self._eval_loaders("predict")

    # -- reporting -----------------------------------------------------------------------------

    def set_name(self, stage: Stage, dataloader_idx: int = 0) -> str:
        """The name of eval set ``dataloader_idx`` of a stage, e.g. for ``self.log(f"{name}/acc", ...)``."""
        return self.set_names.get(stage, [stage])[dataloader_idx]

    @property
    def reports(self) -> dict[str, dict[str, Any] | None]:
        """This rank's last completed-epoch report per stream name (skipped/padded/dropped counts).

        Stream names are ``train``, ``val``, ``test``, ``predict``, or the keys of a dict of eval sets
        (when two stages use the same key, the most recent loader's report is kept)."""
        return {name: loader.last_report for name, loader in self._loaders.items()}

    def teardown(self, stage: str) -> None:
        """The closing summary: with ``on_error: skip``, the bad samples skipped during this stage, per
        loader and field, summed over its epochs and DataLoader workers (whose counts travel to the main
        process with their batches), logged last -- a warning when any were skipped -- and kept in
        :attr:`summary`. Each rank reports its own reads."""
        made, self._made = self._made, []
        if self.on_error != "skip":
            return
        self.summary = {}
        for loader_stage, loader in made:
            skipped = {k.split("/", 1)[1]: v for k, v in sorted(loader.totals.items()) if k.startswith("skipped/")}
            key = f"{loader_stage}/{loader.name}" if loader_stage != "train" else "train"
            self.summary[key] = skipped
        total = sum(sum(v.values()) for v in self.summary.values())
        rank = self.trainer.global_rank if getattr(self, "trainer", None) is not None else 0
        where = "; ".join(
            f"{key}: " + (", ".join(f"{field}={n}" for field, n in fields.items()) or "none")
            for key, fields in self.summary.items()
        )
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        line = f"on_error=skip, {stage} rank {rank}: skipped {total} bad samples ({where or 'no data read'})"
        if total:
            log.warning("%s", line)
        else:
            log.info("%s", line)

    def loader(self, name: str) -> StreamLoader:
        """The most recent loader made for a stream name (``"train"``, ``"val"``, ``"test-ood"``, ...)."""
        return self._loaders[name]


def _zero() -> int:
    return 0


def train_epoch(trainer: L.Trainer | None) -> int | None:
    """The epoch the train loader is about to iterate (None without a trainer).

    The value Lightning itself passes to samplers' ``set_epoch``: the index of the epoch about to
    run whenever the train loader is iterated, also right after restoring a checkpoint (where
    ``current_epoch`` lags by one until the fit loop starts)."""
    if trainer is None:
        return None
    return trainer.fit_loop.epoch_progress.current.processed


def train_progress(trainer: L.Trainer | None) -> int | None:
    """Batches of that epoch the trainer has already trained on: 0 unless it resumes mid-epoch.

    Read when the train loader is iterated. Mid-epoch means the epoch has started and not ended
    (``started > processed``); the batch counter then still holds the restored checkpoint's count
    of processed batches (its ``completed`` lags by one when the save happened in
    ``on_train_batch_end``). Between epochs the batch counter is stale or reset, so 0. A checkpoint
    saved after the last batch of an epoch (``limit_train_batches`` or ``max_steps`` reached there)
    restarts in the next epoch with the finished epoch's counter still in place: its last-batch flag,
    or a count that fills the epoch, says so, and the new epoch starts afresh."""
    if trainer is None:
        return None
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started <= epochs.processed:
        return 0
    batches = trainer.fit_loop.epoch_loop.batch_progress
    if batches.is_last_batch or batches.current.processed >= trainer.num_training_batches:
        return 0
    return batches.current.processed
