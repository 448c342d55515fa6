"""Shared machinery of the dataset importers: errors, input discovery, table readers, media loading.

An importer turns one public preference dataset into :class:`~rewarddance.data.schema.Sample`
pairs. It only has to say where its records are (:meth:`Importer.records`) and how one record
becomes samples (:meth:`Importer.convert`); the driver in :mod:`.registry` counts, skips or
raises, and writes shards.

Two kinds of rows are not written:

- dataset conventions (:class:`SkipRow`): a Pick-a-Pic row without a decision, a
  VideoGen-RewardBench label ``invalid``. They are always skipped and counted, never an error.
- broken rows (:class:`RowError`): a missing image, undecodable bytes, an empty prompt, a label
  value the dataset does not define. They raise :class:`DatasetImportError` (naming the file,
  the row and the field) unless the import runs with ``on_error="skip"``, which counts them.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image

from rewarddance.data.schema import Clip, PairLabel, Sample
from rewarddance.errors import RewardDanceError

ErrorPolicy = Literal["raise", "skip"]
TiePolicy = Literal["keep", "drop"]
Criterion = Literal["Overall", "VQ", "MQ", "TA"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Reasons a row is not written. Conventions are always skipped; errors depend on on_error.
NO_DECISION = "no_decision"
INVALID = "invalid"
NOT_DIFFERENT = "not_different"
TIE = "tie"
MISSING_FIELD = "missing_field"
EMPTY_PROMPT = "empty_prompt"
UNKNOWN_LABEL = "unknown_label"
BAD_VALUE = "bad_value"
MISSING_IMAGE = "missing_image"
BAD_IMAGE = "bad_image"
MISSING_CLIP = "missing_clip"


class DatasetImportError(RewardDanceError, ValueError):
    """An input the importer cannot convert. The message names the file, and the row and field when known.

    Attributes:
        path: The input file (or folder) at fault.
        row: 0-based row (record) index in that file, or None for file-level problems.
        row_id: The dataset's own id of the row, when it has one.
        field: The column or key at fault, when known.
        reason: A short machine-readable reason (``missing_image``, ``unknown_label``, ...).
        problem: The description, without the location.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        row: int | None = None,
        row_id: str | None = None,
        field: str | None = None,
        reason: str = "error",
        hint: str = "",
    ) -> None:
        self.path, self.row, self.row_id, self.field = str(path), row, row_id, field
        self.reason, self.problem = reason, problem
        where = [self.path]
        if row is not None:
            where.append(f"row {row}" + (f" ({row_id})" if row_id else ""))
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(", ".join(where) + f": {problem}" + (f". {hint}" if hint else ""))


class RowError(Exception):
    """A broken row: raised by :meth:`Importer.convert`, located and re-raised or counted by the driver."""

    def __init__(self, reason: str, field: str | None, problem: str) -> None:
        self.reason, self.field, self.problem = reason, field, problem
        super().__init__(f"{field}: {problem}")


class SkipRow(Exception):
    """A row the dataset's conventions exclude (no decision, invalid label); always skipped and counted."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class ImportOptions:
    """Format-specific choices, shared by all importers (each reads the ones it needs).

    Attributes:
        split: Which split to read when the input is a folder holding several.
        criterion: VideoGen-RewardBench dimension that labels the pair (None: Overall if present, else TA).
        image_root: Folder that image/clip paths are relative to (None: search next to the input file).
        video_fps: Frame rate for clips whose dataset does not give one.
    """

    split: str | None = None
    criterion: Criterion | None = None
    image_root: Path | None = None
    video_fps: float = 8.0


@dataclass
class Record:
    """One input record: where it came from and its fields by name."""

    path: Path
    row: int
    """0-based index in its file (for ImageRewardDB groups: of the group's first image record)."""
    index: int
    """Running index over the whole import; sample keys are built from it, so they are stable."""
    data: dict[str, Any]
    row_id: str | None = None
    """The dataset's own id, used in error messages."""


@dataclass
class ImportReport:
    """What an import did. ``skipped`` counts rows (pairs, for dropped ties of ranking formats).

    Attributes:
        format: Importer name.
        source: Dataset name written into every sample.
        inputs: Files read.
        out: Output folder.
        read: Records read (rows; for ImageRewardDB prompt groups).
        written: Samples written.
        skipped: Reason -> count.
        labels: Label -> count over written samples.
        examples: Reason -> message of the first row skipped for it.
        shards: Shard files written.
    """

    format: str
    source: str
    inputs: list[str] = field(default_factory=list)
    out: str = ""
    read: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "inputs": self.inputs,
            "out": self.out,
            "read": self.read,
            "written": self.written,
            "skipped": dict(sorted(self.skipped.items())),
            "labels": dict(sorted(self.labels.items())),
            "examples": self.examples,
            "shards": self.shards,
        }

    def summary(self) -> str:
        """Labels and skipped rows per reason, then a one-line summary of what was written."""
        lines = []
        labels = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items()))
        if labels:
            lines.append(f"labels: {labels}")
        if self.skipped:
            lines.append(f"skipped {self.num_skipped}:")
            for reason, count in sorted(self.skipped.items()):
                example = self.examples.get(reason)
                lines.append(f"  {reason}: {count}" + (f" (first: {example})" if example else ""))
        lines.append(
            f"{self.format}: read {self.read} rows, wrote {self.written} samples, skipped {self.num_skipped}, to {self.out}"
        )
        return "\n".join(lines)


