"""Pick-a-Pic v2: parquet files with both images inline (``jpg_0``, ``jpg_1``).

Conventions:

- ``label_0``/``label_1`` = 1/0 -> ``first``, 0/1 -> ``second``, 0.5/0.5 -> ``tie``; the soft label is
  ``label_0`` (the probability image 0 is better), so a tie is 0.5.
- ``has_label`` false: no decision was made; skipped and counted as ``no_decision``.
- ``are_different`` false: both candidates are the same image; skipped, counted ``not_different``.
- Models from ``model_0``/``model_1``; uids, urls, ranking/user ids and ``created_at`` go to ``meta``.
- The URL-only variant (no ``jpg_0``/``jpg_1``) cannot be imported offline: a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rewarddance.data.importers.common import (
    NO_DECISION,
    NOT_DIFFERENT,
    UNKNOWN_LABEL,
    DatasetImportError,
    Importer,
    Record,
    RowError,
    SkipRow,
    decode_image,
    get_prompt,
    iter_table,
    key_for,
    model_names,
    num_table_rows,
    numbered_records,
    passthrough,
    require_columns,
    table_columns,
)
from rewarddance.data.schema import PairLabel, Sample

REQUIRED = ("caption", "label_0", "label_1", "jpg_0", "jpg_1")
_LABELS: dict[tuple[float, float], PairLabel] = {(1.0, 0.0): "first", (0.0, 1.0): "second", (0.5, 0.5): "tie"}


class PickAPicImporter(Importer):
    """Pick-a-Pic v2 (``yuvalkirstain/pickapic_v2``) parquet shards -> pair samples."""

    name = "pickapic"
    source = "pickapic_v2"
    suffixes = (".parquet",)
    recursive = True

    def _check(self, path: Any) -> None:
        columns = table_columns(path)
        if ("jpg_0" not in columns or "jpg_1" not in columns) and "image_0_url" in columns:
            raise DatasetImportError(
                path,
                "this is the URL-only variant of Pick-a-Pic (image_0_url/image_1_url, no jpg_0/jpg_1 columns): "
                "the images are not in the file and cannot be imported offline",
                field="jpg_0",
                reason="no_images",
                hint="Use the variant with the image bytes (yuvalkirstain/pickapic_v2, columns jpg_0 and jpg_1)",
            )
        require_columns(path, columns, REQUIRED)

    def total(self) -> int | None:
        return sum(num_table_rows(p) or 0 for p in self.files)

    def records(self) -> Iterator[Record]:
        for path in self.files:
            self._check(path)  # each file up front, before any of its rows
        yield from numbered_records(self.files, iter_table, id_column="ranking_id")

    def convert(self, record: Record) -> list[Sample]:
        data = record.data
        if data.get("has_label") is False:
            raise SkipRow(NO_DECISION)
        if data.get("are_different") is False:
            raise SkipRow(NOT_DIFFERENT)
        prompt = get_prompt(data, "caption")
        try:
            pair = (float(data["label_0"]), float(data["label_1"]))
        except (TypeError, ValueError):
            pair = None
        label = _LABELS.get(pair) if pair is not None else None
        if label is None:
            raise RowError(
                UNKNOWN_LABEL,
                "label_0",
                f"label_0/label_1 = {data.get('label_0')!r}/{data.get('label_1')!r}; expected 1/0, 0/1 or 0.5/0.5",
            )
        first = decode_image(data.get("jpg_0"), "jpg_0")
        second = decode_image(data.get("jpg_1"), "jpg_1")
        meta = {
            "file": record.path.name,
            "row": record.row,
            **passthrough(data, ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1")),
        }
        return [
            Sample(
                key=key_for(self.name, record.index),
                kind="pair",
                prompt=prompt,
                first=[first],
                second=[second],
                label=label,
                soft_label=pair[0],
                source=self.source,
                models=model_names(data.get("model_0"), data.get("model_1")),
                meta=meta,
            )
        ]
