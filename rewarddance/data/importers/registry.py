"""The importer registry and :func:`import_dataset`, the one entry point the CLI calls."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from rewarddance.data.importers.common import (
    TIE,
    Criterion,
    DatasetImportError,
    ErrorPolicy,
    Importer,
    ImportOptions,
    ImportReport,
    RowError,
    SkipRow,
    TiePolicy,
)
from rewarddance.data.importers.genai_bench import GenAIBenchImporter
from rewarddance.data.importers.hpdv2 import HPDv2Importer
from rewarddance.data.importers.hpdv3 import HPDv3Importer
from rewarddance.data.importers.imagereward import ImageRewardImporter
from rewarddance.data.importers.pickapic import PickAPicImporter
from rewarddance.data.importers.videogen_rewardbench import VideoGenRewardBenchImporter
from rewarddance.data.writer import MANIFEST, SampleWriter
from rewarddance.errors import UsageError
from rewarddance.outputs import atomic_output
from rewarddance.registry import Registry

Format = Literal["pickapic", "hpdv2", "imagereward", "videogen-rewardbench", "genai-bench", "hpdv3"]
ImageExt = Literal["png", "jpg", "jpeg", "webp"]

IMPORTERS: Registry[type[Importer]] = Registry(
    "dataset format",
    hint="To add one, subclass rewarddance.data.importers.common.Importer and call IMPORTERS.register(name, class) "
    "(from a rewarddance.plugins entry point in another package); `data import --format` offers the names in Format.",
)
"""Format name -> importer class."""

for importer_class in (
    PickAPicImporter,
    HPDv2Importer,
    ImageRewardImporter,
    VideoGenRewardBenchImporter,
    GenAIBenchImporter,
    HPDv3Importer,
):
    IMPORTERS.register(importer_class.name, importer_class)


def get_importer(format: str) -> type[Importer]:
    """The importer class registered as ``format``.

    Raises:
        UsageError: naming the known formats.
    """
    return IMPORTERS[format]


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new import with shards already in ``out``, unless asked to replace them."""
    if not out.exists():
        return
    old = [*out.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"), *([out / MANIFEST] if (out / MANIFEST).exists() else [])]
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds shards ({old[0].name}, ...); pass overwrite=True to replace them")
    for path in old:
        path.unlink()


def import_dataset(
    format: Format,
    input: Path,
    out: Path,
    *,
    split: str | None = None,
    max_samples: int | None = None,
    on_error: ErrorPolicy = "raise",
    ties: TiePolicy = "keep",
    criterion: Criterion | None = None,
    image_root: Path | None = None,
    video_fps: float = 8.0,
    image_ext: ImageExt = "png",
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Convert a public preference dataset into rewarddance shards (one split per output folder).

    Every written sample is a ``pair`` with the dataset's label convention applied (see each
    importer's module docstring), ``source``, ``models``, ``category`` where the dataset has one,
    and the original ids in ``meta``. Next to the shards the writer leaves ``manifest.json``, which
    also records this import (options and the report). The shards are written into a temporary
    folder and moved into ``out`` when the import is complete: a failed import leaves nothing.

    Args:
        format: The dataset format.
        input: The dataset file, or a folder holding it (parquet shards are searched in sub-folders).
        out: Output folder for the shards and manifest.
        split: Which split to read when ``input`` is a folder holding several (``train``, ``test``,
            ``validation_unique``, ``image_generation``...); also the shard file prefix.
        max_samples: Stop after writing this many samples.
        on_error: ``raise``: stop at the first broken row (missing or undecodable image, empty prompt,
            unknown label) with an error naming file, row and field. ``skip``: skip it and count it.
        ties: ``keep`` tied pairs as label ``tie`` (soft label 0.5), or ``drop`` them (counted ``tie``).
        criterion: VideoGen-RewardBench dimension that labels a pair (default: Overall if the csv has it, else TA).
        image_root: Folder that image and clip paths are relative to (default: next to the input file).
        video_fps: Frame rate for clips whose dataset gives none (GenAI-Bench video).
        image_ext: Encoding of the written images (png is lossless, jpg/webp are smaller).
        shard_size: Samples per shard.
        overwrite: Replace shards already in ``out`` (otherwise an error).
        progress: Show a progress bar and print the summary to stderr.

    Returns:
        What was read, written and skipped (per reason).

    Raises:
        DatasetImportError: for unreadable input, a missing required column, or (``on_error="raise"``) a broken row.
        FileExistsError: if ``out`` already holds shards and ``overwrite`` is false.
    """
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if ties not in ("keep", "drop"):
        raise UsageError(f"ties must be 'keep' or 'drop', got {ties!r}")
    if max_samples is not None and max_samples < 0:
        raise UsageError(f"max_samples must be >= 0, got {max_samples}")
    options = ImportOptions(split=split, criterion=criterion, image_root=image_root, video_fps=video_fps)
    importer = get_importer(format)(Path(input), options)

    out = Path(out)
    _prepare_out(out, overwrite)
    report = ImportReport(format=format, source=importer.source, inputs=[str(p) for p in importer.files], out=str(out))
    skipped: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    info = {
        "import": {
            "format": format,
            "input": os.fspath(input),
            "split": split,
            "on_error": on_error,
            "ties": ties,
            "criterion": criterion,
            "image_root": os.fspath(image_root) if image_root is not None else None,
            "video_fps": video_fps,
            "max_samples": max_samples,
        }
    }
    # Written under a temporary name and renamed when complete: a failed import leaves nothing behind.
    with atomic_output(out, folder=True) as tmp:
        writer = SampleWriter(tmp, prefix=split or format, max_count=shard_size, image_ext=image_ext, info=info)
        bar = tqdm(total=importer.total(), unit="row", desc=f"import {format}", disable=not progress, file=sys.stderr)
        try:
            for record in importer.records():
                if max_samples is not None and report.written >= max_samples:
                    break
                report.read += 1
                bar.update()
                try:
                    samples = importer.convert(record)
                except SkipRow as skip:
                    skipped[skip.reason] += 1
                    continue
                except RowError as err:
                    located = DatasetImportError(
                        record.path,
                        err.problem,
                        row=record.row,
                        row_id=record.row_id,
                        field=err.field,
                        reason=err.reason,
                        hint="Pass on_error='skip' to skip and count such rows" if on_error == "raise" else "",
                    )
                    if on_error == "raise":
                        raise located from None
                    skipped[err.reason] += 1
                    report.examples.setdefault(err.reason, str(located))
                    continue
                for sample in samples:
                    if ties == "drop" and sample.label == "tie":
                        skipped[TIE] += 1
                        continue
                    if max_samples is not None and report.written >= max_samples:
                        break
                    writer.write(sample)
                    labels[str(sample.label)] += 1
                    report.written += 1
        except BaseException:
            bar.close()
            writer.close()  # closes the open shard; atomic_output then removes the temporary folder
            raise
        bar.close()
        report.skipped, report.labels = dict(skipped), dict(labels)
        report.shards = [str(out / p.name) for p in writer.shard_paths]
        writer.info["import"].update(read=report.read, written=report.written, skipped=dict(sorted(skipped.items())))
        writer.close()
    if progress:
        print(report.summary(), file=sys.stderr)
    return report