class Importer(ABC):
    """Base class of the importers: one subclass per dataset format.

    Args:
        input: The dataset file, or a folder holding its files.
        options: Format-specific choices.
    """

    name: ClassVar[str]
    """Registry name, e.g. ``"pickapic"``."""
    source: ClassVar[str]
    """Dataset name stored as ``Sample.source``."""
    suffixes: ClassVar[tuple[str, ...]]
    """File types read when the input is a folder."""
    recursive: ClassVar[bool] = False
    """Search sub-folders of an input folder (parquet datasets keep shards under ``data/``)."""

    def __init__(self, input: str | Path, options: ImportOptions | None = None) -> None:
        self.input = Path(input)
        self.options = options or ImportOptions()
        self.files = find_inputs(self.input, self.suffixes, self.options.split, recursive=self.recursive)

    @abstractmethod
    def records(self) -> Iterator[Record]:
        """Yield the input records in a fixed order. File-level problems raise :class:`DatasetImportError`."""

    @abstractmethod
    def convert(self, record: Record) -> list[Sample]:
        """Turn one record into samples; raise :class:`RowError` or :class:`SkipRow` for rows not written."""

    def total(self) -> int | None:
        """Number of records, for the progress bar (None if unknown without reading everything)."""
        return None

    def media_bases(self, path: Path) -> list[Path]:
        """Folders that relative image/clip paths of ``path`` are resolved against, in order."""
        if self.options.image_root is not None:
            return [Path(self.options.image_root)]
        return [path.parent]


def numbered_records(
    files: Iterable[Path],
    rows: Callable[[Path], Iterable[dict[str, Any]]],
    *,
    id_column: str | None = None,
) -> Iterator[Record]:
    """The rows of each file in turn as records, numbered by one running index over all files.

    Sample keys are built from that index, so it counts every row (skipped ones too): a row's
    key then does not depend on which other rows were skipped.

    Args:
        files: The input files, in import order.
        rows: The rows (dicts keyed by column) of one file.
        id_column: Column holding the dataset's own row id, shown in errors as ``<column>=<value>``.
    """
    index = 0
    for path in files:
        for row, data in enumerate(rows(path)):
            row_id = None
            if id_column is not None and data.get(id_column) is not None:
                row_id = f"{id_column}={data[id_column]}"
            yield Record(path, row, index, data, row_id=row_id)
            index += 1


# ----------------------------------------------------------------------------------------------
# Input discovery


def _split_group(rel: Path) -> tuple[str, str]:
    """Files of one split share their folder and the first ``-`` token of the name (digits aside)."""
    return str(rel.parent), re.sub(r"\d+", "#", rel.stem.split("-")[0])


def _in_split(rel: Path, split: str) -> bool:
    return split in rel.parts[:-1] or split in re.split(r"[-.]", rel.stem)


