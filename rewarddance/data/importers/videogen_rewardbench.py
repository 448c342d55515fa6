"""VideoGen-RewardBench (and the VideoAlign training csv): csv + pre-extracted frame folders.

Conventions:

- Columns ``path_A, path_B, prompt, VQ, MQ, TA[, Overall, A_model, B_model, fps_A, fps_B,
  num_frames_A, num_frames_B]``; each dimension is ``A`` / ``B`` / ``same`` (-> ``first`` /
  ``second`` / ``tie``, soft label 0.5 for a tie) or, in the training csv, ``invalid``.
- ``criterion`` picks the dimension that labels the pair: default ``Overall`` when the column
  exists (the benchmark), else ``TA`` (the training csv has no Overall). All dimensions present
  are kept in ``meta["dimensions"]``. A row whose criterion is ``invalid`` is skipped and counted
  as ``invalid``; an unknown value in any dimension is an ``unknown_label`` error.
- Videos are not decoded (no video decoder is a dependency): each ``path_A``/``path_B`` is read
  from a folder of frame images named like the video without its extension (``videos/x.mp4`` ->
  ``videos/x/`` or ``x/``) under ``image_root`` or the csv's folder. A missing folder is a
  ``missing_clip`` error (or counted skip).
- ``fps`` comes from ``fps_A`` (``video_fps`` if the csv has none). When the folder holds fewer
  frames than ``num_frames_A`` (frames were subsampled), the fps is scaled by the ratio so it still
  measures frames per second of the stored clip; both clips' fps are kept in ``meta["clip_fps"]``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rewarddance.data.importers.common import (
    BAD_VALUE,
    INVALID,
    MISSING_FIELD,
    UNKNOWN_LABEL,
    Importer,
    ImportOptions,
    Record,
    RowError,
    SkipRow,
    get_prompt,
    key_for,
    load_clip,
    model_names,
    require_columns,
    table_columns,
    tie_soft_label,
)
from rewarddance.data.schema import Sample

DIMENSIONS = ("Overall", "VQ", "MQ", "TA")
_VALUES = {"a": "first", "b": "second", "same": "tie", "invalid": INVALID}


def _number(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except ValueError:
        raise RowError(BAD_VALUE, name, f"expected a number, got {value!r}") from None
    if not number > 0:
        raise RowError(BAD_VALUE, name, f"must be positive, got {value!r}")
    return number


class VideoGenRewardBenchImporter(Importer):
    """VideoGen-RewardBench csv (or the VideoAlign training csv) with frame folders -> video pair samples."""

    name = "videogen-rewardbench"
    source = "videogen_rewardbench"
    suffixes = (".csv",)

    def __init__(self, input: str | Path, options: ImportOptions | None = None) -> None:
        super().__init__(input, options)
        self.criteria: dict[Path, str] = {}
        self.dimensions: dict[Path, list[str]] = {}
        for path in self.files:
            columns = table_columns(path)
            criterion = self.options.criterion or ("Overall" if "Overall" in columns else "TA")
            require_columns(path, columns, ("path_A", "path_B", "prompt", criterion))
            self.criteria[path] = criterion
            self.dimensions[path] = [d for d in DIMENSIONS if d in columns]

    def records(self) -> Iterator[Record]:
        index = 0
        for path in self.files:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                for row, data in enumerate(reader):
                    yield Record(path, row, index, data, row_id=f"csv line {reader.line_num}")
                    index += 1

    def convert(self, record: Record) -> list[Sample]:
        data = record.data
        criterion = self.criteria[record.path]
        dims: dict[str, str | None] = {}
        for dim in self.dimensions[record.path]:
            raw = (data.get(dim) or "").strip()
            if not raw:
                dims[dim] = None
                continue
            if raw.lower() not in _VALUES:
                raise RowError(UNKNOWN_LABEL, dim, f"expected A, B, same or invalid, got {raw!r}")
            dims[dim] = _VALUES[raw.lower()]
        label = dims.get(criterion)
        if label is None:
            raise RowError(MISSING_FIELD, criterion, "no label for the criterion")
        if label == INVALID:
            raise SkipRow(INVALID)
        prompt = get_prompt(data)
        bases = self.media_bases(record.path)
        first = load_clip(data.get("path_A"), bases, "path_A")
        second = load_clip(data.get("path_B"), bases, "path_B")

        clip_fps = []
        for side, clip in (("A", first), ("B", second)):
            fps = _number(data, f"fps_{side}") or self.options.video_fps
            num_frames = _number(data, f"num_frames_{side}")
            if num_frames and round(num_frames) != len(clip):
                fps *= len(clip) / num_frames
            clip_fps.append(fps)
        meta = {
            "file": record.path.name,
            "row": record.row,
            "path_A": data.get("path_A"),
            "path_B": data.get("path_B"),
            "criterion": criterion,
            "dimensions": dims,
            "clip_fps": clip_fps,
            "frames": [len(first), len(second)],
            "fps_assumed": _number(data, "fps_A") is None,
        }
        for name in ("fps_A", "fps_B", "num_frames_A", "num_frames_B"):
            if data.get(name) not in (None, ""):
                meta[name] = _number(data, name)
        return [
            Sample(
                key=key_for(self.name, record.index),
                kind="pair",
                prompt=prompt,
                first=first,
                second=second,
                label=label,  # type: ignore[arg-type]
                soft_label=tie_soft_label(label),  # type: ignore[arg-type]
                fps=clip_fps[0],
                source=self.source,
                models=model_names(data.get("A_model"), data.get("B_model")),
                meta=meta,
            )
        ]
