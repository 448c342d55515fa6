"""Prompts with their metadata, for RL fine-tuning of generators.

RL needs no images from the data, only prompts: a batch is a list of ``{"prompt": str, "metadata": dict}``, where
``metadata`` is the prompt's GenEval-format description (``{"tag", "include", "exclude"?, "prompt"}``, see
:mod:`rewarddance.shapes.prompts`). It travels with the prompt so that the pixel oracle, and any reward that
reads it (the toy ``shapes-color`` reward), can judge the samples.

Prompt sources (one string, the same forms for training and evaluation):

- a GenEval-format JSONL file (the name must end in ``.jsonl``; :func:`~rewarddance.shapes.write_geneval_jsonl` writes one);
- rewarddance shards (a folder with ``manifest.json``, shard paths or patterns: anything
  :class:`~rewarddance.data.stream.ShardStream` reads): the prompt of each sample, metadata from
  ``Sample.meta["geneval"]``; images are never decoded;
- ``shapes:<split>`` (``shapes:train``, ``shapes:test-id``...): a fixed GenEval-style prompt set of the shapes
  world, generated (:func:`~rewarddance.shapes.geneval_prompts`), no file needed;
- ``shapes-video:<split>``: the same for the motion prompts of shapes videos.

Training prompts from shards stream (shuffled per epoch, equal batch counts on every rank, see
:mod:`rewarddance.data.stream`); the other sources are small and held in memory (under DDP Lightning's distributed
sampler splits them). The evaluation set is always read whole, duplicates removed: it is the fixed prompt set the
task scores with the oracle (:meth:`PromptDataModule.val_prompts`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from rewarddance.data.datamodule import train_epoch, train_progress
from rewarddance.data.jsonl import read_jsonl
from rewarddance.data.schema import Sample
from rewarddance.data.stream import STATE_FORMAT, ResumeError, ShardStream, StreamLoader, resolve_shards
from rewarddance.errors import BadFileError, UsageError
from rewarddance.shapes.prompts import TAGS, geneval_prompts
from rewarddance.shapes.splits import SPLIT_IDS
from rewarddance.shapes.video import VIDEO_TAGS, sample_video_prompt

__all__ = ["PromptDataModule", "PromptItem", "PromptLoader", "is_generated_source", "load_prompts", "prompt_item"]

log = logging.getLogger(__name__)

PromptItem = dict[str, Any]
"""``{"prompt": str, "metadata": dict}``: one element of a batch."""

SHAPES_SCHEME = "shapes:"
SHAPES_VIDEO_SCHEME = "shapes-video:"


def prompt_item(metadata: dict[str, Any], prompt: str | None = None) -> PromptItem:
    """A batch element from GenEval metadata (the prompt text defaults to ``metadata["prompt"]``)."""
    text = prompt if prompt is not None else metadata.get("prompt")
    if not text:
        raise ValueError(f"No prompt text in {metadata!r}")
    return {"prompt": str(text), "metadata": dict(metadata)}


def _jsonl_item(path: str, line: int, row: dict[str, Any]) -> PromptItem:
    if not row.get("prompt"):
        raise BadFileError(
            f"{path}, line {line}, field 'prompt': missing or empty; each line is GenEval metadata with the prompt text"
        )
    return prompt_item(row)


def _sample_item(sample: Sample) -> PromptItem:
    return prompt_item(sample.meta.get("geneval") or {}, sample.prompt)


def _collate_samples(samples: list[Sample]) -> list[PromptItem]:
    # Module level so that it pickles into DataLoader workers.
    return [_sample_item(s) for s in samples]


def _as_list(items: list[PromptItem]) -> list[PromptItem]:
    return list(items)


def _is_jsonl(source: str) -> bool:
    return source.endswith(".jsonl")


def is_generated_source(source: str) -> bool:
    """Whether ``source`` names a generated prompt set (``shapes:<split>`` or ``shapes-video:<split>``)."""
    return source.startswith((SHAPES_SCHEME, SHAPES_VIDEO_SCHEME))


def _video_prompts(per_tag: int, split: str, seed: int, tags: Sequence[str]) -> list[dict[str, Any]]:
    # As geneval_prompts: distinct prompts per tag, deterministic from the seed and the split.
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], 7927]))
    out: list[dict[str, Any]] = []
    for tag in tags:
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(per_tag * 40):
            meta = sample_video_prompt(tag, rng, split)
            seen.setdefault(meta["prompt"], meta)
            if len(seen) >= per_tag:
                break
        out.extend(seen[p] for p in sorted(seen))
    return out


SOURCE_FORMS = (
    f"a prompt source is a GenEval-format .jsonl file, rewarddance shards (a folder with manifest.json, shard "
    f"paths or patterns), or {SHAPES_SCHEME}<split> / {SHAPES_VIDEO_SCHEME}<split> with a split of {sorted(SPLIT_IDS)}"
)


def check_generated_source(
    source: str, tags: Sequence[str] | None = None, option: str = "source", tags_option: str = "tags"
) -> None:
    """Refuse an unknown split of a generated source, or tags it cannot generate (cheap: nothing is generated).

    Raises:
        UsageError: naming ``option`` (e.g. ``data.init_args.train``), the bad value and the valid ones.
    """
    if not is_generated_source(source):
        return
    split = source.split(":", 1)[1]
    if split not in SPLIT_IDS:
        raise UsageError(f"{option}: unknown shapes split {split!r} in {source!r}; {SOURCE_FORMS}")
    known = VIDEO_TAGS if source.startswith(SHAPES_VIDEO_SCHEME) else TAGS
    unknown = [t for t in tags or () if t not in known]
    if unknown:
        raise UsageError(f"{tags_option}: {unknown} are not tags of {source!r}; choose from {list(known)}")


def _generated(source: str, per_tag: int, seed: int, tags: Sequence[str] | None) -> list[dict[str, Any]]:
    video = source.startswith(SHAPES_VIDEO_SCHEME)
    split = source.split(":", 1)[1]
    check_generated_source(source, tags)
    if video:
        return _video_prompts(per_tag, split, seed, tuple(tags or VIDEO_TAGS))
    return geneval_prompts(per_tag, split=split, seed=seed, tags=tuple(tags or TAGS))


def load_prompts(
    source: str,
    *,
    per_tag: int = 50,
    seed: int = 0,
    tags: Sequence[str] | None = None,
    limit: int | None = None,
    unique: bool = True,
) -> list[PromptItem]:
    """Read a whole prompt source into memory (see the module docstring for the forms of ``source``).

    Args:
        source: A ``.jsonl`` file, shards, or ``shapes:<split>`` / ``shapes-video:<split>``.
        per_tag: Prompts per tag for generated sources.
        seed: Seed of generated sources.
        tags: Keep only these GenEval tags (None: all).
        limit: Keep at most this many prompts (after filtering).
        unique: Drop repeated prompt texts (shards hold several samples per prompt).

    Returns:
        The prompts, in source order.
    """
    if is_generated_source(source):
        items: Iterator[PromptItem] = (prompt_item(m) for m in _generated(source, per_tag, seed, tags))
    elif _is_jsonl(source):
        items = (_jsonl_item(source, line, row) for line, row in read_jsonl(source))
    else:
        # rank 0 of 1: every process reads the whole set (the task splits evaluation prompts over ranks itself).
        stream = ShardStream(source, batch_size=256, load_visuals=False, rank=0, world_size=1, name=str(source))
        items = (_sample_item(s) for batch in stream for s in batch)
    seen: set[str] = set()
    out: list[PromptItem] = []
    for item in items:
        if tags is not None and item["metadata"].get("tag") not in tags:
            continue
        if unique:
            if item["prompt"] in seen:
                continue
            seen.add(item["prompt"])
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


class PromptLoader(DataLoader):
    """The DataLoader of in-memory training prompts, with Lightning's stateful-dataloader protocol.

    Its order is the plain DataLoader's: a shuffled epoch is a permutation drawn from ``generator``
    when the epoch's iteration starts (under DDP Lightning swaps in a ``DistributedSampler``, whose
    order comes from its seed and the epoch). So the position is the generator's state at the
    start of the current epoch, its state now (after the epoch's draws, for the next epoch) and the
    batches handed out; a restored loader resumes mid-epoch by redrawing that epoch's order and
    passing over the batches already trained on (prompts in memory: nothing to decode). Resuming
    mid-epoch under other settings (prompt count, batch size, sampler) is refused with
    :class:`~rewarddance.data.stream.ResumeError`; without a saved position it warns.

    Args:
        progress_fn: Batches of the epoch about to be iterated the trainer has already trained on
            (non-zero only when resuming mid-epoch; see :func:`~rewarddance.data.datamodule.train_progress`).
        *args, **kwargs: Those of :class:`torch.utils.data.DataLoader`.
    """

    def __init__(self, *args: Any, progress_fn: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress_fn = progress_fn
        self._start: torch.Tensor | None = None  # the generator's state when the current epoch's iteration began
        self._batches = 0
        self._loaded: dict[str, Any] | None = None

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "items": len(self.dataset),  # type: ignore[arg-type]
            "batch_size": self.batch_size,
            "batches": len(self),
            "sampler": type(self.sampler).__name__,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:  # restored, not iterated yet
            return self._loaded
        now = self.generator.get_state() if self.generator is not None else None
        return {
            "format": STATE_FORMAT,
            "kind": "prompts",
            **self._fingerprint(),
            "done": self._batches,
            "start": self._start,
            "now": now,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("kind") != "prompts":
            raise ResumeError(
                f"the checkpoint's data position is a {state.get('kind', 'unknown')!r} loader's in format "
                f"{state.get('format')!r}; this loader holds prompts in memory and reads format {STATE_FORMAT}. "
                "Resume with the training prompts the checkpoint was saved with."
            )
        self._loaded = state

    def __iter__(self) -> Iterator[Any]:
        loaded, self._loaded = self._loaded, None
        done = (self.progress_fn() if self.progress_fn is not None else None) or 0
        if loaded is not None and self.generator is not None:
            if done:
                changed = {k: (loaded.get(k), v) for k, v in self._fingerprint().items() if loaded.get(k) != v}
                if changed or loaded.get("done") != done or loaded.get("start") is None:
                    detail = "; ".join(f"{k} was {a!r}, is {b!r}" for k, (a, b) in changed.items())
                    raise ResumeError(
                        f"prompts: resuming at batch {done} of an epoch, but the checkpoint's position (batch "
                        f"{loaded.get('done')}{'; ' + detail if detail else ''}) cannot continue it exactly. "
                        "Resume with the same settings, or from an end-of-epoch checkpoint."
                    )
                self.generator.set_state(loaded["start"])  # redraw this epoch's order
            elif loaded.get("now") is not None:
                self.generator.set_state(loaded["now"])  # the next epoch's draws, as if never interrupted
        elif done:
            message = (
                f"prompts: resuming at batch {done} of an epoch, but the checkpoint holds no prompt position: the "
                "rest of this epoch restarts from its first batches (other prompts than an uninterrupted run)."
            )
            log.warning(message)
            warnings.warn(message, stacklevel=2)
            done = 0
        self._start = self.generator.get_state() if self.generator is not None else None
        self._batches = 0
        for batch in super().__iter__():
            self._batches += 1
            if self._batches > done:
                yield batch


class PromptDataModule(L.LightningDataModule):
    """Batches of prompts with their GenEval metadata, for :class:`~rewarddance.tasks.GeneratorRLTask`.

    A batch is a list of ``{"prompt": str, "metadata": dict}``. There is no validation loop: ``val`` is the
    fixed prompt set the task scores with the oracle every ``eval_every`` steps (:meth:`val_prompts`).

    Args:
        train: Training prompts: a GenEval-format ``.jsonl`` file, rewarddance shards (folder with
            ``manifest.json``, shard paths, brace patterns), or ``shapes:<split>`` / ``shapes-video:<split>``
            (a generated prompt set of the shapes world).
        val: The fixed evaluation prompt set, in the same forms, or null (no oracle evaluation).
        batch_size: Prompts per batch, per rank (GRPO samples ``group_size`` images of each).
        num_workers: DataLoader workers (they matter for shards only; other sources are in memory).
        seed: Seed of the shuffling and of generated prompt sets.
        shuffle: Reshuffle the training prompts every epoch.
        per_tag: Prompts per tag of a generated training set.
        val_per_tag: Prompts per tag of a generated evaluation set.
        tags: Keep only prompts of these GenEval tags (training and evaluation); null keeps all.
        val_limit: Keep at most this many evaluation prompts.
        shuffle_buffer: Sample shuffle buffer of shard streams (raw samples, per worker).
    """

    def __init__(
        self,
        train: str = "shapes:train",
        val: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        per_tag: int = 50,
        val_per_tag: int = 4,
        tags: list[str] | None = None,
        val_limit: int | None = None,
        shuffle_buffer: int = 1000,
    ) -> None:
        super().__init__()
        # Cheap on purpose (LightningCLI builds it to print configs): sources are read in setup(). Values are checked
        # here, before any model loads.
        for option, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value < least:
                raise UsageError(f"{option} (data.init_args.{option}) must be at least {least}, got {value}")
        tags_option = "tags (data.init_args.tags)"
        check_generated_source(train, tags, "train (data.init_args.train)", tags_option)
        if val is not None:
            check_generated_source(val, tags, "val (data.init_args.val)", tags_option)
        self.save_hyperparameters()
        self.train, self.val = train, val
        self.batch_size, self.num_workers, self.seed, self.shuffle = batch_size, num_workers, seed, shuffle
        self.per_tag, self.val_per_tag, self.tags, self.val_limit = per_tag, val_per_tag, tags, val_limit
        self.shuffle_buffer = shuffle_buffer
        self._train_items: list[PromptItem] | None = None
        self._val_items: list[PromptItem] | None = None

    def _streams_train(self) -> bool:
        return not (is_generated_source(self.train) or _is_jsonl(self.train))

    def setup(self, stage: str | None = None) -> None:
        """Read in-memory training prompts (shards stream instead: their list is resolved here, to fail early)."""
        if stage not in (None, "fit") or self._train_items is not None:
            return
        if self._streams_train():
            try:
                resolve_shards(self.train)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"train (data.init_args.train) {self.train!r}: {err}; {SOURCE_FORMS}") from err
            return
        self._train_items = load_prompts(self.train, per_tag=self.per_tag, seed=self.seed, tags=self.tags, unique=False)
        if not self._train_items:
            raise UsageError(
                f"no training prompts in {self.train!r} with tags {self.tags} (data.init_args.train, "
                "data.init_args.tags): choose tags the source has, or tags: null for all"
            )

    def train_dataloader(self) -> DataLoader:
        """Prompt batches; shards stream through :class:`~rewarddance.data.stream.StreamLoader`."""
        if self._streams_train():
            trainer = getattr(self, "trainer", None)
            stream = ShardStream(
                self.train,
                batch_size=self.batch_size,
                collate_fn=_collate_samples,
                shuffle=self.shuffle,
                shuffle_buffer=self.shuffle_buffer if self.shuffle else 0,
                seed=self.seed,
                load_visuals=False,
                rank=trainer.global_rank if trainer is not None else None,
                world_size=trainer.world_size if trainer is not None else None,
                name="train",
            )

            # As ShardDataModule: ShardStream splits work over workers itself and its length is exact.
            warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
            return StreamLoader(
                stream,
                epoch_fn=lambda: train_epoch(trainer),
                progress_fn=lambda: train_progress(trainer),
                num_workers=self.num_workers,
            )
        self.setup("fit")
        assert self._train_items is not None
        trainer = getattr(self, "trainer", None)
        return PromptLoader(
            self._train_items,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            collate_fn=_as_list,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            progress_fn=lambda: train_progress(trainer),
        )

    def val_prompts(self) -> list[PromptItem]:
        """The fixed evaluation prompt set (read once; empty without ``val``)."""
        if self.val is None:
            return []
        if self._val_items is None:
            self._val_items = load_prompts(
                self.val, per_tag=self.val_per_tag, seed=self.seed, tags=self.tags, limit=self.val_limit
            )
        return list(self._val_items)
