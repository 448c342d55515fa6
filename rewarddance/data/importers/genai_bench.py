"""GenAI-Bench (TIGER-Lab): parquet arena votes for image and video generation.

Conventions:

- ``image_generation``: ``prompt, left_model, left_image, right_model, right_image, vote_type``;
  images may be HF ``Image`` structs ``{bytes, path}`` (bytes preferred, else the path relative to
  ``image_root`` or the parquet's folder), raw bytes, or a path string.
- ``video_generation``: the same with ``left_video``/``right_video`` naming video files, read from
  pre-extracted frame folders (``x.mp4`` -> ``x/``) as for VideoGen-RewardBench. Fps from an
  ``fps``/``left_fps`` column if present, else ``video_fps`` (recorded as ``meta["fps_assumed"]``).
- ``vote_type``: ``leftvote`` -> ``first``, ``rightvote`` -> ``second``, ``tievote`` -> ``tie``,
  ``bothbad_vote`` -> ``tie`` with ``meta["both_bad"] = True``; ties have soft label 0.5. The raw
  vote and the other columns (ids, timestamps) are kept in ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rewarddance.data.importers.common import (
    BAD_VALUE,
    UNKNOWN_LABEL,
    DatasetImportError,
    Importer,
    ImportOptions,
    Record,
    RowError,
    get_field,
    get_prompt,
    iter_table,
    key_for,
    load_clip,
    load_image_value,
    model_names,
    num_table_rows,
    numbered_records,
    passthrough,
    require_columns,
    table_columns,
    tie_soft_label,
)
from rewarddance.data.schema import PairLabel, Sample

VOTES: dict[str, PairLabel] = {"leftvote": "first", "rightvote": "second", "tievote": "tie", "bothbad_vote": "tie"}


class GenAIBenchImporter(Importer):
    """GenAI-Bench ``image_generation`` / ``video_generation`` parquet -> pair samples."""

    name = "genai-bench"
    source = "genai_bench"
    suffixes = (".parquet",)
    recursive = True

    def __init__(self, input: str | Path, options: ImportOptions | None = None) -> None:
        super().__init__(input, options)
        self._media: dict[Path, str] = {}
        for path in self.files:
            columns = table_columns(path)
            if "left_video" in columns or "right_video" in columns:
                require_columns(path, columns, ("prompt", "left_video", "right_video", "vote_type"))
                self._media[path] = "video"
            elif "left_image" in columns or "right_image" in columns:
                require_columns(path, columns, ("prompt", "left_image", "right_image", "vote_type"))
                self._media[path] = "image"
            else:
                raise DatasetImportError(
                    path,
                    "neither image_generation (left_image, right_image) nor video_generation (left_video, "
                    f"right_video) columns; has {', '.join(columns)}",
                    field="left_image",
                    reason="missing_field",
                )

    def total(self) -> int | None:
        return sum(num_table_rows(p) or 0 for p in self.files)

    def records(self) -> Iterator[Record]:
        return numbered_records(self.files, iter_table)

    def convert(self, record: Record) -> list[Sample]:
        data = record.data
        vote = get_field(data, "vote_type")
        vote = str(vote).strip().lower()
        label = VOTES.get(vote)
        if label is None:
            raise RowError(UNKNOWN_LABEL, "vote_type", f"expected one of {', '.join(VOTES)}, got {vote!r}")
        prompt = get_prompt(data)
        bases = self.media_bases(record.path)
        fps: float | None = None
        meta: dict[str, Any] = {"file": record.path.name, "row": record.row, "both_bad": vote == "bothbad_vote"}
        if self._media[record.path] == "image":
            first = [load_image_value(data.get("left_image"), bases, "left_image")]
            second = [load_image_value(data.get("right_image"), bases, "right_image")]
            used = ("prompt", "left_image", "right_image", "left_model", "right_model")
        else:
            first = load_clip(_clip_ref(data.get("left_video")), bases, "left_video")
            second = load_clip(_clip_ref(data.get("right_video")), bases, "right_video")
            given = next((n for n in ("fps", "left_fps") if data.get(n) not in (None, "")), None)
            fps = _fps(data[given], given) if given else self.options.video_fps
            meta["fps_assumed"] = given is None
            meta["frames"] = [len(first), len(second)]
            used = ("prompt", "left_model", "right_model")
        meta.update(passthrough(data, used))
        return [
            Sample(
                key=key_for(self.name, record.index),
                kind="pair",
                prompt=prompt,
                first=first,
                second=second,
                label=label,
                soft_label=tie_soft_label(label),
                fps=fps,
                source=self.source,
                models=model_names(data.get("left_model"), data.get("right_model")),
                meta=meta,
            )
        ]


def _clip_ref(value: Any) -> Any:
    """A video reference as a path string (HF ``Video`` features are ``{path, bytes}`` structs)."""
    return value.get("path") if isinstance(value, dict) else value


def _fps(value: Any, field: str) -> float:
    try:
        fps = float(value)
    except (TypeError, ValueError):
        fps = float("nan")
    if not fps > 0:
        raise RowError(BAD_VALUE, field, f"fps must be a positive number, got {value!r}")
    return fps