def find_inputs(input: Path, suffixes: Sequence[str], split: str | None, *, recursive: bool = False) -> list[Path]:
    """The files to read: ``input`` itself, or those in the folder ``input`` (of ``split``).

    A folder holding several splits (``train.json`` and ``test.json``, ``train-*.parquet`` and
    ``test-*.parquet``) needs ``split``, so one output folder never mixes splits.

    Raises:
        DatasetImportError: if nothing matches, or the folder holds several splits and none is chosen.
    """
    if not input.exists():
        raise DatasetImportError(input, "input does not exist")
    if input.is_file():
        return [input]
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in input.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes)
    if split is not None:
        files = [p for p in files if _in_split(p.relative_to(input), split)]
    if not files:
        what = f"no {'/'.join(suffixes)} files" + (f" of split {split!r}" if split else "")
        raise DatasetImportError(input, what + (" (sub-folders searched)" if recursive else ""))
    groups = sorted({_split_group(p.relative_to(input)) for p in files})
    if split is None and len(groups) > 1:
        names = ", ".join(f"{d}/{g}" if d != "." else g for d, g in groups)
        raise DatasetImportError(input, f"folder holds several splits ({names}); choose one with split=")
    return files


# ----------------------------------------------------------------------------------------------
# Table readers: parquet, csv, json and jsonl, all giving records as dicts keyed by column name


def table_columns(path: Path) -> list[str]:
    """Column names of a parquet or csv file, read from its header only."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError for non-parquet files
            raise DatasetImportError(path, f"cannot read parquet schema ({type(err).__name__}: {err})") from err
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    raise DatasetImportError(path, f"not a table file (expected .parquet or .csv, got {path.suffix!r})")


def num_table_rows(path: Path) -> int | None:
    """Row count from the parquet footer; None for other files."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def iter_table(path: Path, columns: Sequence[str] | None = None, *, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Stream the rows of a parquet or csv file as dicts (parquet in batches, so image columns fit in memory)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
            yield from batch.to_pylist()
    else:
        with path.open(newline="", encoding="utf-8-sig") as f:
            yield from csv.DictReader(f)


def load_json_records(path: Path) -> list[dict[str, Any]]:
    """All records of a ``.json`` list or a ``.jsonl`` file (parquet files are read with :func:`iter_table`).

    Raises:
        DatasetImportError: if the file is not valid JSON or not a list of objects.
    """
    if path.suffix.lower() == ".parquet":
        return list(iter_table(path))
    try:
        if path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
        else:
            with path.open(encoding="utf-8") as f:
                records = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetImportError(path, f"not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise DatasetImportError(path, f"expected a JSON list of records, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DatasetImportError(path, f"record is a {type(rec).__name__}, not an object", row=i)
    return records


def require_columns(path: Path, present: Iterable[str], required: Sequence[str | tuple[str, ...]]) -> dict[str, str]:
    """Check required columns up front; map each to the spelling the file uses.

    Args:
        path: The file, for the error message.
        present: Column names (or the keys of a JSON file's first record).
        required: Names; a tuple lists accepted spellings of one column, the first being canonical.

    Returns:
        Canonical name -> name used in the file.

    Raises:
        DatasetImportError: naming the file and every missing column.
    """
    present = set(present)
    found, missing = {}, []
    for spec in required:
        names = (spec,) if isinstance(spec, str) else spec
        hit = next((n for n in names if n in present), None)
        if hit is None:
            missing.append(" or ".join(repr(n) for n in names))
        else:
            found[names[0]] = hit
    if missing:
        raise DatasetImportError(
            path,
            f"missing required column(s) {', '.join(missing)} (has: {', '.join(sorted(present)) or 'nothing'})",
            field=None,
            reason=MISSING_FIELD,
        )
    return found


def first_record_keys(path: Path, records: Sequence[dict[str, Any]]) -> list[str]:
    """Keys of the first record, the "columns" of a JSON file."""
    if not records:
        raise DatasetImportError(path, "file holds no records")
    return list(records[0])


# ----------------------------------------------------------------------------------------------
# Field access inside convert()


def get_field(data: dict[str, Any], name: str) -> Any:
    """``data[name]``, or :class:`RowError` ``missing_field`` if absent or null."""
    value = data.get(name)
    if value is None:
        raise RowError(MISSING_FIELD, name, "missing or null")
    return value


def get_prompt(data: dict[str, Any], name: str = "prompt") -> str:
    """The prompt, unchanged; :class:`RowError` if it is missing, not a string or blank."""
    value = data.get(name)
    if value is None:
        raise RowError(MISSING_FIELD, name, "missing or null")
    if not isinstance(value, str):
        raise RowError(BAD_VALUE, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(EMPTY_PROMPT, name, "empty prompt")
    return value


def get_list(data: dict[str, Any], name: str, length: int | None = None) -> list[Any]:
    """A list field (of ``length`` items when given)."""
    value = get_field(data, name)
    if not isinstance(value, (list, tuple)):
        raise RowError(BAD_VALUE, name, f"expected a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise RowError(BAD_VALUE, name, f"expected {length} items, got {len(value)}")
    return list(value)


def model_names(*names: Any) -> list[str]:
    """Generating models in candidate order; empty when the dataset names none."""
    if all(n is None or n == "" for n in names):
        return []
    return [str(n) if n not in (None, "") else "unknown" for n in names]


def json_safe(value: Any) -> Any:
    """Original field values for ``Sample.meta``: timestamps as ISO strings, bytes dropped (None)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value else None  # NaN is not JSON
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray))}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)


def passthrough(data: dict[str, Any], used: Iterable[str]) -> dict[str, Any]:
    """The record's other fields (ids, timestamps, annotations), JSON-safe, without binary payloads."""
    used = set(used)
    out = {}
    for k, v in data.items():
        if k in used or isinstance(v, (bytes, bytearray)) or (isinstance(v, dict) and "bytes" in v):
            continue
        out[k] = json_safe(v)
    return out


def stable_bit(*parts: Any) -> bool:
    """A deterministic coin flip from the given values (same input, same answer, on every machine)."""
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).digest()
    return bool(digest[0] & 1)


def rank_label(rank_i: Any, rank_j: Any, field: str) -> PairLabel:
    """Label of the pair (i, j) from ranks where lower is better; equal ranks tie."""
    try:
        a, b = float(rank_i), float(rank_j)
    except (TypeError, ValueError):
        raise RowError(BAD_VALUE, field, f"ranks must be numbers, got {rank_i!r} and {rank_j!r}") from None
    if a != a or b != b:
        raise RowError(BAD_VALUE, field, "rank is NaN")
    return "first" if a < b else "second" if a > b else "tie"


def tie_soft_label(label: PairLabel) -> float | None:
    """Soft label for datasets with hard labels only: 0.5 for a tie, else None (no vote share known)."""
    return 0.5 if label == "tie" else None


# ----------------------------------------------------------------------------------------------
# Rankings: a record that ranks n candidates becomes every pair i < j


def ranking_pairs(ranks: Sequence[Any], field: str) -> dict[tuple[int, int], PairLabel]:
    """Every pair (i, j) with i < j, in order, labelled by :func:`rank_label` (lower rank is better)."""
    n = len(ranks)
    return {(i, j): rank_label(ranks[i], ranks[j], field) for i in range(n) for j in range(i + 1, n)}


def ranked_paths_pair_meta(
    base: dict[str, Any], paths: Sequence[Any], ranks: Sequence[Any], i: int, j: int
) -> dict[str, Any]:
    """``meta`` of pair (i, j) of a record ranking a list of image paths: its paths, ranks and indices."""
    return {**base, "paths": [paths[i], paths[j]], "ranks": [ranks[i], ranks[j]], "pair": [i, j]}


def ranking_pair_samples(
    key_prefix: str,
    index: int,
    prompt: str,
    images: Sequence[Image.Image],
    labels: dict[tuple[int, int], PairLabel],
    *,
    source: str,
    pair_meta: Callable[[int, int], dict[str, Any]],
    category: str | None = None,
) -> list[Sample]:
    """One pair sample per ranked pair (i, j): image i first, image j second.

    Rankings give hard labels only, so a tie gets soft label 0.5 and the others None. Keys end in
    ``-i-j`` so that every pair of one record gets its own key.

    Args:
        key_prefix: Importer name, the start of every key.
        index: The record's running index.
        prompt: The prompt shared by all candidates.
        images: The ranked candidates' images, decoded once and shared by their pairs.
        labels: Pair -> label, from :func:`ranking_pairs`.
        source: Dataset name stored in the samples.
        pair_meta: ``meta`` of the sample for pair (i, j).
        category: Category stored in the samples.
    """
    return [
        Sample(
            key=key_for(key_prefix, index, i, j),
            kind="pair",
            prompt=prompt,
            first=[images[i]],
            second=[images[j]],
            label=label,
            soft_label=tie_soft_label(label),
            source=source,
            category=category,
            meta=pair_meta(i, j),
        )
        for (i, j), label in labels.items()
    ]


# ----------------------------------------------------------------------------------------------
# Media: images from bytes or files, clips from folders of pre-extracted frames


def decode_image(data: Any, field: str) -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image; :class:`RowError` ``bad_image`` if they are not one."""
    if data is None or len(data) == 0:
        raise RowError(MISSING_IMAGE, field, "no image bytes")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
    except Exception as err:  # PIL raises many types for corrupt data
        raise RowError(BAD_IMAGE, field, f"cannot decode image bytes ({type(err).__name__}: {err})") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def resolve_path(ref: Any, bases: Sequence[Path], field: str, reason: str = MISSING_IMAGE) -> Path:
    """The existing file or folder that ``ref`` (a path relative to one of ``bases``, or absolute) names."""
    if not isinstance(ref, str) or not ref:
        raise RowError(BAD_VALUE if ref is not None else MISSING_FIELD, field, f"expected a path, got {ref!r}")
    rel = Path(ref)
    candidates = [rel] if rel.is_absolute() else [base / rel for base in bases]
    for cand in candidates:
        if cand.exists():
            return cand
    raise RowError(reason, field, f"file not found: {ref!r} (looked in {', '.join(str(c) for c in candidates)})")


def load_image_file(ref: Any, bases: Sequence[Path], field: str) -> Image.Image:
    """Open the image file ``ref`` (relative to ``bases``) as RGB."""
    path = resolve_path(ref, bases, field)
    try:
        return decode_image(path.read_bytes(), field)
    except RowError as err:
        raise RowError(err.reason, field, f"{path}: {err.problem}") from None
    except OSError as err:
        raise RowError(MISSING_IMAGE, field, f"cannot read {path} ({err})") from None


def load_image_value(value: Any, bases: Sequence[Path], field: str) -> Image.Image:
    """An image given as raw bytes, an ``{"bytes", "path"}`` struct (HF ``Image`` feature) or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return decode_image(value["bytes"], field)
        if value.get("path"):
            return load_image_file(value["path"], bases, field)
        raise RowError(MISSING_IMAGE, field, "image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image(value, field)
    if isinstance(value, str):
        return load_image_file(value, bases, field)
    if value is None:
        raise RowError(MISSING_IMAGE, field, "missing or null")
    raise RowError(
        BAD_VALUE, field, f"expected image bytes, a {{bytes, path}} struct or a path, got {type(value).__name__}"
    )


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def load_frames(folder: Path, field: str) -> Clip:
    """The frames of a pre-extracted clip: the folder's images in natural order (``2.png`` before ``10.png``)."""
    frames = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key
    )
    if not frames:
        raise RowError(MISSING_CLIP, field, f"frame folder {folder} holds no images ({', '.join(FRAME_SUFFIXES)})")
    clip = []
    for frame in frames:
        try:
            clip.append(decode_image(frame.read_bytes(), field))
        except RowError as err:
            raise RowError(err.reason, field, f"{frame}: {err.problem}") from None
    return clip


def load_clip(ref: Any, bases: Sequence[Path], field: str) -> Clip:
    """A video given by a path such as ``videos/abc.mp4``, read from its pre-extracted frame folder.

    Videos are not decoded here (no video decoder is a dependency). The frames of ``videos/abc.mp4``
    are looked up in a folder ``videos/abc/`` or ``abc/`` under each base (or ``ref`` itself when it is
    a folder), holding one image per frame.
    """
    if not isinstance(ref, str) or not ref:
        raise RowError(BAD_VALUE if ref is not None else MISSING_FIELD, field, f"expected a clip path, got {ref!r}")
    rel = Path(ref)
    if rel.is_absolute():
        candidates = [rel, rel.with_suffix("")]
    else:
        candidates = [c for base in bases for c in (base / rel, base / rel.with_suffix(""), base / rel.stem)]
    tried = list(dict.fromkeys(candidates))
    for cand in tried:
        if cand.is_dir():
            return load_frames(cand, field)
    videos = [c for c in tried if c.is_file()]
    if videos:
        raise RowError(
            MISSING_CLIP,
            field,
            f"found video {videos[0]} but videos cannot be decoded here; extract its frames into the folder "
            f"{videos[0].with_suffix('')}/ (e.g. ffmpeg -i {videos[0].name} {videos[0].stem}/%05d.png)",
        )
    raise RowError(MISSING_CLIP, field, f"no frame folder for {ref!r} (looked for {', '.join(str(c) for c in tried)})")


def key_for(prefix: str, index: int, *suffix: int) -> str:
    """Sample key: ``<prefix>-<index>`` (+ ``-i-j`` for pairs of a ranking); safe for WebDataset."""
    return "-".join([prefix, f"{index:08d}", *(str(s) for s in suffix)])
